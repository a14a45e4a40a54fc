"""Source readers for the copy engine, and the VMDK descriptor parser.

Every reader has the same small interface (`Source`): ``size``, ``readinto(offset, buf)``, ``read``,
``allocation`` (an optional zero map), ``clone`` (an independent reader for another thread) and ``close``.
"""

from __future__ import annotations

import bisect
import errno
import functools
import hashlib
import os
import posixpath
import re
import socket
import ssl
import struct
import time
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpcore
import httpx

from common.nbd import STATE_ZERO, NBDAddress, NBDClient, NBDError

__all__ = [
    "ConcatSource",
    "CowdDeltaSource",
    "Extent",
    "FileSource",
    "HTTPRangeSource",
    "NBDSource",
    "Source",
    "SourceError",
    "ThumbprintMismatch",
    "VmdkDescriptorError",
    "extent_url",
    "open_source",
    "open_vmdk_chain",
    "open_vmdk_extents",
    "parse_vmdk_descriptor",
    "resolve_extent_path",
]

# (offset, length, is_zero) runs covering a requested range.
Allocation = list[tuple[int, int, bool]]


class SourceError(Exception):
    """A source could not deliver the requested bytes."""


class Source(ABC):
    """A random-access, read-only disk image.

    A Source object is used by one thread at a time; `clone` returns an independent reader (own file
    descriptor, NBD connection or HTTP connection pool) that the caller must close.
    """

    size: int
    description: str = "source"

    @abstractmethod
    def readinto(self, offset: int, buf: memoryview | bytearray) -> None:
        """Fill `buf` completely with the bytes at `offset`; raise `SourceError` on a short read."""

    def read(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        self.readinto(offset, buf)
        return bytes(buf)

    def allocation(self, offset: int, length: int) -> Allocation | None:
        """Which parts of the range are known to read as zeros, or None when the source cannot tell.

        Only a hint for skipping reads: a run reported as data may still contain zeros.
        """
        return None

    @abstractmethod
    def clone(self) -> Source:
        """An independent reader of the same image, for use from another thread."""

    def close(self) -> None:  # noqa: B027 - readers without resources need not override it
        """Release the reader's resources."""

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"{self.description}: range {offset}+{length} outside 0..{self.size}")

    def __enter__(self) -> Source:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description!r}, size={self.size})"


