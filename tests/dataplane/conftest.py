"""Fixtures for the data path tests: real qemu-nbd servers on real qcow2 files, and test images.

Test-only helpers: the production qemu-nbd manager (port leases, pid files, catalog rows) lives elsewhere.
"""

from __future__ import annotations

import hashlib
import random
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

GRANULE = 64 * 1024


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class NBDServer:
    image: Path
    export: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"nbd://127.0.0.1:{self.port}/{self.export}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _wait_for_port(proc: subprocess.Popen[bytes], port: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"qemu-nbd did not listen on port {port} within {timeout} s")


def start_qemu_nbd(
    image: Path, *, export: str = "disk", fmt: str = "qcow2", shared: int = 8, read_only: bool = False
) -> NBDServer:
    for _attempt in range(5):
        port = free_port()
        log = image.with_name(f"{image.name}.qemu-nbd.{port}.log")
        argv = [
            "qemu-nbd",
            "--persistent",
            f"--shared={shared}",
            "-f",
            fmt,
            "-x",
            export,
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
        ]
        if read_only:
            argv.append("--read-only")
        argv.append(str(image))
        with open(log, "wb") as log_file:
            proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT)
        if _wait_for_port(proc, port):
            return NBDServer(image, export, port, proc, log)
        # Lost the race for the free port to someone else: try another one.
        proc.wait()
        if "Address already in use" not in log.read_text(errors="replace"):
            raise RuntimeError(f"qemu-nbd failed: {log.read_text(errors='replace')}")
    raise RuntimeError("could not start qemu-nbd on a free port")


@dataclass
class NBDServers:
    servers: list[NBDServer] = field(default_factory=list)

    def start(self, image: Path, **kwargs: object) -> NBDServer:
        server = start_qemu_nbd(image, **kwargs)  # type: ignore[arg-type]
        self.servers.append(server)
        return server

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture
def nbd_servers() -> Iterator[NBDServers]:
    servers = NBDServers()
    try:
        yield servers
    finally:
        servers.stop_all()


def qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=False)


def create_qcow2(path: Path, size: int) -> Path:
    result = qemu_img("create", "-q", "-f", "qcow2", str(path), str(size))
    assert result.returncode == 0, result.stderr
    return path


def images_identical(a: Path, b: Path) -> bool:
    result = qemu_img("compare", "-q", str(a), str(b))
    assert result.returncode in (0, 1), result.stderr
    return result.returncode == 0


def raw_sha256(image: Path, tmp_path: Path, fmt: str = "qcow2") -> str:
    out = tmp_path / f"{image.name}.sha-raw"
    result = qemu_img("convert", "-f", fmt, "-O", "raw", str(image), str(out))
    assert result.returncode == 0, result.stderr
    digest = file_sha256(out)
    out.unlink()
    return digest


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class SampleImage:
    path: Path
    size: int
    data_granules: set[int]

    @property
    def data_bytes(self) -> int:
        return len(self.data_granules) * GRANULE


def make_image(path: Path, size: int = 64 * 1024 * 1024, *, seed: int = 1, data_ratio: float = 0.45) -> SampleImage:
    """A raw image of 64 KiB granules, each all zeros or random data, with long runs of both kinds.

    Some data granules are zero except for one byte at the very end, so a zero check that stops early (or
    compares only a prefix) would wrongly skip them.
    """
    rng = random.Random(seed)
    n = size // GRANULE
    data: set[int] = set()
    i = 0
    while i < n:
        run = rng.choice([1, 1, 2, 3, 4, 8, 16, 32])
        if rng.random() < data_ratio:
            data.update(range(i, min(i + run, n)))
        i += run
    with open(path, "wb") as f:
        f.truncate(size)
        for g in sorted(data):
            f.seek(g * GRANULE)
            if g % 7 == 0:
                f.write(bytes(GRANULE - 1) + bytes([g % 255 + 1]))
            else:
                f.write(rng.randbytes(GRANULE))
        # A distinct first sector per seed lets tests tell images apart.
        f.seek(0)
        f.write(f"vmferry test image seed={seed}".encode().ljust(512, b"#"))
    data.add(0)
    return SampleImage(path, size, data)


@pytest.fixture
def image(tmp_path: Path) -> SampleImage:
    return make_image(tmp_path / "source.raw")
