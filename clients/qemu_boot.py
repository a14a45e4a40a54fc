"""Booting disks in qemu-system-x86_64: no network, serial console and firmware log to files, QMP for screendumps.

Knows nothing of Prefect or of the catalog. Used by ``verify --boot`` (a restore point's chain behind a throw-away
overlay) and by the lab's CloudStack hypervisor (a VM's volumes as KVM shows them: virtio disks with serials).

KVM is used only when a short probe boot gets through the kernel's early boot: on nested machines /dev/kvm can
exist while qemu aborts (``failed to set MSR``) or the kernel hangs after "Probing EDD". TCG is the fallback.
"""

from __future__ import annotations

import base64
import json
import os
import platform
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

QEMU_SYSTEM = "qemu-system-x86_64"
# Messages SeaBIOS writes to its debug port when no disk hands over to a boot loader.
FIRMWARE_FAILURES = ("Boot failed", "No bootable device", "not a bootable disk")
FIRMWARE_HANDOVER = "Booting from Hard Disk"
# How far the kernel must get in a probe boot: past "Probing EDD" (where broken nested KVM hangs) to its own
# panic for want of a root filesystem, or to running an init.
_PROBE_REACHED = re.compile(r"Kernel panic|VFS: |Run /init|Freeing unused kernel")
_PROBE_TIMEOUT = 15.0
_accel_memo: dict[str, str] = {}


class BootError(Exception):
    """qemu could not be started or driven; the message quotes its own error output."""


@dataclass(frozen=True)
class BootDisk:
    """One disk of a boot: a file, its format, and what the guest sees (a virtio-blk disk with this serial)."""

    path: Path
    format: str = "raw"
    serial: str | None = None
    read_only: bool = False


@dataclass
class QemuVM:
    """A running qemu: its pid and command line (to never signal a recycled pid), console, firmware log, QMP."""

    process: subprocess.Popen[bytes]
    accel: str
    console: Path
    firmware_log: Path
    qmp_socket: Path
    argv: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def console_text(self) -> str:
        return self.console.read_text(errors="replace") if self.console.exists() else ""

    def firmware_text(self) -> str:
        return self.firmware_log.read_text(errors="replace") if self.firmware_log.exists() else ""

    def running(self) -> bool:
        return self.process.poll() is None

    def wait_for(self, pattern: re.Pattern[str], timeout: float, *, give_up_on_firmware_failure: bool = True) -> bool:
        """True once ``pattern`` appears on the console; False on timeout, exit, or (by default) when the firmware
        reports it found nothing to boot, so a dead disk does not cost the whole timeout."""
        deadline = time.monotonic() + timeout
        while True:
            if pattern.search(self.console_text()):
                return True
            if give_up_on_firmware_failure and firmware_failure(self.firmware_text()):
                return False
            if not self.running() or time.monotonic() >= deadline:
                return bool(pattern.search(self.console_text()))
            time.sleep(0.2)

    def screendump(self, out: Path) -> Path:
        """The screen as PNG, through QMP ``screendump`` (qemu writes PPM; converted here, no imaging library)."""
        ppm = out.with_suffix(".ppm")
        ppm.unlink(missing_ok=True)
        qmp_command(self.qmp_socket, "screendump", {"filename": str(ppm)})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            # qemu answers before the file is complete on some versions: wait until it parses
            try:
                png = ppm_to_png(ppm.read_bytes())
                break
            except (OSError, ValueError):
                time.sleep(0.1)
        else:
            raise BootError(f"qemu wrote no readable screendump to {ppm}")
        out.write_bytes(png)
        ppm.unlink(missing_ok=True)
        return out

    def stop(self, timeout: float = 5) -> None:
        if self.process.poll() is not None:
            shutil.rmtree(self.qmp_socket.parent, ignore_errors=True)
            return
        try:
            qmp_command(self.qmp_socket, "quit", {})
        except (BootError, OSError):
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.qmp_socket.parent, ignore_errors=True)


def firmware_failure(firmware_log: str) -> str | None:
    """The firmware's own words when it found no disk to hand over to, else None."""
    for line in firmware_log.splitlines():
        if any(text in line for text in FIRMWARE_FAILURES):
            return line.strip()
    return None


def qemu_available() -> bool:
    return shutil.which(QEMU_SYSTEM) is not None