class FileSource(Source):
    """A local raw image or block device, read with pread (no shared file position, so no locking)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.description = self.path
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise SourceError(f"cannot open {self.path}: {exc.strerror}") from exc
        # st_size is 0 for block devices; seeking to the end works for both.
        self.size = os.lseek(self._fd, 0, os.SEEK_END)

    def readinto(self, offset: int, buf: memoryview | bytearray) -> None:
        view = memoryview(buf).cast("B")
        self._check_range(offset, len(view))
        while view:
            try:
                n = os.preadv(self._fd, [view], offset)
            except OSError as exc:
                raise SourceError(f"{self.path}: read at offset {offset} failed: {exc.strerror}") from exc
            if n == 0:
                raise SourceError(f"{self.path}: unexpected end of file at offset {offset} (file shrank?)")
            view = view[n:]
            offset += n

    def allocation(self, offset: int, length: int) -> Allocation | None:
        # SEEK_DATA/SEEK_HOLE report holes of sparse files; filesystems without support report all data.
        end = offset + length
        runs: Allocation = []
        pos = offset
        try:
            while pos < end:
                try:
                    data = min(os.lseek(self._fd, pos, os.SEEK_DATA), end)
                except OSError as exc:
                    if exc.errno != errno.ENXIO:
                        raise
                    data = end  # only a hole is left up to EOF
                if data > pos:
                    runs.append((pos, data - pos, True))
                    pos = data
                    continue
                hole = min(os.lseek(self._fd, pos, os.SEEK_HOLE), end)
                runs.append((pos, hole - pos, False))
                pos = hole
        except OSError:
            return None
        return runs

    def clone(self) -> FileSource:
        return FileSource(self.path)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class NBDSource(Source):
    """An NBD export used as a source (e.g. nbdkit's vddk plugin or a qemu-nbd backup image)."""

    def __init__(self, address: NBDAddress | str, *, timeout: float = 60.0, connect_timeout: float = 10.0) -> None:
        self._address = address
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self.client = NBDClient(address, timeout=timeout, connect_timeout=connect_timeout, block_status=True)
        self.size = self.client.size
        self.description = self.client.address.url

    def readinto(self, offset: int, buf: memoryview | bytearray) -> None:
        self._check_range(offset, len(buf))
        try:
            self.client.readinto(offset, buf)
        except NBDError as exc:
            raise SourceError(f"NBD source read failed: {exc}") from exc

    def allocation(self, offset: int, length: int) -> Allocation | None:
        if not self.client.can_block_status:
            return None
        runs: Allocation = []
        end = offset + length
        pos = offset
        while pos < end:
            try:
                extents = self.client.block_status(pos, end - pos)
            except NBDError:
                return None
            for ext_off, ext_len, flags in extents:
                runs.append((ext_off, ext_len, bool(flags & STATE_ZERO)))
                pos = ext_off + ext_len
        return runs

    def clone(self) -> NBDSource:
        return NBDSource(self._address, timeout=self._timeout, connect_timeout=self._connect_timeout)

    def close(self) -> None:
        self.client.close()


# -- HTTP ---------------------------------------------------------------------------------------------------


class ThumbprintMismatch(SourceError):
    """The server's TLS certificate does not match the pinned thumbprint."""


def _normalise_thumbprint(thumbprint: str) -> tuple[str, str]:
    digest = thumbprint.replace(":", "").replace(" ", "").lower()
    if not re.fullmatch(r"[0-9a-f]+", digest) or len(digest) not in (40, 64):
        raise ValueError(f"thumbprint {thumbprint!r}: expected a SHA-1 or SHA-256 hex digest (xx:xx:...)")
    return ("sha1" if len(digest) == 40 else "sha256"), digest


class _PinningStream(httpcore.NetworkStream):
    """Checks the peer certificate right after the TLS handshake, before any HTTP byte (or cookie) is sent."""

    def __init__(self, inner: httpcore.NetworkStream, algorithm: str, digest: str) -> None:
        self._inner = inner
        self._algorithm = algorithm
        self._digest = digest

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        tls = self._inner.start_tls(ssl_context, server_hostname, timeout)
        try:
            _check_pin(tls.get_extra_info("ssl_object"), self._algorithm, self._digest, server_hostname)
        except ThumbprintMismatch:
            tls.close()
            raise
        return tls


def _check_pin(ssl_object: ssl.SSLObject | ssl.SSLSocket | None, algorithm: str, digest: str, host: str | None) -> None:
    der = ssl_object.getpeercert(True) if ssl_object is not None else None
    got = hashlib.new(algorithm, der).hexdigest() if der else ""
    if got != digest:
        shown = ":".join(got[i : i + 2] for i in range(0, len(got), 2)).upper() or "no certificate"
        raise ThumbprintMismatch(
            f"TLS certificate of {host} has {algorithm} thumbprint {shown}, which is not the pinned one"
        )


class _PinningBackend(httpcore.NetworkBackend):
    def __init__(self, algorithm: str, digest: str) -> None:
        self._inner = httpcore.SyncBackend()
        self._algorithm = algorithm
        self._digest = digest

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _PinningStream(stream, self._algorithm, self._digest)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


@functools.cache
def _pinned_context() -> ssl.SSLContext:
    # The pin replaces CA and host name validation, as vSphere clients do for ESXi's self-signed certificates.
    # No CA store is loaded (it would not be used): loading one costs tens of milliseconds of CPU per reader.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _pinned_transport(thumbprint: str) -> httpx.HTTPTransport:
    algorithm, digest = _normalise_thumbprint(thumbprint)
    context = _pinned_context()
    transport = httpx.HTTPTransport(verify=context)
    # httpx has no public hook for the network backend; swapping the pool is covered by a test with a real
    # TLS server so an httpx upgrade that breaks it fails loudly rather than silently skipping the pin.
    transport._pool = httpcore.ConnectionPool(  # type: ignore[attr-defined]
        ssl_context=context, network_backend=_PinningBackend(algorithm, digest)
    )
    return transport


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_HEAD_LIMIT = 64 * 1024


class _NotForTheFastPath(Exception):
    """The answer is not a plain 206 with a Content-Length: let httpx make the request and explain it."""


class _RangeConnection:
    """One keep-alive HTTP/1.1 connection that reads a 206 body straight into the caller's buffer.

    Why not httpx for the body: it hands out 64 KiB ``bytes`` (~29,000 Python-level chunks for 1.75 GiB, each
    copied twice more) and the agent spent most of its CPU there. Here every byte is decrypted once, into the
    copy engine's buffer (``recv_into``). Only ranged GETs that come back 206 with a Content-Length take this
    path; anything else (errors, redirects, chunked or encoded bodies) is left to httpx, which is asked again.
    """

    def __init__(
        self,
        parsed: urllib.parse.SplitResult,
        headers: Mapping[str, str],
        cookies: Mapping[str, str],
        context: ssl.SSLContext | None,
        pin: tuple[str, str] | None,
        timeout: float,
    ) -> None:
        self._host = parsed.hostname or ""
        self._port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self._context = context
        self._pin = pin
        self._timeout = timeout
        target = parsed.path or "/"
        if parsed.query:
            target += "?" + parsed.query
        host = f"[{self._host}]" if ":" in self._host else self._host
        default_port = 443 if parsed.scheme == "https" else 80
        lines = [f"Host: {host}" if self._port == default_port else f"Host: {host}:{self._port}"]
        lines += [f"{name}: {value}" for name, value in headers.items() if name.lower() not in ("host", "range")]
        if cookies:
            lines.append("Cookie: " + "; ".join(f"{name}={value}" for name, value in cookies.items()))
        lines += ["Accept-Encoding: identity", "Connection: keep-alive"]
        self._request_head = f"GET {target} HTTP/1.1\r\n" + "".join(line + "\r\n" for line in lines)
        self._sock: socket.socket | None = None
        self._head = bytearray(_HEAD_LIMIT)

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self._host, self._port), timeout=self._timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._context is not None:
                sock = self._context.wrap_socket(sock, server_hostname=self._host)
                if self._pin is not None:
                    # Before any HTTP byte (or cookie) is sent, as with httpx.
                    _check_pin(sock, *self._pin, self._host)  # type: ignore[arg-type]
        except BaseException:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def read(self, offset: int, last: int, view: memoryview) -> None:
        """Fill view with bytes offset..last; raises _NotForTheFastPath, _TruncatedBody or OSError."""
        reused = self._sock is not None
        try:
            self._read(offset, last, view)
        except (_TruncatedBody, OSError):
            self.close()
            if reused:
                # A kept-alive connection the server has meanwhile closed: one fresh try, as HTTP clients do.
                self._read(offset, last, view)
                return
            raise
        except BaseException:
            self.close()
            raise

    def _read(self, offset: int, last: int, view: memoryview) -> None:
        if self._sock is None:
            self._sock = self._connect()
        sock = self._sock
        sock.sendall(f"{self._request_head}Range: bytes={offset}-{last}\r\n\r\n".encode("latin-1"))
        head = memoryview(self._head)
        filled = 0
        while True:
            n = sock.recv_into(head[filled:])
            if n == 0:
                raise _TruncatedBody("connection closed before the response head ended")
            filled += n
            end = self._head.find(b"\r\n\r\n", 0, filled)
            if end >= 0:
                break
            if filled == _HEAD_LIMIT:
                raise _NotForTheFastPath("response head too large")
        lines = bytes(self._head[:end]).decode("latin-1").split("\r\n")
        status = lines[0].split(" ", 2)
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        if len(status) < 2 or status[1] != "206" or not status[0].startswith("HTTP/1."):
            raise _NotForTheFastPath(lines[0])
        if "transfer-encoding" in fields or fields.get("content-encoding", "identity") != "identity":
            raise _NotForTheFastPath("encoded body")
        match = _CONTENT_RANGE.match(fields.get("content-range", ""))
        if not match or int(match.group(1)) != offset or int(match.group(2)) != last:
            raise _NotForTheFastPath("unexpected Content-Range")
        if fields.get("content-length") != str(len(view)):
            raise _NotForTheFastPath("unexpected Content-Length")
        body = filled - end - 4
        if body > len(view):
            raise _NotForTheFastPath("more than the range")
        view[:body] = head[end + 4 : filled]
        pos = body
        while pos < len(view):
            n = sock.recv_into(view[pos:])
            if n == 0:
                raise _TruncatedBody(f"got {pos} of {len(view)} bytes")
            pos += n
        if fields.get("connection", "").lower() == "close" or status[0] == "HTTP/1.0":
            self.close()


