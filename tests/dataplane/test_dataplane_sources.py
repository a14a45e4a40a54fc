"""Source readers (file, HTTP Range with and without TLS pinning, concatenation) and the VMDK parser."""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agent.dataplane import (
    ConcatSource,
    Extent,
    FileSource,
    HTTPRangeSource,
    SourceError,
    VmdkDescriptorError,
    copy_disk,
    parse_vmdk_descriptor,
)
from agent.dataplane.sources import ThumbprintMismatch, extent_url, open_vmdk_extents, resolve_extent_path

from .conftest import NBDServers, create_qcow2, images_identical, make_image

MiB = 1024 * 1024

# -- VMDK descriptors ---------------------------------------------------------------------------------------

VMFS_DESCRIPTOR = """# Disk DescriptorFile
version=1
encoding="UTF-8"
CID=fffffffe
parentCID=ffffffff
createType="vmfs"

# Extent description
RW 4192256 VMFS "web01_1-flat.vmdk"

# The Disk Data Base
#DDB

ddb.adapterType = "lsilogic"
ddb.thinProvisioned = "1"
ddb.uuid = "60 00 C2 9a 3d 4b 00 1e-5b 62 2f 3e 77 0b 8c 21"
"""

MONOLITHIC_FLAT = """# Disk DescriptorFile
version=1
CID=12345678
parentCID=ffffffff
createType="monolithicFlat"

RW 2097152 FLAT "disk-flat.vmdk" 0
"""

TWO_GB_EXTENTS = """createType="twoGbMaxExtentFlat"
RW 4192256 FLAT "big-f001.vmdk" 0
RW 4192256 FLAT "big-f002.vmdk" 0
RW 2048 ZERO
RDONLY 100 FLAT "shared.img" 2048
"""

DELTA_DESCRIPTOR = """# Disk DescriptorFile
version=1
CID=aaaaaaaa
parentCID=fffffffe
createType="vmfsSparse"
parentFileNameHint="web01_1.vmdk"
RW 4192256 VMFSSPARSE "web01_1-000001-delta.vmdk"
"""

SESPARSE_DESCRIPTOR = """createType="seSparse"
RW 4192256 SESPARSE "web01_1-000002-sesparse.vmdk"
"""


def test_parse_vmfs_descriptor():
    assert parse_vmdk_descriptor(VMFS_DESCRIPTOR) == [Extent("RW", 4192256, "VMFS", "web01_1-flat.vmdk")]
    assert parse_vmdk_descriptor(VMFS_DESCRIPTOR)[0].size_bytes == 4192256 * 512


def test_parse_monolithic_flat_bytes_with_nul_padding():
    text = (MONOLITHIC_FLAT.replace("\n", "\r\n")).encode() + b"\0" * 300
    assert parse_vmdk_descriptor(text) == [Extent("RW", 2097152, "FLAT", "disk-flat.vmdk", 0)]


def test_parse_multi_extent_with_zero_and_offset():
    extents = parse_vmdk_descriptor(TWO_GB_EXTENTS)
    assert [e.type for e in extents] == ["FLAT", "FLAT", "ZERO", "FLAT"]
    assert extents[2].filename is None
    assert extents[3] == Extent("RDONLY", 100, "FLAT", "shared.img", 2048)
    assert extents[3].offset_bytes == 2048 * 512


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (DELTA_DESCRIPTOR, "VMFSSPARSE extent .* is sparse"),
        (SESPARSE_DESCRIPTOR, "SESPARSE extent .* is sparse"),
        ('createType="monolithicSparse"\nRW 100 SPARSE "x.vmdk"\n', "SPARSE extent"),
        (b"KDMV\x01\x00\x00\x00" + bytes(100), "binary sparse VMDK"),
        ('RW 100 VMFSRDM "x-rdm.vmdk"\n', "raw device mapping"),
        ('RW 100 VMFSRAW "x-rdmp.vmdk"\n', "raw device mapping"),
        ('RW 100 WEIRD "x.vmdk"\n', "unknown extent type"),
        ('NOACCESS 100 FLAT "x.vmdk"\n', "NOACCESS"),
        ("RW 100 FLAT\n", "without a file name"),
        ('RW lots FLAT "x.vmdk"\n', "malformed extent line"),
        ("just some text\n", "no extent lines"),
        ('createType="vmfs"\n', r"no extent lines found.*createType=vmfs"),
    ],
)
def test_parse_rejects(text: str | bytes, message: str):
    with pytest.raises(VmdkDescriptorError, match=message):
        parse_vmdk_descriptor(text)