def _qemu_version() -> str:
    try:
        out = subprocess.run([QEMU_SYSTEM, "--version"], capture_output=True, text=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        raise BootError(f"{QEMU_SYSTEM} is not usable ({exc}); install Debian's qemu-system-x86") from exc
    return out.stdout.splitlines()[0] if out.stdout else "unknown"


def default_probe_kernel() -> Path | None:
    """The running kernel's image, if readable: a probe needs a kernel, and one that runs here is at hand."""
    for candidate in (Path("/boot") / f"vmlinuz-{platform.release()}", Path("/vmlinuz")):
        if candidate.is_file() and os.access(candidate, os.R_OK):
            return candidate
    return None


def probe_kvm(kernel: Path, workdir: Path, timeout: float = _PROBE_TIMEOUT) -> tuple[bool, str]:
    """Boot ``kernel`` with KVM and no root filesystem; usable when it reaches its own panic in time."""
    workdir.mkdir(parents=True, exist_ok=True)
    console = workdir / "kvm-probe.console"
    argv = [
        QEMU_SYSTEM, "-accel", "kvm", "-cpu", "host", "-m", "256", "-nodefaults", "-display", "none",
        "-no-reboot", "-nic", "none", "-serial", f"file:{console}",
        "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1 loglevel=7",
    ]  # fmt: skip
    console.unlink(missing_ok=True)
    started = time.monotonic()
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while time.monotonic() - started < timeout:
            text = console.read_text(errors="replace") if console.exists() else ""
            if _PROBE_REACHED.search(text):
                return True, f"a probe boot reached the kernel's panic in {time.monotonic() - started:.1f} s"
            if process.poll() is not None:
                err = process.stderr.read().decode(errors="replace").strip() if process.stderr else ""
                return False, f"qemu exited {process.returncode} under KVM: {err[-300:]}"
            time.sleep(0.2)
        return False, f"a KVM probe boot did not get through early boot in {timeout:.0f} s"
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        if process.stderr:
            process.stderr.close()


def choose_accel(kernel: Path | None = None, cache_dir: Path | None = None) -> tuple[str, str]:
    """("kvm" | "tcg", why). $VMFERRY_QEMU_ACCEL forces one; else KVM only when /dev/kvm opens and a probe boot
    works. The verdict is cached per qemu version and host kernel (a probe costs up to 15 s under broken KVM)."""
    forced = os.environ.get("VMFERRY_QEMU_ACCEL", "").strip().lower()
    if forced in ("kvm", "tcg"):
        return forced, f"forced by VMFERRY_QEMU_ACCEL={forced}"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg", "/dev/kvm is missing or not accessible"
    probe_kernel = kernel or default_probe_kernel()
    if probe_kernel is None:
        return "tcg", "no kernel to probe KVM with"
    key = f"{_qemu_version()}|{platform.release()}|{probe_kernel}"
    if key in _accel_memo:
        return _accel_memo[key], "probed earlier in this process"
    cache = (cache_dir or Path(platformdirs.user_cache_dir("vmferry"))) / "qemu-accel.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict) and known.get("key") == key and known.get("accel") in ("kvm", "tcg"):
        _accel_memo[key] = known["accel"]
        return known["accel"], f"cached probe: {known.get('why', '')}"
    ok, why = probe_kvm(probe_kernel, cache.parent / "kvm-probe")
    accel = "kvm" if ok else "tcg"
    _accel_memo[key] = accel
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"key": key, "accel": accel, "why": why}))
    tmp.replace(cache)
    return accel, why