class HTTPRangeSource(Source):
    """A file served over HTTP(S), read with Range requests (vSphere datastore ``/folder`` URLs and others).

    `verify` is passed to httpx (True, False, a CA bundle path or an SSLContext); `thumbprint` (SHA-1 as
    vSphere shows it, or SHA-256) pins the server certificate instead. `size` skips the initial HEAD when
    the caller already knows the file size.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        cookies: Mapping[str, str] | None = None,
        verify: bool | str | ssl.SSLContext = True,
        thumbprint: str | None = None,
        size: int | None = None,
        timeout: float = 60.0,
        retries: int = 2,
    ) -> None:
        self.url = url
        parsed = urllib.parse.urlsplit(url)
        # Never put query strings in messages: vSphere URLs are harmless, but signed URLs carry secrets.
        self.description = f"{parsed.scheme}://{parsed.netloc}{parsed.path}"
        self._headers = dict(headers or {})
        self._cookies = dict(cookies or {})
        if parsed.scheme == "https" and not thumbprint and not isinstance(verify, ssl.SSLContext):
            # Built once and shared with every clone: a CA bundle costs tens of milliseconds of CPU to load.
            verify = httpx.create_ssl_context(verify=verify)
        self._verify = verify
        self._thumbprint = thumbprint
        self._timeout = timeout
        self._retries = retries
        transport = _pinned_transport(thumbprint) if thumbprint else None
        self._fast = self._fast_connection(parsed, verify, thumbprint, timeout)
        self._client = httpx.Client(
            headers=self._headers,
            cookies=self._cookies,
            verify=verify if transport is None else True,
            transport=transport,
            timeout=timeout,
            follow_redirects=False,
        )
        try:
            self.size = size if size is not None else self._probe_size()
        except BaseException:
            self._client.close()
            raise

    def _fast_connection(
        self,
        parsed: urllib.parse.SplitResult,
        verify: bool | str | ssl.SSLContext,
        thumbprint: str | None,
        timeout: float,
    ) -> _RangeConnection | None:
        """The direct reader, unless a proxy applies (httpx honours the proxy environment; this path does not)."""
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            return None
        proxies = urllib.request.getproxies()
        if (proxies.get(parsed.scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(parsed.hostname):
            return None
        context: ssl.SSLContext | None = None
        pin = None
        if parsed.scheme == "https":
            if thumbprint:
                pin = _normalise_thumbprint(thumbprint)
                context = _pinned_context()
            else:
                context = verify if isinstance(verify, ssl.SSLContext) else httpx.create_ssl_context(verify=verify)
        return _RangeConnection(parsed, self._headers, self._cookies, context, pin, timeout)

    def _probe_size(self) -> int:
        response = self._request("HEAD", None)
        length = response.headers.get("content-length")
        if response.status_code == 200 and length is not None:
            return int(length)
        # Some servers refuse HEAD; a one-byte range tells the total size in Content-Range.
        response = self._request("GET", "bytes=0-0")
        if response.status_code == 206:
            match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
            if match and match.group(3) != "*":
                return int(match.group(3))
        if response.status_code == 416:
            match = re.match(r"bytes\s+\*/(\d+)", response.headers.get("content-range", ""))
            if match:
                return int(match.group(1))
        raise SourceError(f"{self.description}: cannot determine the size (HTTP {response.status_code})")

    def _request(self, method: str, byte_range: str | None) -> httpx.Response:
        headers = {"Range": byte_range} if byte_range else {}
        for attempt in range(self._retries + 1):
            try:
                response = self._client.request(method, self.url, headers=headers)
            except ThumbprintMismatch:
                raise
            except httpx.TransportError as exc:
                if attempt == self._retries:
                    raise SourceError(f"{self.description}: {method} failed: {exc!r}") from exc
                time.sleep(0.2 * 2**attempt)
                continue
            if response.status_code in (401, 403):
                raise SourceError(f"{self.description}: HTTP {response.status_code} (session expired or no privilege?)")
            return response
        raise AssertionError("unreachable")

    def readinto(self, offset: int, buf: memoryview | bytearray) -> None:
        view = memoryview(buf).cast("B")
        length = len(view)
        self._check_range(offset, length)
        if length == 0:
            return
        last = offset + length - 1
        for attempt in range(self._retries + 1):
            try:
                self._read_once(offset, last, view)
                return
            except (httpx.TransportError, _TruncatedBody, _TransientHTTP) as exc:
                if attempt == self._retries:
                    raise SourceError(f"{self.description}: reading bytes {offset}-{last} failed: {exc!r}") from exc
                time.sleep(0.2 * 2**attempt)

    def _read_once(self, offset: int, last: int, view: memoryview) -> None:
        if self._fast is not None:
            try:
                self._fast.read(offset, last, view)
                return
            except _NotForTheFastPath:
                pass  # httpx asks again and reports (or retries) whatever the server answered
            except ThumbprintMismatch:
                raise
            except OSError as exc:
                raise _TransientHTTP(f"{type(exc).__name__}: {exc}") from exc
        with self._client.stream("GET", self.url, headers={"Range": f"bytes={offset}-{last}"}) as response:
            status = response.status_code
            if status in (500, 502, 503, 504):
                # hostd answers 503 when busy; a ranged GET is idempotent, so try again.
                raise _TransientHTTP(f"HTTP {status}")
            if status != 206:
                hint = {
                    200: "the server ignored the Range header",
                    416: "range not satisfiable: the file is shorter than expected",
                    401: "session cookie expired or missing",
                    403: "forbidden",
                    404: "file not found",
                }.get(status, response.reason_phrase)
                raise SourceError(f"{self.description}: bytes {offset}-{last}: HTTP {status} ({hint})")
            match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
            if not match or int(match.group(1)) != offset or int(match.group(2)) != last:
                raise SourceError(
                    f"{self.description}: asked for bytes {offset}-{last}, server sent "
                    f"Content-Range {response.headers.get('content-range')!r}"
                )
            pos = 0
            for chunk in response.iter_raw():
                end = pos + len(chunk)
                if end > len(view):
                    raise SourceError(f"{self.description}: server sent more than bytes {offset}-{last}")
                view[pos:end] = chunk
                pos = end
            if pos != len(view):
                raise _TruncatedBody(f"got {pos} of {len(view)} bytes")

    def clone(self) -> HTTPRangeSource:
        return HTTPRangeSource(
            self.url,
            headers=self._headers,
            cookies=self._cookies,
            verify=self._verify,
            thumbprint=self._thumbprint,
            size=self.size,
            timeout=self._timeout,
            retries=self._retries,
        )

    def close(self) -> None:
        if self._fast is not None:
            self._fast.close()
        self._client.close()


class _TruncatedBody(Exception):
    pass


class _TransientHTTP(Exception):
    pass


# -- multi-extent images ------------------------------------------------------------------------------------


class ConcatSource(Source):
    """Several pieces laid end to end: ``(source, source_offset, length)``, with ``source=None`` for zeros.

    Used for VMDKs made of several flat extents (twoGbMaxExtentFlat) or with ZERO extents. Owns its sources.
    """

    def __init__(self, pieces: Sequence[tuple[Source | None, int, int]], description: str = "concatenation") -> None:
        self._pieces = list(pieces)
        self._starts: list[int] = []
        pos = 0
        for source, src_off, length in self._pieces:
            if source is not None and src_off + length > source.size:
                raise SourceError(
                    f"{description}: extent needs {src_off + length} bytes of {source.description}, "
                    f"which has {source.size}"
                )
            self._starts.append(pos)
            pos += length
        self.size = pos
        self.description = description

    def _walk(self, offset: int, length: int) -> list[tuple[int, int, int, int]]:
        """(piece index, offset inside the piece, length, offset inside the request) for a range."""
        out = []
        index = max(bisect.bisect_right(self._starts, offset) - 1, 0)
        done = 0
        while done < length:
            start = self._starts[index]
            piece_len = self._pieces[index][2]
            inner = offset + done - start
            n = min(piece_len - inner, length - done)
            if n > 0:
                out.append((index, inner, n, done))
                done += n
            index += 1
        return out

    def readinto(self, offset: int, buf: memoryview | bytearray) -> None:
        view = memoryview(buf).cast("B")
        self._check_range(offset, len(view))
        for index, inner, n, at in self._walk(offset, len(view)):
            source, src_off, _ = self._pieces[index]
            if source is None:
                view[at : at + n] = bytes(n)
            else:
                source.readinto(src_off + inner, view[at : at + n])

    def allocation(self, offset: int, length: int) -> Allocation | None:
        runs: Allocation = []
        for index, inner, n, at in self._walk(offset, length):
            source, src_off, _ = self._pieces[index]
            if source is None:
                runs.append((offset + at, n, True))
                continue
            sub = source.allocation(src_off + inner, n)
            if sub is None:
                runs.append((offset + at, n, False))
            else:
                shift = offset + at - (src_off + inner)
                runs.extend((o + shift, ln, z) for o, ln, z in sub)
        return runs

    def clone(self) -> ConcatSource:
        clones: list[tuple[Source | None, int, int]] = []
        try:
            for source, src_off, length in self._pieces:
                clones.append((source.clone() if source is not None else None, src_off, length))
        except BaseException:
            for source, _, _ in clones:
                if source is not None:
                    source.close()
            raise
        return ConcatSource(clones, self.description)

    def close(self) -> None:
        for source, _, _ in self._pieces:
            if source is not None:
                source.close()


# -- VMDK descriptors ---------------------------------------------------------------------------------------


class VmdkDescriptorError(ValueError):
    """The descriptor is not a text descriptor of flat extents this reader can copy."""


@dataclass(frozen=True)
class Extent:
    """One extent line: ``RW 4192256 VMFS "vm-flat.vmdk"`` (sizes and offsets in 512-byte sectors)."""

    access: str
    sectors: int
    type: str
    filename: str | None
    offset_sectors: int = 0

    @property
    def size_bytes(self) -> int:
        return self.sectors * 512

    @property
    def offset_bytes(self) -> int:
        return self.offset_sectors * 512


_EXTENT_LINE = re.compile(
    r"""^(?P<access>RW|RDONLY|NOACCESS)\s+(?P<sectors>\d+)\s+(?P<type>[A-Za-z]+)"""
    r"""(?:\s+"(?P<file>[^"]*)"(?:\s+(?P<offset>\d+))?)?\s*$"""
)
_FLAT_TYPES = {"FLAT", "VMFS"}
_SPARSE_TYPES = {"SPARSE", "VMFSSPARSE", "SESPARSE", "VSANSPARSE"}
_RAW_TYPES = {"VMFSRDM", "VMFSRAW"}


