"""A small, dependency-free NBD client (fixed newstyle handshake, transmission phase).

What it covers: NBD_OPT_GO (with NBD_OPT_EXPORT_NAME as a fallback for servers that do not know GO),
block size constraints, READ / WRITE / WRITE_ZEROES / TRIM / FLUSH / DISC, optional structured replies with
``base:allocation`` block status, a bounded number of requests in flight per connection, and TLS
(``nbds://``: NBD_OPT_STARTTLS, then everything else inside TLS, with an ``ssl.SSLContext`` the caller builds).

What it does not cover: TLS over Unix sockets (``nbds+unix://``), the old-style handshake, extended headers
(64-bit lengths).

One client object is one connection and must be used from one thread at a time; open one client per thread
(qemu-nbd ``--shared=N`` allows N of them) to copy in parallel.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType

__all__ = [
    "DEFAULT_PORT",
    "NBDAddress",
    "NBDClient",
    "NBDError",
    "parse_nbd_url",
    "wait_for_server",
]

DEFAULT_PORT = 10809

_NBD_MAGIC = 0x4E42444D41474943  # "NBDMAGIC"
_IHAVEOPT = 0x49484156454F5054  # "IHAVEOPT"
_OLDSTYLE_MAGIC = 0x00420281861253
_OPT_REPLY_MAGIC = 0x0003E889045565A9
_REQUEST_MAGIC = 0x25609513
_SIMPLE_REPLY_MAGIC = 0x67446698
_STRUCTURED_REPLY_MAGIC = 0x668E33EF

_FLAG_FIXED_NEWSTYLE = 1 << 0
_FLAG_NO_ZEROES = 1 << 1

_OPT_EXPORT_NAME = 1
_OPT_ABORT = 2
_OPT_STARTTLS = 5
_OPT_GO = 7
_OPT_STRUCTURED_REPLY = 8
_OPT_SET_META_CONTEXT = 10

_REP_ACK = 1
_REP_INFO = 3
_REP_META_CONTEXT = 4
_REP_ERR_BIT = 1 << 31
_REP_ERR_UNSUP = _REP_ERR_BIT | 1
_REP_ERR_TLS_REQD = _REP_ERR_BIT | 5
_REP_ERR_NAMES = {
    _REP_ERR_BIT | 1: "NBD_REP_ERR_UNSUP",
    _REP_ERR_BIT | 2: "NBD_REP_ERR_POLICY",
    _REP_ERR_BIT | 3: "NBD_REP_ERR_INVALID",
    _REP_ERR_BIT | 4: "NBD_REP_ERR_PLATFORM",
    _REP_ERR_BIT | 5: "NBD_REP_ERR_TLS_REQD",
    _REP_ERR_BIT | 6: "NBD_REP_ERR_UNKNOWN",
    _REP_ERR_BIT | 7: "NBD_REP_ERR_SHUTDOWN",
    _REP_ERR_BIT | 8: "NBD_REP_ERR_BLOCK_SIZE_REQD",
    _REP_ERR_BIT | 9: "NBD_REP_ERR_TOO_BIG",
}

_INFO_EXPORT = 0
_INFO_BLOCK_SIZE = 3

# Transmission flags (server -> client, per export).
TF_HAS_FLAGS = 1 << 0
TF_READ_ONLY = 1 << 1
TF_SEND_FLUSH = 1 << 2
TF_SEND_FUA = 1 << 3
TF_ROTATIONAL = 1 << 4
TF_SEND_TRIM = 1 << 5
TF_SEND_WRITE_ZEROES = 1 << 6
TF_SEND_DF = 1 << 7
TF_CAN_MULTI_CONN = 1 << 8
TF_SEND_RESIZE = 1 << 9
TF_SEND_CACHE = 1 << 10
TF_SEND_FAST_ZERO = 1 << 11

CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7
_CMD_NAMES = {
    CMD_READ: "READ",
    CMD_WRITE: "WRITE",
    CMD_DISC: "DISC",
    CMD_FLUSH: "FLUSH",
    CMD_TRIM: "TRIM",
    CMD_WRITE_ZEROES: "WRITE_ZEROES",
    CMD_BLOCK_STATUS: "BLOCK_STATUS",
}

CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3
CMD_FLAG_FAST_ZERO = 1 << 4

_REPLY_FLAG_DONE = 1
_REPLY_TYPE_NONE = 0
_REPLY_TYPE_OFFSET_DATA = 1
_REPLY_TYPE_OFFSET_HOLE = 2
_REPLY_TYPE_BLOCK_STATUS = 5
_REPLY_TYPE_ERROR_BIT = 1 << 15
_REPLY_TYPE_ERROR_OFFSET = _REPLY_TYPE_ERROR_BIT | 2

# base:allocation states
STATE_HOLE = 1 << 0
STATE_ZERO = 1 << 1

# NBD error numbers are fixed by the protocol (they match Linux errno, not necessarily the host's).
_NBD_ERRORS = {
    1: ("EPERM", "operation not permitted"),
    5: ("EIO", "input/output error"),
    12: ("ENOMEM", "cannot allocate memory"),
    22: ("EINVAL", "invalid argument"),
    28: ("ENOSPC", "no space left on device"),
    75: ("EOVERFLOW", "value too large"),
    95: ("ENOTSUP", "operation not supported"),
    108: ("ESHUTDOWN", "server is shutting down"),
}

# Without NBD_INFO_BLOCK_SIZE the protocol tells clients to stay at or below 32 MiB per request.
_DEFAULT_MAX_BLOCK = 32 * 1024 * 1024
# Zeroing/trimming carries no payload, so requests can be much larger than max_block; stay well inside u32.
_MAX_ZERO_REQUEST = 1024 * 1024 * 1024
# SSL sockets have no sendmsg: a write request up to this size is joined to its header (one TLS record, one
# segment); a larger one is sent after it, since copying megabytes costs more than one 28-byte record.
_TLS_JOIN_LIMIT = 64 * 1024
# What to configure when TLS is missing on our side; the agent is this client's main user.
_TLS_HINT = (
    "the vmferry agent builds that context from the nbd_tls section of its config (ca_file, plus cert_file "
    "and key_file when the server verifies clients)"
)

_REQUEST = struct.Struct(">IHHQQI")
_SIMPLE_REPLY_REST = struct.Struct(">IQ")
_STRUCTURED_REPLY_REST = struct.Struct(">HHQI")

BufferLike = bytes | bytearray | memoryview


class NBDError(Exception):
    """Any NBD failure; `code_name` is set when the server answered a request with an error."""

    def __init__(
        self,
        message: str,
        *,
        address: NBDAddress | None = None,
        command: str | None = None,
        offset: int | None = None,
        length: int | None = None,
        code: int | None = None,
        server_message: str | None = None,
    ) -> None:
        self.address = address
        self.export = address.export if address is not None else None
        self.command = command
        self.offset = offset
        self.length = length
        self.code = code
        self.code_name: str | None = None
        self.server_message = server_message
        text = message
        if code is not None:
            name, desc = _NBD_ERRORS.get(code, (f"NBD error {code}", "unknown error"))
            self.code_name = name
            text = f"{text}: {name} ({desc})"
        if server_message:
            text = f"{text}: {server_message}"
        where = []
        if address is not None:
            where.append(f"export {address.export!r} at {address.url}")
        if offset is not None:
            where.append(f"offset {offset}")
        if length is not None:
            where.append(f"length {length}")
        if where:
            text = f"{text} [{', '.join(where)}]"
        super().__init__(text)


@dataclass(frozen=True)
class NBDAddress:
    """Where an export lives: TCP host/port or a Unix socket, plus the export name; `tls` means TLS required."""

    export: str = ""
    host: str | None = None
    port: int = DEFAULT_PORT
    socket_path: str | None = None
    tls: bool = False

    @property
    def url(self) -> str:
        name = urllib.parse.quote(self.export, safe="")
        if self.socket_path is not None:
            return f"nbd+unix:///{name}?socket={urllib.parse.quote(self.socket_path, safe='/')}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{'nbds' if self.tls else 'nbd'}://{host}:{self.port}/{name}"

    def __str__(self) -> str:
        return self.url


def parse_nbd_url(url: str) -> NBDAddress:
    """Parse ``nbd[s]://host[:port][/export]`` or ``nbd+unix:///export?socket=/path`` (NBD URI spec).

    ``nbds`` means TLS is required: the client never falls back to plaintext for it.
    """
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    # The first "/" ends the authority; everything after it (more slashes included) is the export name.
    export = urllib.parse.unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    if scheme == "nbds+unix":
        raise ValueError(f"{url!r}: NBD over TLS on a Unix socket is not supported by this client")
    if scheme == "nbd+unix":
        query = urllib.parse.parse_qs(parts.query)
        sockets = query.get("socket")
        if not sockets or not sockets[0]:
            raise ValueError(f"{url!r}: nbd+unix URLs need ?socket=/path")
        return NBDAddress(export=export, socket_path=sockets[0])
    if scheme not in ("nbd", "nbds"):
        raise ValueError(f"{url!r}: expected an nbd://, nbds:// or nbd+unix:// URL")
    if not parts.hostname:
        raise ValueError(f"{url!r}: missing host")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise ValueError(f"{url!r}: bad port") from exc
    return NBDAddress(export=export, host=parts.hostname, port=port, tls=scheme == "nbds")


class _Pending:
    __slots__ = ("buf", "cmd", "done", "error", "extents", "length", "offset")

    def __init__(self, cmd: int, offset: int, length: int, buf: memoryview | None) -> None:
        self.cmd = cmd
        self.offset = offset
        self.length = length
        self.buf = buf
        self.done = False
        self.error: NBDError | None = None
        self.extents: list[tuple[int, int]] = []


class NBDClient:
    """One NBD connection to one export.

    Requests are pipelined: ``submit_*`` sends without waiting (at most ``max_in_flight`` outstanding; the
    oldest replies are collected to make room) and returns request cookies; ``wait``/``drain`` collect the
    replies and raise `NBDError` for a failed request. The plain methods (`read`, `write`, ...) split a
    request at the server's maximum block size, pipeline the pieces and wait for all of them.

    The URL's scheme decides TLS: ``nbds://`` needs `tls` (its CA, and a client certificate when the server
    verifies clients) and fails rather than continue in plaintext; ``nbd://`` never uses TLS, `tls` or not.
    """

    def __init__(
        self,
        address: NBDAddress | str,
        *,
        timeout: float = 60.0,
        connect_timeout: float = 10.0,
        max_in_flight: int = 4,
        block_status: bool = False,
        max_request: int | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.address = parse_nbd_url(address) if isinstance(address, str) else address
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        if self.address.tls and tls is None:
            raise NBDError(f"an nbds:// URL needs a TLS context; {_TLS_HINT}", address=self.address)
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self.size = 0
        self.transmission_flags = 0
        self.min_block = 1
        self.preferred_block = 4096
        self.max_block = _DEFAULT_MAX_BLOCK
        self.structured_replies = False
        self._meta_context_id: int | None = None
        # Requests not yet waited for, and how many of them still await their (final) reply.
        self._inflight: dict[int, _Pending] = {}
        self._outstanding = 0
        self._next_cookie = 1
        self._broken: str | None = None
        self._closed = False
        self._tls = False
        self._sock: socket.socket = self._connect(connect_timeout)
        # qemu-nbd writes its option replies in small pieces without TCP_NODELAY; with our delayed ACKs
        # every reply then waits ~40 ms for the ACK (measured: 43 ms per handshake, 0.5 ms with QUICKACK).
        self._quickack = hasattr(socket, "TCP_QUICKACK") and self.address.socket_path is None
        try:
            self._handshake(want_block_status=block_status, tls=tls if self.address.tls else None)
        except BaseException:
            self._sock.close()
            self._closed = True
            raise
        finally:
            self._quickack = False
        if max_request is not None:
            # Smaller requests than the server allows can be cheaper for it: qemu-nbd allocates (and the
            # kernel zero-fills) a fresh bounce buffer per request, which hurts with multi-MiB writes.
            self.max_block = max(self.min_block, min(self.max_block, max_request))
        self._sock.settimeout(timeout)

    # -- capabilities --------------------------------------------------------------------------------------

    @property
    def export(self) -> str:
        return self.address.export

    @property
    def read_only(self) -> bool:
        return bool(self.transmission_flags & TF_READ_ONLY)

    @property
    def can_flush(self) -> bool:
        return bool(self.transmission_flags & TF_SEND_FLUSH)

    @property
    def can_fua(self) -> bool:
        return bool(self.transmission_flags & TF_SEND_FUA)

    @property
    def can_trim(self) -> bool:
        return bool(self.transmission_flags & TF_SEND_TRIM)

    @property
    def can_write_zeroes(self) -> bool:
        return bool(self.transmission_flags & TF_SEND_WRITE_ZEROES)

    @property
    def can_multi_conn(self) -> bool:
        return bool(self.transmission_flags & TF_CAN_MULTI_CONN)

    @property
    def can_block_status(self) -> bool:
        return self._meta_context_id is not None

    @property
    def tls_session(self) -> str | None:
        """``<protocol> <cipher>`` of the connection's TLS session (what decides its speed), None in plaintext."""
        if not isinstance(self._sock, ssl.SSLSocket):
            return None
        cipher = self._sock.cipher()
        return f"{self._sock.version()} {cipher[0] if cipher else '?'}"

    # -- connection and handshake ---------------------------------------------------------------------------

    def _connect(self, connect_timeout: float) -> socket.socket:
        addr = self.address
        try:
            if addr.socket_path is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(connect_timeout)
                sock.connect(addr.socket_path)
            else:
                assert addr.host is not None
                sock = socket.create_connection((addr.host, addr.port), timeout=connect_timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            raise NBDError(f"cannot connect: {exc}", address=addr) from exc
        return sock

    def _handshake(self, *, want_block_status: bool, tls: ssl.SSLContext | None) -> None:
        try:
            greeting = self._recv_exact(18)
        except NBDError as exc:
            # qemu-nbd stops accepting beyond --shared=N, yet the kernel completes the TCP connect; the
            # symptom is a silent server, so say what to check.
            raise NBDError(
                f"no NBD greeting from the server ({exc}); is the export's connection limit "
                "(qemu-nbd --shared) lower than the number of connections?",
                address=self.address,
            ) from exc
        magic, opt_magic, hflags = struct.unpack(">QQH", greeting)
        if magic != _NBD_MAGIC:
            raise NBDError(f"not an NBD server (magic {magic:#x})", address=self.address)
        if opt_magic == _OLDSTYLE_MAGIC:
            raise NBDError("server speaks the old-style handshake, which is not supported", address=self.address)
        if opt_magic != _IHAVEOPT:
            raise NBDError(f"unexpected handshake magic {opt_magic:#x}", address=self.address)
        if not hflags & _FLAG_FIXED_NEWSTYLE:
            raise NBDError("server does not support the fixed newstyle handshake", address=self.address)
        self._no_zeroes = bool(hflags & _FLAG_NO_ZEROES)
        cflags = _FLAG_FIXED_NEWSTYLE | (_FLAG_NO_ZEROES if self._no_zeroes else 0)
        self._sendall(struct.pack(">I", cflags))

        if tls is not None:
            self._start_tls(tls)
        try:
            if want_block_status:
                self._negotiate_block_status()
            self._opt_go()
        except NBDError as exc:
            # qemu checks the client's certificate after the TLS handshake and then just hangs up, so the
            # first option reply is where a missing or unaccepted client certificate shows.
            if self._tls and self._broken is not None:
                raise NBDError(
                    f"the server closed the TLS connection during negotiation ({self._broken}); a server that "
                    "verifies clients (qemu's verify-peer) needs a client certificate signed by its CA "
                    "(the agent's nbd_tls cert_file and key_file)",
                    address=self.address,
                ) from exc
            raise

    def _start_tls(self, context: ssl.SSLContext) -> None:
        self._send_option(_OPT_STARTTLS)
        rtype, data = self._recv_option_reply(_OPT_STARTTLS)
        if rtype != _REP_ACK:
            name = _REP_ERR_NAMES.get(rtype, f"reply type {rtype:#x}")
            text = data.decode("utf-8", "replace").strip()
            raise NBDError(
                f"the server does not offer TLS (STARTTLS answered {name}); an nbds:// URL is never used in "
                "plaintext: give the server TLS credentials (the hub's VMFERRY_NBD_TLS_DIR) or use nbd://",
                address=self.address,
                server_message=text or None,
            )
        try:
            self._sock = context.wrap_socket(self._sock, server_hostname=self.address.host)
        except ssl.SSLCertVerificationError as exc:
            raise NBDError(
                f"TLS handshake failed: the server's certificate was refused ({exc.verify_message}); the CA file "
                "must be the one that signed the server's certificate, and the certificate must name the host "
                "of the URL",
                address=self.address,
            ) from exc
        except OSError as exc:
            raise NBDError(f"TLS handshake failed: {exc}", address=self.address) from exc
        self._tls = True

    def _send_option(self, option: int, data: bytes = b"") -> None:
        self._sendall(struct.pack(">QII", _IHAVEOPT, option, len(data)) + data)

    def _recv_option_reply(self, option: int) -> tuple[int, bytes]:
        magic, opt, rtype, length = struct.unpack(">QIII", self._recv_exact(20))
        if magic != _OPT_REPLY_MAGIC or opt != option:
            raise NBDError(
                f"bad option reply (magic {magic:#x}, option {opt}, expected {option})", address=self.address
            )
        if length > 64 * 1024 * 1024:
            raise NBDError(f"option reply too large ({length} bytes)", address=self.address)
        return rtype, self._recv_exact(length) if length else b""

    def _option_error(self, what: str, rtype: int, data: bytes) -> NBDError:
        name = _REP_ERR_NAMES.get(rtype, f"reply type {rtype:#x}")
        text = data.decode("utf-8", "replace").strip()
        if rtype == _REP_ERR_BIT | 6 and not text:
            text = "no such export"
        if rtype == _REP_ERR_TLS_REQD:
            return NBDError(
                f"the export requires TLS ({what} refused: {name}): connect with an nbds:// URL and a TLS "
                f"context; {_TLS_HINT}",
                address=self.address,
                server_message=text or None,
            )
        return NBDError(f"{what} refused: {name}", address=self.address, server_message=text or None)

    def _negotiate_block_status(self) -> None:
        self._send_option(_OPT_STRUCTURED_REPLY)
        rtype, data = self._recv_option_reply(_OPT_STRUCTURED_REPLY)
        if rtype != _REP_ACK:
            if rtype & _REP_ERR_BIT:
                return  # block status is an optimisation; the copy still works without it
            raise NBDError(f"unexpected reply {rtype} to STRUCTURED_REPLY", address=self.address)
        self.structured_replies = True
        name = self.address.export.encode()
        query = b"base:allocation"
        payload = struct.pack(">I", len(name)) + name + struct.pack(">II", 1, len(query)) + query
        self._send_option(_OPT_SET_META_CONTEXT, payload)
        while True:
            rtype, data = self._recv_option_reply(_OPT_SET_META_CONTEXT)
            if rtype == _REP_META_CONTEXT:
                (ctx_id,) = struct.unpack(">I", data[:4])
                if data[4:] == query:
                    self._meta_context_id = ctx_id
            elif rtype == _REP_ACK:
                return
            elif rtype & _REP_ERR_BIT:
                if rtype == _REP_ERR_BIT | 6:
                    raise self._option_error("SET_META_CONTEXT", rtype, data)
                return
            else:
                raise NBDError(f"unexpected reply {rtype} to SET_META_CONTEXT", address=self.address)

    def _opt_go(self) -> None:
        name = self.address.export.encode()
        payload = struct.pack(">I", len(name)) + name + struct.pack(">HH", 1, _INFO_BLOCK_SIZE)
        self._send_option(_OPT_GO, payload)
        got_export = False
        while True:
            rtype, data = self._recv_option_reply(_OPT_GO)
            if rtype == _REP_INFO:
                (info,) = struct.unpack(">H", data[:2])
                if info == _INFO_EXPORT:
                    self.size, self.transmission_flags = struct.unpack(">QH", data[2:12])
                    got_export = True
                elif info == _INFO_BLOCK_SIZE:
                    self.min_block, self.preferred_block, self.max_block = struct.unpack(">III", data[2:14])
            elif rtype == _REP_ACK:
                if not got_export:
                    raise NBDError("server acknowledged GO without describing the export", address=self.address)
                return
            elif rtype == _REP_ERR_UNSUP:
                self._opt_export_name()
                return
            elif rtype & _REP_ERR_BIT:
                raise self._option_error("NBD_OPT_GO", rtype, data)
            # Unknown non-error replies are informational; the protocol says to ignore them.

    def _opt_export_name(self) -> None:
        self._send_option(_OPT_EXPORT_NAME, self.address.export.encode())
        try:
            data = self._recv_exact(10 if self._no_zeroes else 134)
        except NBDError as exc:
            raise NBDError(
                f"server closed the connection after EXPORT_NAME (unknown export?): {exc}",
                address=self.address,
            ) from exc
        self.size, self.transmission_flags = struct.unpack(">QH", data[:10])

    # -- socket helpers -------------------------------------------------------------------------------------

    def _fail(self, what: str, exc: BaseException) -> NBDError:
        # After a short or timed-out transfer the byte stream position is unknown; refuse further use.
        self._broken = f"{what}: {exc}"
        if isinstance(exc, TimeoutError):
            return NBDError(f"{what}: timed out after {self._sock.gettimeout()} s", address=self.address)
        return NBDError(f"{what}: {exc}", address=self.address)

    def _sendall(self, data: BufferLike) -> None:
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise self._fail("send failed", exc) from exc

    def _send_parts(self, header: bytes, payload: BufferLike) -> None:
        if self._tls:
            self._send_parts_tls(header, payload)
            return
        # One sendmsg for header + payload avoids a tiny TCP segment per request (TCP_NODELAY is on).
        try:
            sent = self._sock.sendmsg([header, payload])
            total = len(header) + len(payload)
            if sent < total:
                if sent < len(header):
                    self._sock.sendall(header[sent:])
                    sent = len(header)
                self._sock.sendall(memoryview(payload)[sent - len(header) :])
        except OSError as exc:
            raise self._fail("send failed", exc) from exc

    def _send_parts_tls(self, header: bytes, payload: BufferLike) -> None:
        try:
            if len(payload) <= _TLS_JOIN_LIMIT:
                self._sock.sendall(b"".join((header, payload)))
            else:
                self._sock.sendall(header)
                self._sock.sendall(payload)
        except OSError as exc:
            raise self._fail("send failed", exc) from exc

    def _recv_into(self, view: memoryview) -> None:
        try:
            if self._quickack:
                self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            while view:
                n = self._sock.recv_into(view)
                if n == 0:
                    raise ConnectionResetError("server closed the connection")
                view = view[n:]
        except OSError as exc:
            raise self._fail("receive failed", exc) from exc

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray(n)
        self._recv_into(memoryview(buf))
        return bytes(buf)

    def _discard(self, n: int) -> None:
        while n:
            chunk = min(n, 1 << 20)
            self._recv_exact(chunk)
            n -= chunk

    # -- transmission ---------------------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise NBDError("client is closed", address=self.address)
        if self._broken is not None:
            raise NBDError(f"connection is unusable after an earlier failure ({self._broken})", address=self.address)

    def _check_range(self, cmd: int, offset: int, length: int) -> None:
        if offset < 0 or length < 0:
            raise ValueError(f"negative offset/length ({offset}, {length})")
        if length > 0xFFFFFFFF:
            raise ValueError(f"request length {length} does not fit in 32 bits")
        if cmd in (CMD_WRITE, CMD_WRITE_ZEROES, CMD_TRIM) and self.read_only:
            raise NBDError(f"{_CMD_NAMES[cmd]} on a read-only export", address=self.address, offset=offset)

    def _submit(
        self,
        cmd: int,
        offset: int,
        length: int,
        *,
        flags: int = 0,
        payload: BufferLike | None = None,
        buf: memoryview | None = None,
    ) -> int:
        self._check_usable()
        self._check_range(cmd, offset, length)
        while self._outstanding >= self.max_in_flight:
            self._receive_reply()
        cookie = self._next_cookie
        self._next_cookie += 1
        header = _REQUEST.pack(_REQUEST_MAGIC, flags, cmd, cookie, offset, length)
        self._inflight[cookie] = _Pending(cmd, offset, length, buf)
        self._outstanding += 1
        if payload is not None:
            self._send_parts(header, payload)
        else:
            self._sendall(header)
        return cookie

    def _request_error(self, pending: _Pending, code: int, message: str | None = None) -> NBDError:
        return NBDError(
            f"NBD {_CMD_NAMES.get(pending.cmd, pending.cmd)} failed",
            address=self.address,
            command=_CMD_NAMES.get(pending.cmd),
            offset=pending.offset,
            length=pending.length,
            code=code,
            server_message=message,
        )

    def _receive_reply(self) -> None:
        (magic,) = struct.unpack(">I", self._recv_exact(4))
        if magic == _SIMPLE_REPLY_MAGIC:
            error, cookie = _SIMPLE_REPLY_REST.unpack(self._recv_exact(_SIMPLE_REPLY_REST.size))
            pending = self._pending_for(cookie)
            if error:
                pending.error = self._request_error(pending, error)
            elif pending.cmd == CMD_READ and pending.buf is not None:
                self._recv_into(pending.buf)
            pending.done = True
            self._outstanding -= 1
        elif magic == _STRUCTURED_REPLY_MAGIC:
            self._receive_structured_chunk()
        else:
            self._broken = f"bad reply magic {magic:#x}"
            raise NBDError(f"protocol error: bad reply magic {magic:#x}", address=self.address)

    def _pending_for(self, cookie: int) -> _Pending:
        pending = self._inflight.get(cookie)
        if pending is None:
            self._broken = f"reply for unknown cookie {cookie}"
            raise NBDError(f"protocol error: reply for unknown request {cookie}", address=self.address)
        return pending

    def _receive_structured_chunk(self) -> None:
        flags, rtype, cookie, length = _STRUCTURED_REPLY_REST.unpack(self._recv_exact(_STRUCTURED_REPLY_REST.size))
        pending = self._pending_for(cookie)
        if rtype == _REPLY_TYPE_OFFSET_DATA:
            (data_offset,) = struct.unpack(">Q", self._recv_exact(8))
            rel = data_offset - pending.offset
            size = length - 8
            if pending.buf is None or rel < 0 or rel + size > pending.length:
                self._broken = "read reply outside the request"
                raise NBDError("protocol error: read data outside the request", address=self.address)
            self._recv_into(pending.buf[rel : rel + size])
        elif rtype == _REPLY_TYPE_OFFSET_HOLE:
            data_offset, size = struct.unpack(">QI", self._recv_exact(12))
            rel = data_offset - pending.offset
            if pending.buf is None or rel < 0 or rel + size > pending.length:
                self._broken = "hole reply outside the request"
                raise NBDError("protocol error: hole outside the request", address=self.address)
            pending.buf[rel : rel + size] = bytes(size)
        elif rtype == _REPLY_TYPE_BLOCK_STATUS:
            data = self._recv_exact(length)
            (ctx_id,) = struct.unpack(">I", data[:4])
            if ctx_id == self._meta_context_id:
                pending.extents.extend(struct.iter_unpack(">II", data[4:]))
        elif rtype & _REPLY_TYPE_ERROR_BIT:
            data = self._recv_exact(length)
            code, msglen = struct.unpack(">IH", data[:6])
            message = data[6 : 6 + msglen].decode("utf-8", "replace") or None
            if rtype == _REPLY_TYPE_ERROR_OFFSET and len(data) >= 6 + msglen + 8:
                (err_offset,) = struct.unpack(">Q", data[6 + msglen : 6 + msglen + 8])
                message = f"{message or 'error'} (at offset {err_offset})"
            if pending.error is None:
                pending.error = self._request_error(pending, code, message)
        else:
            # NONE carries nothing; unknown non-error chunk types are skipped as the protocol allows.
            self._discard(length)
        if flags & _REPLY_FLAG_DONE:
            pending.done = True
            self._outstanding -= 1

    def wait(self, cookies: Iterable[int]) -> None:
        """Collect the replies of these requests; raise the first failure among them."""
        first_error: NBDError | None = None
        for cookie in cookies:
            pending = self._pending_for(cookie)
            while not pending.done:
                self._receive_reply()
            del self._inflight[cookie]
            if pending.error is not None and first_error is None:
                first_error = pending.error
        if first_error is not None:
            raise first_error

    def drain(self) -> None:
        """Wait for every outstanding request."""
        self.wait(list(self._inflight))

    @property
    def in_flight(self) -> int:
        return self._outstanding

    # -- pipelined requests ---------------------------------------------------------------------------------

    def submit_read(self, offset: int, buf: memoryview | bytearray) -> list[int]:
        """Queue reads filling `buf` from `offset`; leave the buffer alone until they are waited for."""
        view = memoryview(buf).cast("B")
        cookies = []
        for pos in range(0, len(view), self.max_block):
            piece = view[pos : pos + self.max_block]
            cookies.append(self._submit(CMD_READ, offset + pos, len(piece), buf=piece))
        return cookies

    def submit_write(self, offset: int, data: BufferLike, *, fua: bool = False) -> list[int]:
        """Queue writes of `data` at `offset`; `data` must stay unchanged until they are waited for."""
        view = memoryview(data).cast("B")
        flags = CMD_FLAG_FUA if fua and self.can_fua else 0
        cookies = []
        for pos in range(0, len(view), self.max_block):
            piece = view[pos : pos + self.max_block]
            cookies.append(self._submit(CMD_WRITE, offset + pos, len(piece), flags=flags, payload=piece))
        return cookies

    def submit_write_zeroes(self, offset: int, length: int, *, may_trim: bool = True) -> list[int]:
        """Queue zeroing of a range; falls back to writing zero buffers when the server lacks WRITE_ZEROES."""
        if not self.can_write_zeroes:
            zeros = _zero_buffer(min(length, self.max_block))
            cookies = []
            for pos in range(0, length, self.max_block):
                n = min(self.max_block, length - pos)
                cookies.extend(self.submit_write(offset + pos, zeros[:n]))
            return cookies
        flags = 0 if may_trim else CMD_FLAG_NO_HOLE
        cookies = []
        for pos in range(0, length, _MAX_ZERO_REQUEST):
            n = min(_MAX_ZERO_REQUEST, length - pos)
            cookies.append(self._submit(CMD_WRITE_ZEROES, offset + pos, n, flags=flags))
        return cookies

    def submit_trim(self, offset: int, length: int) -> list[int]:
        if not self.can_trim:
            return []
        return [
            self._submit(CMD_TRIM, offset + pos, min(_MAX_ZERO_REQUEST, length - pos))
            for pos in range(0, length, _MAX_ZERO_REQUEST)
        ]

    # -- synchronous requests -------------------------------------------------------------------------------

    def readinto(self, offset: int, buf: memoryview | bytearray) -> None:
        self.wait(self.submit_read(offset, buf))

    def read(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        self.readinto(offset, buf)
        return bytes(buf)

    def write(self, offset: int, data: BufferLike, *, fua: bool = False) -> None:
        self.wait(self.submit_write(offset, data, fua=fua))

    def write_zeroes(self, offset: int, length: int, *, may_trim: bool = True) -> None:
        self.wait(self.submit_write_zeroes(offset, length, may_trim=may_trim))

    def trim(self, offset: int, length: int) -> None:
        self.wait(self.submit_trim(offset, length))

    def flush(self) -> None:
        """Make completed writes durable; a no-op when the server does not advertise FLUSH."""
        if self.can_flush:
            self.wait([self._submit(CMD_FLUSH, 0, 0)])

    def block_status(self, offset: int, length: int) -> list[tuple[int, int, int]]:
        """``base:allocation`` extents ``(offset, length, flags)`` from `offset`; may cover less than asked.

        Flags are `STATE_HOLE` / `STATE_ZERO` bits. Only available with ``block_status=True`` and a server
        that agreed to it (`can_block_status`).
        """
        if not self.can_block_status:
            raise NBDError("block status was not negotiated", address=self.address)
        length = min(length, self.size - offset, _MAX_ZERO_REQUEST)
        if length <= 0:
            return []
        cookie = self._submit(CMD_BLOCK_STATUS, offset, length)
        pending = self._inflight[cookie]
        self.wait([cookie])
        result = []
        pos = offset
        for ext_len, ext_flags in pending.extents:
            if ext_len == 0:
                break
            ext_len = min(ext_len, offset + length - pos)
            result.append((pos, ext_len, ext_flags))
            pos += ext_len
            if pos >= offset + length:
                break
        if not result:
            raise NBDError("server returned no block status", address=self.address, offset=offset, length=length)
        return result

    # -- teardown -------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Wait for outstanding replies, say goodbye (NBD_CMD_DISC) and close; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._broken is None:
                try:
                    self.drain()
                finally:
                    header = _REQUEST.pack(_REQUEST_MAGIC, 0, CMD_DISC, 0, 0, 0)
                    self._sock.sendall(header)
                    self._sock.shutdown(socket.SHUT_WR)
        except (OSError, NBDError):
            pass  # the server may already be gone; nothing left to protect on this connection
        finally:
            self._sock.close()

    def abort(self) -> None:
        """Drop the connection without waiting for replies (used when a copy is being cancelled)."""
        if not self._closed:
            self._closed = True
            self._broken = "aborted"
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()

    def __enter__(self) -> NBDClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and self._broken is not None:
            self.abort()
        else:
            self.close()

    def __repr__(self) -> str:
        return f"NBDClient({self.address.url!r}, size={self.size}, flags={self.transmission_flags:#x})"


_ZERO_BUFFERS: dict[int, bytes] = {}


def _zero_buffer(length: int) -> bytes:
    buf = _ZERO_BUFFERS.get(length)
    if buf is None:
        buf = _ZERO_BUFFERS[length] = bytes(length)
    return buf


def wait_for_server(address: NBDAddress | str, timeout: float = 10.0, *, tls: ssl.SSLContext | None = None) -> None:
    """Poll until an NBD server answers the handshake for this export (useful right after starting one)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            NBDClient(address, connect_timeout=1.0, tls=tls).close()
            return
        except NBDError as exc:
            last = exc
            time.sleep(0.05)
    raise NBDError(
        f"NBD server not ready after {timeout} s ({last})",
        address=parse_nbd_url(address) if isinstance(address, str) else address,
    )