def test_extent_paths():
    assert resolve_extent_path("[ds1] web01/web01_1.vmdk", "web01_1-flat.vmdk") == "[ds1] web01/web01_1-flat.vmdk"
    assert resolve_extent_path("[ds1] top.vmdk", "top-flat.vmdk") == "[ds1] top-flat.vmdk"
    assert resolve_extent_path("/vmfs/volumes/ds1/a/a.vmdk", "a-flat.vmdk") == "/vmfs/volumes/ds1/a/a-flat.vmdk"
    assert resolve_extent_path("a/a.vmdk", "/abs/a-flat.vmdk") == "/abs/a-flat.vmdk"
    url = "https://vc.example/folder/web%2001/web01_1.vmdk?dcPath=DC1&dsName=ds%201"
    assert extent_url(url, "web01_1-flat.vmdk") == (
        "https://vc.example/folder/web%2001/web01_1-flat.vmdk?dcPath=DC1&dsName=ds%201"
    )


def test_open_vmdk_extents_concatenates_files(tmp_path: Path):
    (tmp_path / "big-f001.vmdk").write_bytes(b"a" * 1024)
    (tmp_path / "big-f002.vmdk").write_bytes(b"b" * 512)
    (tmp_path / "shared.img").write_bytes(b"x" * 512 + b"c" * 512)
    text = 'RW 2 FLAT "big-f001.vmdk" 0\nRW 1 FLAT "big-f002.vmdk" 0\nRW 2 ZERO\nRW 1 FLAT "shared.img" 1\n'
    source = open_vmdk_extents(
        parse_vmdk_descriptor(text), lambda name: FileSource(tmp_path / name), description="big.vmdk"
    )
    try:
        assert source.size == 6 * 512
        assert source.read(0, source.size) == b"a" * 1024 + b"b" * 512 + bytes(1024) + b"c" * 512
        assert source.read(1000, 100) == b"a" * 24 + b"b" * 76
        clone = source.clone()
        assert clone.read(1500, 100) == b"b" * 36 + bytes(64)
        clone.close()
        runs = source.allocation(0, source.size)
        assert runs is not None and (1536, 1024, True) in runs
    finally:
        source.close()


def test_concat_refuses_short_extent_file(tmp_path: Path):
    (tmp_path / "short.vmdk").write_bytes(b"a" * 100)
    src = FileSource(tmp_path / "short.vmdk")
    with pytest.raises(SourceError, match="needs 512 bytes"):
        ConcatSource([(src, 0, 512)], "x")
    src.close()


# -- local files --------------------------------------------------------------------------------------------


def test_file_source_reads_and_reports_holes(tmp_path: Path):
    path = tmp_path / "sparse.raw"
    with open(path, "wb") as f:
        f.truncate(8 * MiB)
        f.seek(2 * MiB)
        f.write(b"\x05" * MiB)
    with FileSource(path) as src:
        assert src.size == 8 * MiB
        assert src.read(2 * MiB - 2, 4) == b"\0\0\x05\x05"
        runs = src.allocation(0, 8 * MiB)
        assert runs == [(0, 2 * MiB, True), (2 * MiB, MiB, False), (3 * MiB, 5 * MiB, True)]
        with pytest.raises(ValueError, match="outside"):
            src.read(8 * MiB - 1, 2)
    with pytest.raises(SourceError, match="cannot open"):
        FileSource(tmp_path / "missing.raw")


