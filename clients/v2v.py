"""Preparing a guest's OS disk for KVM with Debian's virt-v2v-in-place. Knows nothing of Prefect or the catalog.

virt-v2v-in-place inspects the disk in libguestfs's appliance, installs virtio drivers and rebuilds the initramfs
(Linux), injects virtio-win drivers (Windows, from the directory in $VIRTIO_WIN), removes VMware tools, and writes
the changes into the disk itself. Its appliance runs under TCG when KVM is not usable here (nested KVM).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clients.qemu_boot import choose_accel

V2V_IN_PLACE = "virt-v2v-in-place"
# "[  12.3] Inspecting the source" - virt-v2v's stage lines; the count is what progress is measured in.
_STAGE = re.compile(r"^\[\s*(\d+\.\d+)\]\s+(.+)$")
EXPECTED_STAGES = ("Setting up the source", "Opening the source", "Inspecting the source", "Checking for sufficient",
                   "Converting", "Mapping filesystem", "Closing", "Finishing off")  # fmt: skip
NO_OS = "inspection could not detect the source guest"
GPT_ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"


class PreparationFailed(Exception):
    """virt-v2v-in-place failed on a guest it recognised; the message quotes its own error."""


@dataclass(frozen=True)
class Preparation:
    prepared: bool
    reason: str  # what was done, or why nothing was
    seconds: float
    log: str


def nothing_boots_from(disk: Path) -> str | None:
    """Why no firmware could boot ``disk`` (then there is nothing to prepare), or None when something might.

    BIOS boots the code in the first 440 bytes; UEFI boots from an EFI system partition (whose disk often has no
    MBR code). A disk with neither is a data disk whatever its name says.
    """
    with open(disk, "rb") as handle:
        head = handle.read(512 + 512 + 128 * 128)
    if len(head) < 512:
        return "the OS disk is smaller than one sector"
    if any(head[:440]):
        return None
    if head[512:520] == b"EFI PART":
        entries = head[1024:]
        esp = bytes.fromhex(GPT_ESP.replace("-", ""))
        # GPT stores the first three GUID fields little-endian
        esp_le = esp[3::-1] + esp[5:3:-1] + esp[7:5:-1] + esp[8:]
        if any(entries[i : i + 16] == esp_le for i in range(0, len(entries), 128)):
            return None
        return "the OS disk has GPT but no EFI system partition and no boot code: nothing on it can boot"
    return "the OS disk has no boot code in its MBR and no GPT: nothing on it can boot"


def prepare_for_kvm(
    disk: Path,
    *,
    disk_format: str = "raw",
    virtio_win: Path | None = None,
    on_stage: Callable[[int, str], None] | None = None,
    timeout_s: float = 1800,
) -> Preparation:
    """Run virt-v2v-in-place on ``disk`` (a file or block device, changed in place).

    Returns prepared=False with the reason when there is nothing to prepare (no bootable content, or an OS that
    inspection does not recognise); raises PreparationFailed when the conversion itself fails.
    """
    started = time.monotonic()
    why_not = nothing_boots_from(disk)
    if why_not:
        return Preparation(False, why_not, 0.0, "")
    env = dict(os.environ)
    accel, _ = choose_accel()
    if accel == "tcg":
        env["LIBGUESTFS_BACKEND_SETTINGS"] = "force_tcg"
    env.setdefault("LIBGUESTFS_BACKEND", "direct")
    if virtio_win is not None:
        if not virtio_win.is_dir():
            raise PreparationFailed(f"virtio-win driver directory {virtio_win} does not exist")
        env["VIRTIO_WIN"] = str(virtio_win)
    argv = [V2V_IN_PLACE, "-i", "disk", "-if", disk_format, str(disk)]
    lines: list[str] = []
    stages = 0
    try:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
    except FileNotFoundError as exc:
        raise PreparationFailed(f"{V2V_IN_PLACE} is not installed (Debian package virt-v2v)") from exc
    assert process.stdout is not None
    with process:
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            match = _STAGE.match(line.strip())
            if match and on_stage is not None:
                stages += 1
                on_stage(stages, match.group(2))
            if time.monotonic() - started > timeout_s:
                process.kill()
                raise PreparationFailed(f"{V2V_IN_PLACE} on {disk} took more than {timeout_s:.0f} s")
    log = "\n".join(lines)
    seconds = time.monotonic() - started
    if process.returncode != 0:
        if NO_OS in log:
            return Preparation(False, f"virt-v2v-in-place found no operating system it can convert ({NO_OS})",
                               seconds, log)  # fmt: skip
        errors = [line for line in lines if "error:" in line]
        raise PreparationFailed(f"{V2V_IN_PLACE} on {disk} failed ({process.returncode}): {' '.join(errors[-3:])}")
    return Preparation(True, "virtio drivers and initramfs prepared by virt-v2v-in-place", seconds, log)