_VMWARE_ESCAPE = re.compile(r"\|([0-9A-Fa-f]{2})")


def unescape_vmware(value: str) -> str:
    """A quoted value of a VMware dictionary file (.vmx, a .vmdk descriptor) as it really is.

    VMware writes a ``"`` inside a quoted value as ``|22`` and a ``|`` as ``|7C`` (the pipe hex escape, as
    libvirt's virVMXEscapeHexPipe writes it too), so a VM named ``a"b`` has the extent ``"a|22b-flat.vmdk"``.
    """
    return _VMWARE_ESCAPE.sub(lambda m: chr(int(m[1], 16)), value)


def escape_vmware(value: str) -> str:
    """The inverse of `unescape_vmware`: how VMware writes ``value`` between double quotes."""
    return value.replace("|", "|7C").replace('"', "|22")


def parse_vmdk_descriptor(text: str | bytes) -> list[Extent]:
    """Extents of a monolithicFlat / twoGbMaxExtentFlat / vmfs descriptor, in disk order.

    Raises `VmdkDescriptorError` for sparse disks (snapshot deltas, seSparse, monolithicSparse), raw device
    mappings, unreadable extents, or text that is not a descriptor: those cannot be read as plain byte ranges.
    """
    if isinstance(text, bytes):
        if text[:4] in (b"KDMV", b"COWD"):
            raise VmdkDescriptorError(
                "this is a binary sparse VMDK (hosted sparse/COWD), not a text descriptor; "
                "read it through VDDK (nbdkit vddk) or convert it first"
            )
        text = text.decode("utf-8", "replace")
    text = text.replace("\x00", "")  # descriptors embedded in a sector are NUL padded
    create_type = None
    extents: list[Extent] = []
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        if line.lower().startswith("createtype"):
            create_type = line.split("=", 1)[1].strip().strip('"') if "=" in line else None
            continue
        if not re.match(r"^(RW|RDONLY|NOACCESS)\s", line):
            continue
        match = _EXTENT_LINE.match(line)
        if not match:
            raise VmdkDescriptorError(f"line {number}: malformed extent line {line!r}")
        kind = match["type"].upper()
        filename = unescape_vmware(match["file"]) if match["file"] is not None else None
        if kind in _SPARSE_TYPES:
            raise VmdkDescriptorError(
                f"line {number}: {kind} extent {filename!r} is sparse (snapshot delta, seSparse or "
                "hosted sparse): the datastore-http reader reads flat extents and vmfsSparse snapshot chains only; "
                'this disk needs the VDDK reader ("reader": "vddk" in the agent config, nbdkit with the VDDK plugin)'
            )
        if kind in _RAW_TYPES:
            raise VmdkDescriptorError(f"line {number}: {kind} extent {filename!r} is a raw device mapping")
        if kind not in _FLAT_TYPES and kind != "ZERO":
            raise VmdkDescriptorError(f"line {number}: unknown extent type {kind!r}")
        if match["access"] == "NOACCESS":
            raise VmdkDescriptorError(f"line {number}: extent {filename!r} is NOACCESS")
        if kind in _FLAT_TYPES and not filename:
            raise VmdkDescriptorError(f"line {number}: {kind} extent without a file name")
        extents.append(
            Extent(
                access=match["access"],
                sectors=int(match["sectors"]),
                type=kind,
                filename=filename if kind != "ZERO" else None,
                offset_sectors=int(match["offset"] or 0),
            )
        )
    if not extents:
        hint = f" (createType={create_type})" if create_type else ""
        raise VmdkDescriptorError(f"no extent lines found; not a VMDK text descriptor{hint}")
    if create_type and create_type.lower() in (
        "monolithicsparse",
        "vmfssparse",
        "sesparse",
        "streamoptimized",
    ):
        raise VmdkDescriptorError(f"createType={create_type} is a sparse format")
    return extents