# -- HTTP -----------------------------------------------------------------------------------------------------


class _RangeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    payload = b""
    honour_range = True
    failures_left = 0
    seen: list[tuple[str, str | None, str | None, str | None]] = []

    def log_message(self, format, *args):  # keep pytest output clean
        pass

    def _record(self) -> None:
        type(self).seen.append(
            (self.command, self.headers.get("Range"), self.headers.get("Cookie"), self.headers.get("X-Token"))
        )

    def do_HEAD(self):
        self._record()
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()

    def do_GET(self):
        self._record()
        if self.path.startswith("/flaky") and type(self).failures_left > 0:
            type(self).failures_left -= 1
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path.startswith("/missing"):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range") or "")
        if not match or not self.honour_range:
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.payload)))
            self.end_headers()
            self.wfile.write(self.payload)
            return
        first, last = int(match[1]), int(match[2])
        if first >= len(self.payload):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(self.payload)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        last = min(last, len(self.payload) - 1)
        body = self.payload[first : last + 1]
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {first}-{last}/{len(self.payload)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # refused TLS handshakes are expected here; do not print tracebacks from server threads


def _serve(handler: type[BaseHTTPRequestHandler], context: ssl.SSLContext | None = None):
    server = _QuietServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


@pytest.fixture
def http_payload() -> Iterator[tuple[str, type[_RangeHandler]]]:
    handler = type("Handler", (_RangeHandler,), {"payload": os.urandom(3 * MiB + 123), "seen": []})
    server = _serve(handler)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_http_range_reads_with_headers_and_cookies(http_payload):
    base, handler = http_payload
    url = f"{base}/folder/vm/vm-flat.vmdk?dcPath=DC1&dsName=ds1"
    with HTTPRangeSource(url, headers={"X-Token": "t0k"}, cookies={"vmware_soap_session": "abc"}) as src:
        assert src.size == len(handler.payload)
        assert src.read(0, 10) == handler.payload[:10]
        assert src.read(MiB - 5, 2 * MiB) == handler.payload[MiB - 5 : 3 * MiB - 5]
        assert src.read(src.size - 7, 7) == handler.payload[-7:]
        clone = src.clone()
        assert clone.read(5, 5) == handler.payload[5:10]
        clone.close()
        with pytest.raises(ValueError, match="outside"):
            src.read(src.size - 1, 2)
    assert handler.seen[0][0] == "HEAD"
    assert ("GET", f"bytes={MiB - 5}-{3 * MiB - 6}", "vmware_soap_session=abc", "t0k") in handler.seen
    assert "dcPath" not in src.description


def test_http_range_errors(http_payload):
    base, handler = http_payload
    with pytest.raises(SourceError, match="404"):
        HTTPRangeSource(f"{base}/missing", size=10).read(0, 10)
    src = HTTPRangeSource(f"{base}/x", size=len(handler.payload) + 100)  # caller's size is wrong
    with pytest.raises(SourceError, match=r"416.*shorter"):
        src.read(len(handler.payload) + 10, 10)
    handler.failures_left = 2
    with HTTPRangeSource(f"{base}/flaky", size=len(handler.payload), retries=2) as flaky:
        assert flaky.read(0, 10) == handler.payload[:10]  # two 503s, then success
    handler.failures_left = 5
    with HTTPRangeSource(f"{base}/flaky", size=len(handler.payload), retries=1) as flaky:
        with pytest.raises(SourceError, match="503"):
            flaky.read(0, 10)
    handler.honour_range = False
    with pytest.raises(SourceError, match="ignored the Range header"):
        src.read(0, 10)
    src.close()


def test_copy_disk_from_http(tmp_path: Path, nbd_servers: NBDServers):
    image = make_image(tmp_path / "src.raw", 16 * MiB, seed=42)
    handler = type("Handler", (_RangeHandler,), {"payload": image.path.read_bytes(), "seen": []})
    server = _serve(handler)
    try:
        target = create_qcow2(tmp_path / "t.qcow2", image.size)
        nbd = nbd_servers.start(target)
        result = copy_disk(f"http://127.0.0.1:{server.server_address[1]}/d-flat.vmdk", nbd.url, block_size=MiB)
        nbd.stop()
    finally:
        server.shutdown()
        server.server_close()
    assert result.bytes_written == image.data_bytes
    assert images_identical(image.path, target)


def test_http_range_body_lands_in_the_buffer_over_one_connection(http_payload):
    """Range bodies are read straight into the caller's buffer over one kept-alive connection, and a
    connection the server closed is replaced without the caller noticing."""
    base, handler = http_payload
    ports: list[int] = []
    original = handler.do_GET

    def do_get(self):
        ports.append(self.client_address[1])
        original(self)
        if len(ports) == 3:
            self.close_connection = True  # the server drops the kept-alive connection after the third GET

    handler.do_GET = do_get
    with HTTPRangeSource(f"{base}/d-flat.vmdk", size=len(handler.payload)) as src:
        buf = bytearray(2 * MiB)
        for offset in (0, 7, MiB + 1, 3):
            src.readinto(offset, buf)
            assert buf == handler.payload[offset : offset + 2 * MiB]
        assert src._fast is not None and src._fast._sock is not None  # the direct reader did the work
    assert len(ports) == 4 and len(set(ports[:3])) == 1 and ports[3] != ports[0]


# -- TLS thumbprint pinning -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> tuple[Path, Path, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "esxi-lab.local")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    d = tmp_path_factory.mktemp("tls")
    cert_path, key_path = d / "cert.pem", d / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    sha1 = hashlib.sha1(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    return cert_path, key_path, ":".join(sha1[i : i + 2] for i in range(0, 40, 2))


def test_https_thumbprint_pinning(tls_files):
    cert_path, key_path, thumbprint = tls_files
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    handler = type("Handler", (_RangeHandler,), {"payload": os.urandom(100_000), "seen": []})
    server = _serve(handler, context)
    url = f"https://127.0.0.1:{server.server_address[1]}/folder/x-flat.vmdk"
    try:
        with HTTPRangeSource(url, thumbprint=thumbprint, cookies={"vmware_soap_session": "s"}) as src:
            assert src.read(1000, 50) == handler.payload[1000:1050]
        with HTTPRangeSource(url, thumbprint=thumbprint.replace(":", "").lower(), size=100_000) as src:
            assert src.read(0, 5) == handler.payload[:5]
        requests_so_far = len(handler.seen)

        wrong = "00:" + thumbprint[3:]
        with pytest.raises(ThumbprintMismatch, match="not the pinned one"):
            HTTPRangeSource(url, thumbprint=wrong, cookies={"vmware_soap_session": "s"})
        assert len(handler.seen) == requests_so_far  # the cookie never reached the impostor

        # With the size known there is no HEAD: the direct range reader checks the pin before sending a byte.
        with HTTPRangeSource(url, thumbprint=wrong, size=100_000, cookies={"vmware_soap_session": "s"}) as src:
            with pytest.raises(ThumbprintMismatch, match="not the pinned one"):
                src.read(0, 5)
        assert len(handler.seen) == requests_so_far

        with pytest.raises(SourceError):  # self-signed: the default CA check refuses it
            HTTPRangeSource(url, retries=0)
        with HTTPRangeSource(url, retries=0, size=100_000) as src, pytest.raises(SourceError):
            src.read(0, 5)
        with pytest.raises(ValueError, match="thumbprint"):
            HTTPRangeSource(url, thumbprint="zz:zz")
    finally:
        server.shutdown()
        server.server_close()