def start_vm(
    disks: Sequence[BootDisk],
    workdir: Path,
    *,
    accel: str,
    memory_mib: int = 256,
    cpus: int = 1,
    kernel: Path | None = None,
    initrd: Path | None = None,
    append: str | None = None,
    no_reboot: bool = False,
) -> QemuVM:
    """Start qemu with ``disks`` as virtio-blk devices in the given order (the first one boots), no network.

    The console goes to ``workdir/console.log``, SeaBIOS's debug port to ``workdir/firmware.log``; QMP listens on
    a socket in a private temporary directory. Disk paths go to qemu inside ``-blockdev`` JSON argv elements.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    console, firmware = workdir / "console.log", workdir / "firmware.log"
    for stale in (console, firmware):
        stale.unlink(missing_ok=True)
    # a unix socket path must stay under 108 bytes: a private short directory, not the (deep) workdir
    qmp = Path(tempfile.mkdtemp(prefix="vmferry-qmp-")) / "qmp.sock"
    argv = [
        QEMU_SYSTEM, "-accel", accel, "-m", str(memory_mib), "-smp", str(cpus),
        "-nodefaults", "-no-user-config", "-display", "none", "-vga", "std", "-nic", "none",
        "-chardev", f"file,id=console,path={console}", "-serial", "chardev:console",
        "-chardev", f"file,id=firmware,path={firmware}", "-device", "isa-debugcon,iobase=0x402,chardev=firmware",
        "-qmp", f"unix:{qmp},server=on,wait=off",
    ]  # fmt: skip
    if accel == "kvm":
        argv += ["-cpu", "host"]
    if no_reboot:
        argv.append("-no-reboot")  # a guest that resets (triple fault) ends qemu instead of looping
    for index, disk in enumerate(disks):
        node = {
            "driver": disk.format,
            "node-name": f"disk{index}",
            "read-only": disk.read_only,
            "file": {"driver": "file", "filename": str(disk.path), "read-only": disk.read_only},
        }
        device = f"virtio-blk-pci,drive=disk{index},addr={0x10 + index:#x}"
        if disk.serial:
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,20}", disk.serial):
                raise BootError(f"disk serial {disk.serial!r} is not 1-20 letters, digits, '_' or '-'")
            device += f",serial={disk.serial}"
        if index == 0:
            device += ",bootindex=0"
        argv += ["-blockdev", json.dumps(node), "-device", device]
    if kernel is not None:
        argv += ["-kernel", str(kernel)]
        if initrd is not None:
            argv += ["-initrd", str(initrd)]
        if append:
            argv += ["-append", append]
    log = workdir / "qemu.log"
    with open(log, "wb") as err:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True)
    vm = QemuVM(process, accel, console, firmware, qmp, argv)
    deadline = time.monotonic() + 10
    while not qmp.exists():
        if process.poll() is not None:
            shutil.rmtree(qmp.parent, ignore_errors=True)
            raise BootError(f"qemu exited {process.returncode}: {log.read_text(errors='replace')[-1000:]}")
        if time.monotonic() > deadline:
            vm.stop()
            raise BootError(f"qemu did not open its QMP socket in 10 s: {log.read_text(errors='replace')[-1000:]}")
        time.sleep(0.05)
    return vm


def qmp_command(path: Path, command: str, arguments: dict[str, object], timeout: float = 10) -> dict[str, object]:
    """One QMP command on a fresh connection (capabilities negotiated first); returns its ``return``."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            reader = sock.makefile("rb")
            json.loads(reader.readline())  # greeting
            for message in ({"execute": "qmp_capabilities"}, {"execute": command, "arguments": arguments}):
                sock.sendall(json.dumps(message).encode() + b"\n")
                while True:
                    line = reader.readline()
                    if not line:
                        if message["execute"] == "quit":
                            return {}
                        raise BootError(f"qemu closed QMP during {message['execute']}")
                    answer = json.loads(line)
                    if "event" in answer:
                        continue
                    if "error" in answer:
                        raise BootError(f"QMP {message['execute']}: {answer['error'].get('desc')}")
                    break
            result: dict[str, object] = answer.get("return") or {}
            return result
    except (OSError, ValueError) as exc:
        if command == "quit" and isinstance(exc, ConnectionResetError):
            return {}
        raise BootError(f"QMP {command} on {path}: {exc}") from exc


def create_overlay(base: Path, base_format: str, overlay: Path) -> Path:
    """A throw-away qcow2 on top of ``base``: the guest's writes land here, the base is opened read-only."""
    overlay.unlink(missing_ok=True)
    argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", base_format, "-b", str(base.resolve()), str(overlay)]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BootError(f"qemu-img create overlay on {base}: {proc.stderr.strip()}")
    return overlay


def ppm_to_png(data: bytes) -> bytes:
    """Binary PPM (P6, maxval 255) to PNG with zlib alone."""
    match = re.match(rb"P6\s+(?:#[^\n]*\n\s*)*(\d+)\s+(\d+)\s+(\d+)\s", data)
    if not match:
        raise ValueError("not a binary PPM")
    width, height, maxval = (int(g) for g in match.groups())
    if maxval != 255:
        raise ValueError(f"PPM maxval {maxval} is not 255")
    pixels = data[match.end() :]
    stride = width * 3
    if len(pixels) < stride * height:
        raise ValueError("PPM is truncated")
    raw = b"".join(b"\x00" + pixels[row * stride : (row + 1) * stride] for row in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()