def resolve_extent_path(descriptor_path: str, filename: str) -> str:
    """Path of an extent file named in a descriptor: relative names are relative to the descriptor's folder.

    Works for datastore paths (``[ds1] vm/vm.vmdk``) and POSIX paths alike.
    """
    if filename.startswith("/") or filename.startswith("["):
        return filename
    datastore = re.match(r"^\[([^\]]*)\]\s*(.*)$", descriptor_path)
    if datastore:
        folder = posixpath.dirname(datastore[2])
        return f"[{datastore[1]}] {posixpath.join(folder, filename) if folder else filename}"
    folder = posixpath.dirname(descriptor_path)
    return posixpath.join(folder, filename) if folder else filename


def extent_url(descriptor_url: str, filename: str) -> str:
    """URL of an extent file next to a descriptor URL, keeping its query (``dcPath``, ``dsName``)."""
    parts = urllib.parse.urlsplit(descriptor_url)
    path = resolve_extent_path(urllib.parse.unquote(parts.path), filename)
    return urllib.parse.urlunsplit(parts._replace(path=urllib.parse.quote(path)))


def open_vmdk_extents(extents: Sequence[Extent], opener: Callable[[str], Source], description: str) -> Source:
    """One Source over all extents; `opener` turns an extent file name into a Source (file, HTTP, ...)."""
    pieces: list[tuple[Source | None, int, int]] = []
    try:
        for extent in extents:
            if extent.type == "ZERO" or extent.filename is None:
                pieces.append((None, 0, extent.size_bytes))
            else:
                pieces.append((opener(extent.filename), extent.offset_bytes, extent.size_bytes))
        if len(pieces) == 1 and pieces[0][0] is not None and pieces[0][1] == 0:
            only = pieces[0][0]
            if only.size == pieces[0][2]:
                return only
        return ConcatSource(pieces, description)
    except BaseException:
        for source, _, _ in pieces:
            if source is not None:
                source.close()
        raise


