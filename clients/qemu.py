"""qemu-img and qemu-nbd, driven with argv lists. Knows nothing of Prefect or of the catalog.

A qemu-nbd we start is identified by its pid AND its command line: stopping checks both, so a recycled pid
of some other process is never signalled.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509

from common.digests import TargetDigests, zero_digest
from vmferry.errors import VmferryError
from vmferry.nbd_tls import CA_CERT, CLIENT_CERT, CLIENT_KEY

if TYPE_CHECKING:
    from common.nbd import NBDClient

EXPORT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class QemuError(VmferryError):
    """A qemu tool failed; the message quotes its own error output."""


@dataclass(frozen=True)
class NbdServer:
    pid: int
    bind_address: str
    port: int
    export_name: str
    file_path: Path
    tls: bool = False

    @property
    def url(self) -> str:
        from common.nbd import NBDAddress

        return NBDAddress(export=self.export_name, host=self.bind_address, port=self.port, tls=self.tls).url


def _run(argv: list[str], *, timeout: float = 120) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise QemuError(f"{argv[0]} is not installed (Debian package qemu-utils)") from exc
    except subprocess.TimeoutExpired as exc:
        raise QemuError(f"{argv[0]} did not finish within {timeout:.0f} s") from exc
    if done.returncode != 0:
        raise QemuError(f"{argv[0]} {argv[1]} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def create_qcow2(path: Path, size_bytes: int, *, backing_file: Path | None = None) -> None:
    """Create a qcow2; a backing file is recorded relative to ``path`` so the repository can move."""
    argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing_file is not None:
        relative = os.path.relpath(backing_file, path.parent)
        argv += ["-F", "qcow2", "-b", relative]
    argv += ["--", str(path), str(size_bytes)]
    _run(argv)


def image_info(path: Path, *, backing_chain: bool = False) -> dict | list:
    argv = ["qemu-img", "info", "--output=json", "-U"]
    if backing_chain:
        argv.append("--backing-chain")
    return json.loads(_run([*argv, "--", str(path)]))


def check_image(path: Path) -> dict:
    """``qemu-img check``; raises QemuError when the image has errors or leaks."""
    done = subprocess.run(
        ["qemu-img", "check", "--output=json", "--", str(path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode not in (0,):
        raise QemuError(f"qemu-img check found problems in {path} ({done.returncode}): {done.stdout}{done.stderr}")
    return json.loads(done.stdout)


def images_identical(first: Path | str, second: Path | str) -> bool:
    """``qemu-img compare``: same guest-visible content (zeros and holes compare equal)."""
    done = subprocess.run(
        ["qemu-img", "compare", "-q", "--", str(first), str(second)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode in (0, 1):
        return done.returncode == 0
    raise QemuError(f"qemu-img compare failed ({done.returncode}): {done.stderr.strip()}")


def _port_open(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False


def _serves_export(address: str, port: int, export_name: str, tls: ssl.SSLContext | None = None) -> bool:
    """A full NBD handshake for the export: an open port alone may belong to somebody else's listener."""
    from common.nbd import NBDAddress, NBDClient, NBDError

    target = NBDAddress(export=export_name, host=address, port=port, tls=tls is not None)
    try:
        NBDClient(target, connect_timeout=2, timeout=2, tls=tls).close()
        return True
    except (NBDError, OSError):
        return False


