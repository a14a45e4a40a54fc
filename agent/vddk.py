"""Reading a disk through VMware's VDDK with nbdkit's vddk plugin (production, where VDDK is installed).

VDDK is proprietary and not on this machine, so only the argv is built and tested here; the agent runs it
when its config says ``"reader": "vddk"``. The password goes through a 0600 file (``password=+FILE``), never
the command line, which other users can read in /proc.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.dataplane.sources import NBDSource, SourceError


@dataclass(frozen=True)
class VddkDisk:
    server: str
    user: str
    thumbprint: str
    vm_moref: str
    snapshot_moref: str
    file_name: str  # "[datastore] vm/vm.vmdk", as in the snapshot's disk backing
    libdir: Path = Path("/opt/vmware-vix-disklib-distrib")
    transports: tuple[str, ...] = ("nbdssl", "nbd")
    extra: dict[str, str] = field(default_factory=dict)


def vddk_argv(disk: VddkDisk, *, password_file: Path, socket_path: Path, pid_file: Path) -> list[str]:
    """``nbdkit`` serving one disk of one snapshot read-only on a unix socket."""
    argv = [
        "nbdkit",
        "--readonly",
        "--exit-with-parent",
        "--foreground",
        "--unix",
        str(socket_path),
        "--pidfile",
        str(pid_file),
        "vddk",
        f"libdir={disk.libdir}",
        f"server={disk.server}",
        f"user={disk.user}",
        f"password=+{password_file}",
        f"thumbprint={disk.thumbprint}",
        f"vm=moref={disk.vm_moref}",
        f"snapshot={disk.snapshot_moref}",
        f"transports={':'.join(disk.transports)}",
    ]
    argv += [f"{key}={value}" for key, value in sorted(disk.extra.items())]
    argv.append(f"file={disk.file_name}")
    return argv


class VddkReader:
    """Starts nbdkit-vddk for one disk and hands out an NBD source over its unix socket."""

    def __init__(self, disk: VddkDisk, password: str, *, timeout: float = 60.0) -> None:
        self.disk = disk
        self._dir = Path(tempfile.mkdtemp(prefix="vmferry-vddk-"))
        password_file = self._dir / "password"
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(password)
        self.socket_path = self._dir / "nbd.sock"
        argv = vddk_argv(disk, password_file=password_file, socket_path=self.socket_path, pid_file=self._dir / "pid")
        try:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except FileNotFoundError as exc:
            raise SourceError("nbdkit is not installed (Debian packages nbdkit and VMware's VDDK)") from exc
        deadline = time.monotonic() + timeout
        while not self.socket_path.exists():
            if self.process.poll() is not None:
                error = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise SourceError(f"nbdkit vddk for {disk.file_name} exited: {error.strip()}")
            if time.monotonic() > deadline:
                self.close()
                raise SourceError(f"nbdkit vddk for {disk.file_name} did not start within {timeout:.0f} s")
            time.sleep(0.05)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for path in self._dir.iterdir():
            path.unlink(missing_ok=True)
        self._dir.rmdir()


class _VddkSource(NBDSource):
    """The NBD source of one nbdkit-vddk; closing it also stops that nbdkit."""

    def __init__(self, reader: VddkReader) -> None:
        super().__init__(f"nbd+unix:///?socket={reader.socket_path}")
        self._reader = reader

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._reader.close()


def open_vddk_source(disk: VddkDisk, password: str) -> NBDSource:
    reader = VddkReader(disk, password)
    try:
        return _VddkSource(reader)
    except BaseException:
        reader.close()
        raise