def open_source(spec: Source | str | os.PathLike[str], **http_options: Any) -> Source:
    """A Source for a path, an ``nbd://``/``nbd+unix://`` URL or an ``http(s)://`` URL; a Source is kept."""
    if isinstance(spec, Source):
        return spec
    text = os.fspath(spec)
    scheme = urllib.parse.urlsplit(text).scheme.lower()
    if scheme in ("nbd", "nbd+unix"):
        return NBDSource(text)
    if scheme in ("http", "https"):
        return HTTPRangeSource(text, **http_options)
    return FileSource(text)


# -- snapshot delta chains (vmfsSparse) --------------------------------------------------------------------------

_COWD_HEADER = struct.Struct("<4sIIIIIII")
_COWD_TABLE_ENTRIES = 4096
_PARENT_HINT = re.compile(r'^\s*parentFileNameHint\s*=\s*"(?P<file>[^"]+)"', re.MULTILINE)
_CID = re.compile(r"^\s*(?P<key>CID|parentCID)\s*=\s*(?P<value>[0-9a-fA-F]+)\s*$", re.MULTILINE)


def _cids(text: str) -> dict[str, str]:
    return {m["key"]: m["value"].lower() for m in _CID.finditer(text)}


@dataclass(frozen=True)
class DeltaDescriptor:
    """A snapshot delta's descriptor: one VMFSSPARSE extent over its parent disk."""

    sectors: int
    delta_file: str
    parent_file: str
    parent_cid: str | None