def readiness_tls_context(tls_creds_dir: Path) -> ssl.SSLContext:
    """The context of the hub's own handshake with a qemu-nbd using ``tls_creds_dir`` (qemu's x509 layout).

    It trusts ca-cert.pem and presents client-cert.pem / client-key.pem when they exist (a server with
    verify-peer on refuses clients without a certificate).
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    # The hub only proves that its own server answers; the certificate must chain to the hub's CA, but the
    # address it names is the agent's concern (the hub may bind 0.0.0.0, which no certificate names).
    context.check_hostname = False
    ca_file = tls_creds_dir / CA_CERT
    cert_file, key_file = tls_creds_dir / CLIENT_CERT, tls_creds_dir / CLIENT_KEY
    try:
        context.load_verify_locations(cafile=str(ca_file))
        if cert_file.exists() and key_file.exists():
            context.load_cert_chain(str(cert_file), str(key_file))
    except (OSError, ssl.SSLError) as exc:
        raise QemuError(f"cannot load the NBD TLS credentials in {tls_creds_dir}: {exc}") from exc
    return context


def _authz_object(allowed_clients: Sequence[str], tls_creds_dir: Path) -> str:
    """qemu's authz-list allowing exactly these client certificate names, and the hub's own readiness name.

    qemu matches the distinguished name GnuTLS prints (RFC 4514, e.g. ``CN=vmferry-agent``); JSON keeps
    commas inside a name from being read as option separators.
    """
    names = list(allowed_clients)
    readiness = tls_creds_dir / CLIENT_CERT
    if readiness.exists():
        names.append(x509.load_pem_x509_certificate(readiness.read_bytes()).subject.rfc4514_string())
    rules = [{"match": name, "policy": "allow", "format": "exact"} for name in dict.fromkeys(names)]
    return json.dumps({"qom-type": "authz-list", "id": "vmferry-authz", "policy": "deny", "rules": rules})


def _qemu_opt_value(value: str) -> str:
    # QemuOpts separates options with commas; a comma inside a value is written twice.
    return value.replace(",", ",,")


def cmdline_of(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def is_our_qemu_nbd(pid: int, file_path: Path | str, port: int | None = None) -> bool:
    """True when ``pid`` is a live qemu-nbd serving ``file_path`` (and ``port``, if given)."""
    argv = cmdline_of(pid)
    if not argv or Path(argv[0]).name != "qemu-nbd" or _is_zombie(pid):
        return False
    if str(file_path) not in argv:
        return False
    return port is None or str(port) in argv


def start_qemu_nbd(
    file_path: Path,
    *,
    export_name: str,
    bind_address: str,
    port: int,
    image_format: str = "qcow2",
    shared: int = 8,
    read_only: bool = False,
    log_path: Path | None = None,
    tls_creds_dir: Path | None = None,
    tls_verify_peer: bool = True,
    tls_allowed_clients: Sequence[str] | None = None,
    timeout: float = 15.0,
) -> NbdServer:
    """Start qemu-nbd serving one file on one port and wait until it accepts connections.

    With `tls_creds_dir` (qemu's x509 layout: ca-cert.pem, server-cert.pem, server-key.pem) the server
    speaks TLS only; `tls_verify_peer` makes it accept only clients with a certificate signed by that CA, and
    `tls_allowed_clients` (certificate names like ``CN=vmferry-agent``) only those of them.
    """
    if tls_allowed_clients and (tls_creds_dir is None or not tls_verify_peer):
        raise ValueError("an allow-list of TLS clients needs TLS credentials with client verification on")
    if not EXPORT_NAME.match(export_name):
        raise ValueError(f"export name {export_name!r} must match {EXPORT_NAME.pattern}")
    readiness_tls = readiness_tls_context(tls_creds_dir) if tls_creds_dir is not None else None
    argv = [
        "qemu-nbd",
        "--persistent",
        f"--shared={shared}",
        "--format",
        image_format,
        "--export-name",
        export_name,
        "--bind",
        bind_address,
        "--port",
        str(port),
        "--cache=writeback",
        "--aio=threads",
    ]
    if read_only:
        argv.append("--read-only")
    if tls_creds_dir is not None:
        verify = "on" if tls_verify_peer else "off"
        argv += [
            "--object",
            f"tls-creds-x509,id=tls0,endpoint=server,dir={_qemu_opt_value(str(tls_creds_dir))},verify-peer={verify}",
            "--tls-creds",
            "tls0",
        ]
        if tls_allowed_clients:
            argv += ["--object", _authz_object(tls_allowed_clients, tls_creds_dir), "--tls-authz", "vmferry-authz"]
    argv += ["--", str(file_path)]
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    except FileNotFoundError as exc:
        raise QemuError("qemu-nbd is not installed (Debian package qemu-utils)") from exc
    finally:
        if log_path:
            log.close()
    deadline = time.monotonic() + timeout
    foreign_listener = False
    while time.monotonic() < deadline:
        if process.poll() is not None:
            detail = Path(log_path).read_text(errors="replace")[-2000:] if log_path else ""
            raise QemuError(
                f"qemu-nbd for {file_path} on {bind_address}:{port} exited with {process.returncode}: {detail.strip()}"
            )
        if _port_open(bind_address, port):
            if _serves_export(bind_address, port, export_name, readiness_tls) and process.poll() is None:
                _children[process.pid] = process
                return NbdServer(
                    process.pid, bind_address, port, export_name, Path(file_path), tls=readiness_tls is not None
                )
            foreign_listener = True
            break
        time.sleep(0.02)
    if process.poll() is None:
        process.kill()
        process.wait()
        if foreign_listener and readiness_tls is not None:
            raise QemuError(
                f"qemu-nbd for {file_path} is not serving {bind_address}:{port} over TLS: another program listens "
                f"on that port, or the hub's own TLS handshake was refused (with verify-peer on, {tls_creds_dir} "
                "needs client-cert.pem and client-key.pem signed by ca-cert.pem)"
            )
        if foreign_listener:
            raise QemuError(
                f"qemu-nbd for {file_path} is not serving {bind_address}:{port}: another program listens on that "
                "port; free it or exclude it from VMFERRY_NBD_PORT_RANGE"
            )
        raise QemuError(f"qemu-nbd for {file_path} did not listen on {bind_address}:{port} within {timeout:.0f} s")
    detail = Path(log_path).read_text(errors="replace")[-2000:].strip() if log_path else ""
    raise QemuError(f"qemu-nbd for {file_path} on {bind_address}:{port} exited with {process.returncode}: {detail}")


# Popen objects of the servers this process started, so stopping them also reaps them (no zombies).
_children: dict[int, subprocess.Popen[bytes]] = {}


def _gone(pid: int) -> bool:
    child = _children.get(pid)
    if child is not None:
        if child.poll() is not None:
            _children.pop(pid, None)
            return True
        return False
    return cmdline_of(pid) is None or _is_zombie(pid)


def stop_qemu_nbd(pid: int, file_path: Path | str, *, grace: float = 10.0) -> bool:
    """SIGTERM, wait, SIGKILL. Idempotent: returns False when no such qemu-nbd was running."""
    if not is_our_qemu_nbd(pid, file_path):
        _children.pop(pid, None)
        return False
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        child = _children.get(pid)
        if child is not None:  # our own child: woken the moment it exits, not at the next poll
            try:
                child.wait(wait)
            except subprocess.TimeoutExpired:
                continue
            _children.pop(pid, None)
            return True
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if _gone(pid):
                return True
            time.sleep(0.02)
    if not _gone(pid):
        raise QemuError(f"qemu-nbd {pid} serving {file_path} survived SIGKILL")
    return True


@dataclass(frozen=True)
class ImageScan:
    """What one read of an image's guest-visible bytes gave: its sha256 and/or its per-block digests."""

    size: int
    sha256: str | None = None
    block_digests: TargetDigests | None = None


# Read size of a scan: whole digest blocks, large enough that per-request Python costs stay small.
_SCAN_CHUNK = 4 * 1024 * 1024


def stop_child(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Stop a qemu-nbd this process started itself: SIGTERM, wait up to ``grace``, then SIGKILL."""
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def connect_when_served(
    process: subprocess.Popen[bytes],
    socket_path: Path,
    path: Path,
    *,
    errors: Callable[[], str],
    block_status: bool = False,
    timeout: float = 15,
    error: Callable[[str], Exception] = QemuError,
) -> NBDClient:
    """Connect to the qemu-nbd ``process`` serving ``path`` on ``socket_path`` once it accepts.

    Its socket file appears at bind(), a moment before listen(): a connection in between is refused, so
    the file's existence proves nothing and only a completed handshake ends the wait. ``errors`` gives
    qemu-nbd's error output should it exit; ``error`` makes the exception raised (the caller's kind).
    """
    from common.nbd import NBDAddress, NBDClient, NBDError

    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise error(f"qemu-nbd could not open {path}: {errors().strip()}")
        if socket_path.exists():
            try:
                return NBDClient(NBDAddress(socket_path=str(socket_path)), block_status=block_status, timeout=60)
            except NBDError as exc:
                if time.monotonic() > deadline:
                    raise error(f"qemu-nbd serving {path} did not answer: {exc}") from exc
        if time.monotonic() > deadline:
            raise error(f"qemu-nbd did not serve {path} within {timeout:.0f} s")
        time.sleep(0.01)


@contextmanager
def serve_read_only(
    path: Path,
    socket_path: Path,
    *,
    image_format: str = "qcow2",
    block_status: bool = False,
    timeout: float = 15,
    on_started: Callable[[int], None] | None = None,
    error: Callable[[str], Exception] = QemuError,
) -> Iterator[NBDClient]:
    """A private ``qemu-nbd --read-only`` serving the image (its backing chain) on ``socket_path``, connected.

    ``on_started`` gets qemu-nbd's pid as soon as it runs (a job ledger records it there, so a killed job's
    qemu-nbd is found and stopped); qemu-nbd is stopped, whatever happened, before this returns.
    """
    with tempfile.TemporaryFile() as output:
        argv = ["qemu-nbd", "--read-only", "--persistent", "--format", image_format, "--socket", str(socket_path)]
        try:
            process = subprocess.Popen([*argv, "--", str(path)], stdin=subprocess.DEVNULL, stdout=output, stderr=output)
        except FileNotFoundError as exc:
            raise error("qemu-nbd is not installed (Debian package qemu-utils)") from exc

        def errors() -> str:
            output.seek(0)
            return output.read().decode(errors="replace")

        try:
            if on_started is not None:
                on_started(process.pid)
            client = connect_when_served(
                process, socket_path, path, errors=errors, block_status=block_status, timeout=timeout, error=error
            )
            with client:
                yield client
        finally:
            stop_child(process)


@contextmanager
def read_only_client(
    path: Path, *, image_format: str = "qcow2", block_status: bool = False, timeout: float = 15
) -> Iterator[NBDClient]:
    """An NBD client of a private ``qemu-nbd --read-only`` serving the image (its backing chain) on a Unix socket."""
    with tempfile.TemporaryDirectory(prefix="vmferry-ro-") as tmp:
        with serve_read_only(
            path, Path(tmp) / "nbd.sock", image_format=image_format, block_status=block_status, timeout=timeout
        ) as client:
            yield client


def scan_image(
    path: Path,
    *,
    image_format: str = "qcow2",
    whole_sha256: bool = True,
    digest_block_size: int | None = None,
    timeout: float = 3600,
) -> ImageScan:
    """Read an image (its whole backing chain) once, locally, and hash it: whole and/or per block.

    A private read-only qemu-nbd serves it (`read_only_client`); areas its block status reports as zeros
    are not read (their bytes still count in the sha256, from a zero buffer, and their blocks get the zero
    digest), so the cost follows the data, not the disk's size. Per-block digests are what the agent compares
    source blocks against (``common.digests``).
    """
    from common.nbd import NBDError

    if digest_block_size is not None and digest_block_size % 4096:
        raise ValueError(f"digest block size {digest_block_size} is not a multiple of 4096")
    chunk = _SCAN_CHUNK if digest_block_size is None else max(_SCAN_CHUNK // digest_block_size, 1) * digest_block_size
    deadline = time.monotonic() + timeout
    with read_only_client(path, image_format=image_format, block_status=True) as client:
        try:
            return _scan(client, chunk, whole_sha256, digest_block_size, deadline, path)
        except NBDError as exc:
            raise QemuError(f"reading {path} failed: {exc}") from exc


def _zero_extents(client: NBDClient, size: int) -> list[tuple[int, int]]:
    """(start, end) of the areas the server reports as reading zeros, merged."""
    from common.nbd import STATE_ZERO

    if not client.can_block_status:
        return []
    zeros: list[tuple[int, int]] = []
    pos = 0
    while pos < size:
        for offset, length, flags in client.block_status(pos, size - pos):
            if flags & STATE_ZERO:
                if zeros and zeros[-1][1] == offset:
                    zeros[-1] = (zeros[-1][0], offset + length)
                else:
                    zeros.append((offset, offset + length))
            pos = offset + length
    return zeros


def _scan(
    client: NBDClient, chunk: int, whole_sha256: bool, block: int | None, deadline: float, path: Path
) -> ImageScan:
    size = client.size
    whole = hashlib.sha256() if whole_sha256 else None
    digests = bytearray()
    zeros = _zero_extents(client, size)
    zero_chunk = bytes(chunk)
    zero_view = memoryview(zero_chunk)
    buffers = (bytearray(chunk), bytearray(chunk))
    positions = range(0, size, chunk)
    index = 0

    def fetch(number: int) -> tuple[memoryview, bool]:
        """Chunk ``number`` into its buffer (zero areas not read); runs while the chunk before it is hashed."""
        nonlocal index
        pos = positions[number]
        n = min(chunk, size - pos)
        while index < len(zeros) and zeros[index][1] <= pos:
            index += 1
        if index < len(zeros) and zeros[index][0] <= pos and zeros[index][1] >= pos + n:
            return zero_view[:n], True
        data = memoryview(buffers[number % 2])[:n]
        client.readinto(pos, data)
        return data, False

    # Reading (qemu-nbd's work and a socket receive) and hashing both release the GIL: one reads ahead while
    # the other hashes, so a scan takes about as long as the slower of the two, not their sum.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="scan-read") as reader:
        ahead = reader.submit(fetch, 0) if positions else None
        for number in range(len(positions)):
            if time.monotonic() > deadline:
                raise QemuError(f"scanning {path} took too long")
            assert ahead is not None
            data, known_zero = ahead.result()
            buf = buffers[number % 2]
            ahead = reader.submit(fetch, number + 1) if number + 1 < len(positions) else None
            if whole is not None:
                whole.update(data)
            if block is not None:
                for at in range(0, len(data), block):
                    end = min(at + block, len(data))
                    if known_zero or buf.startswith(zero_view[: end - at], at, end):
                        digests += zero_digest(end - at)
                    else:
                        digests += hashlib.sha256(data[at:end]).digest()
    return ImageScan(
        size=size,
        sha256=whole.hexdigest() if whole is not None else None,
        block_digests=TargetDigests(block, bytes(digests)) if block is not None else None,
    )


def content_sha256(path: Path, *, image_format: str = "qcow2", timeout: float = 3600) -> str:
    """sha256 of the guest-visible bytes of an image (its whole backing chain), streamed, no temp copy."""
    result = scan_image(path, image_format=image_format, timeout=timeout).sha256
    assert result is not None
    return result


def convert_image(source: Path, destination: Path, *, output_format: str, source_format: str = "qcow2") -> None:
    """Flatten an image (and its backing chain) into a new raw or qcow2 file, sparse where it can be."""
    if output_format not in ("raw", "qcow2"):
        raise ValueError(f"output format {output_format!r} must be raw or qcow2")
    _run(
        ["qemu-img", "convert", "-q", "-f", source_format, "-O", output_format, "--", str(source), str(destination)],
        timeout=24 * 3600,
    )