def parse_delta_descriptor(text: str | bytes) -> DeltaDescriptor | None:
    """The delta extent and parent of a ``vmfsSparse`` descriptor; None for any other descriptor."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = text.replace("\x00", "")
    extents = [m for line in text.splitlines() if (m := _EXTENT_LINE.match(line.strip()))]
    if len(extents) != 1 or extents[0]["type"].upper() != "VMFSSPARSE" or not extents[0]["file"]:
        return None
    parent = _PARENT_HINT.search(text)
    if parent is None:
        raise VmdkDescriptorError("a VMFSSPARSE delta descriptor without parentFileNameHint")
    return DeltaDescriptor(int(extents[0]["sectors"]), extents[0]["file"], parent["file"], _cids(text).get("parentCID"))


class CowdDeltaSource(Source):
    """A vmfsSparse (COWD) snapshot delta over its parent: grains the delta holds come from it, the rest from
    the parent. Owns both sources."""

    def __init__(self, delta: Source, parent: Source, description: str) -> None:
        self._delta = delta
        self._parent = parent
        self.description = description
        try:
            magic, _version, _flags, sectors, grain_sectors, directory_sector, entries, _ = _COWD_HEADER.unpack(
                delta.read(0, _COWD_HEADER.size)
            )
            if magic != b"COWD" or grain_sectors == 0:
                raise SourceError(f"{description}: not a vmfsSparse (COWD) delta")
            self.size = sectors * 512
            if self.size != parent.size:
                raise SourceError(f"{description}: delta of {self.size} bytes over a parent of {parent.size}")
            self._grain = grain_sectors * 512
            self._directory = struct.unpack(f"<{entries}I", delta.read(directory_sector * 512, entries * 4))
        except BaseException:
            delta.close()
            parent.close()
            raise
        self._tables: dict[int, tuple[int, ...]] = {}

    def _grain_sector(self, index: int) -> int:
        table, entry = divmod(index, _COWD_TABLE_ENTRIES)
        if table >= len(self._directory) or self._directory[table] == 0:
            return 0
        if table not in self._tables:
            raw = self._delta.read(self._directory[table] * 512, _COWD_TABLE_ENTRIES * 4)
            self._tables[table] = struct.unpack(f"<{_COWD_TABLE_ENTRIES}I", raw)
        return self._tables[table][entry]

    def readinto(self, offset: int, buf: memoryview | bytearray) -> None:
        view = memoryview(buf).cast("B")
        self._check_range(offset, len(view))
        done = 0
        while done < len(view):
            index, inner = divmod(offset + done, self._grain)
            n = min(self._grain - inner, len(view) - done)
            sector = self._grain_sector(index)
            if sector:
                self._delta.readinto(sector * 512 + inner, view[done : done + n])
            else:
                self._parent.readinto(offset + done, view[done : done + n])
            done += n

    def clone(self) -> CowdDeltaSource:
        delta = self._delta.clone()
        try:
            parent = self._parent.clone()
        except BaseException:
            delta.close()
            raise
        return CowdDeltaSource(delta, parent, self.description)

    def close(self) -> None:
        self._delta.close()
        self._parent.close()


def open_vmdk_chain(
    descriptor_path: str,
    read_descriptor: Callable[[str], bytes],
    opener: Callable[[str], Source],
    *,
    max_depth: int = 32,
    expected_cid: str | None = None,
) -> Source:
    """One Source over a disk's whole snapshot chain: vmfsSparse deltas down to a flat base.

    ``read_descriptor`` and ``opener`` take datastore-relative paths (as ``resolve_extent_path`` gives them).
    SEsparse and other sparse formats are refused by ``parse_vmdk_descriptor`` with a message naming VDDK.
    """
    text = read_descriptor(descriptor_path)
    cid = _cids(text.decode("utf-8", "replace")).get("CID")
    if expected_cid is not None and cid != expected_cid:
        # As qemu and VDDK refuse it: the parent changed after the delta was made, so the chain reads garbage.
        raise VmdkDescriptorError(
            f"{descriptor_path} has CID {cid}, but its child delta was made over CID {expected_cid}: "
            "the snapshot chain is inconsistent"
        )
    delta = parse_delta_descriptor(text)
    if delta is None:
        return open_vmdk_extents(
            parse_vmdk_descriptor(text),
            lambda name: opener(resolve_extent_path(descriptor_path, name)),
            descriptor_path,
        )
    if max_depth == 0:
        raise VmdkDescriptorError(f"{descriptor_path}: snapshot chain deeper than 32 deltas")
    parent = open_vmdk_chain(
        resolve_extent_path(descriptor_path, delta.parent_file),
        read_descriptor,
        opener,
        max_depth=max_depth - 1,
        expected_cid=delta.parent_cid,
    )
    try:
        delta_source = opener(resolve_extent_path(descriptor_path, delta.delta_file))
    except BaseException:
        parent.close()
        raise
    return CowdDeltaSource(delta_source, parent, descriptor_path)
