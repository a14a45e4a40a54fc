"""``verify --boot``: boot a restore point in qemu, read-only, and record whether the guest came up.

Every disk of the point is opened through a throw-away qcow2 overlay on its chain (the repository's files are
only read), the OS disk first and booting, the others after it in the VM's order; no network. The point passes
when the boot marker appears on the guest's serial console. For a guest without one (``boot_marker`` empty) it
passes when the firmware handed over to a boot loader and the guest still ran at the timeout. Either way a QMP
screendump is taken and recorded with the verdict as Prefect artifacts.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import platformdirs
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from catalog.inventory import RecordedVM
from catalog.restore_points import PointDiskView, PointView
from clients.qemu_boot import (
    FIRMWARE_HANDOVER,
    BootDisk,
    BootError,
    choose_accel,
    create_overlay,
    firmware_failure,
    png_data_uri,
    start_vm,
)
from common.names import boot_verify_artifact_key
from vmferry.repository import Repository

# What a Linux guest with a getty on its serial console prints; the lab guest prints it too.
DEFAULT_BOOT_MARKER = "login:"
DEFAULT_BOOT_TIMEOUT_S = 180.0


class BootVerdict(BaseModel):
    point_id: int
    booted: bool
    reason: str
    accel: str
    seconds: float
    boot_disk_id: str
    console_tail: str
    screenshot: str | None  # where the PNG was kept


def boot_order(point: PointView, vm: RecordedVM) -> list[PointDiskView]:
    """The point's disks with the VM's boot disk first, the rest in the VM's disk order."""
    boot_ids = {d.vm_disk_id for d in vm.disks if d.is_boot}
    order = {d.vm_disk_id: index for index, d in enumerate(vm.disks)}
    disks = sorted(point.disks, key=lambda d: (d.vm_disk_id not in boot_ids, order.get(d.vm_disk_id, len(order))))
    if not disks or disks[0].vm_disk_id not in boot_ids:
        raise ValueError(
            f"restore point {point.id} of VM {vm.name!r} has no disk recorded as its boot disk: "
            "set the VM's boot disk (vmferry status shows it) before verifying a boot"
        )
    return disks


def results_dir() -> Path:
    """Where screenshots are kept: $VMFERRY_BOOT_VERIFY_DIR or the per-user data directory."""
    override = os.environ.get("VMFERRY_BOOT_VERIFY_DIR")
    path = Path(override) if override else Path(platformdirs.user_data_dir("vmferry")) / "boot-verify"
    path.mkdir(parents=True, exist_ok=True)
    return path


@task(cache_policy=NO_CACHE, task_run_name="boot-point-{point.id}")
def boot_point(
    repository: Repository,
    point: PointView,
    vm: RecordedVM,
    boot_marker: str | None,
    timeout_s: float,
) -> BootVerdict:
    """One boot of the point behind overlays; the overlays go whatever happens."""
    logger = get_run_logger()
    disks = boot_order(point, vm)
    accel, why = choose_accel()
    logger.info("booting restore point %s of %s with %s (%s)", point.id, vm.name, accel, why)
    scratch = Path(tempfile.mkdtemp(prefix=f"vmferry-boot-{point.id}-"))
    shot = results_dir() / f"point-{point.id}-{int(time.time())}.png"
    try:
        overlays = [
            BootDisk(create_overlay(repository.absolute(d.file_path), "qcow2", scratch / f"{n}.qcow2"), "qcow2")
            for n, d in enumerate(disks)
        ]
        started = time.monotonic()
        qemu = start_vm(overlays, scratch / "run", accel=accel, no_reboot=True)
        try:
            marker = re.compile(re.escape(boot_marker)) if boot_marker else None
            if marker is not None:
                seen = qemu.wait_for(marker, timeout_s)
            else:
                seen = qemu.wait_for(re.compile(r"(?!x)x"), timeout_s)  # never matches: watch until the timeout
            seconds = time.monotonic() - started
            booted, reason = _judge(seen, boot_marker, qemu.firmware_text(), qemu.running(), timeout_s)
            screenshot: str | None = None
            if qemu.running():
                screenshot = str(qemu.screendump(shot))
            console = qemu.console_text()
        finally:
            qemu.stop()
    except BootError as exc:
        raise BootError(f"restore point {point.id} of {vm.name}: {exc}") from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return BootVerdict(
        point_id=point.id,
        booted=booted,
        reason=reason,
        accel=accel,
        seconds=round(seconds, 1),
        boot_disk_id=disks[0].disk_id,
        console_tail=console[-2000:],
        screenshot=screenshot,
    )


def _judge(seen: bool, marker: str | None, firmware: str, running: bool, timeout_s: float) -> tuple[bool, str]:
    failed = firmware_failure(firmware)
    if seen:
        return True, f"boot marker {marker!r} appeared on the serial console"
    if failed:
        return False, f"the firmware found nothing to boot: {failed}"
    if not running:
        return False, "the guest reset or powered off before it came up"
    if marker:
        return False, f"no boot marker {marker!r} on the serial console within {timeout_s:.0f} s"
    if FIRMWARE_HANDOVER not in firmware:
        return False, f"the firmware did not hand over to a boot loader within {timeout_s:.0f} s"
    return True, f"the firmware handed over to the boot loader and the guest still ran after {timeout_s:.0f} s"


def record_boot_verdict(verdict: BootVerdict) -> None:
    """The verdict and the screen as one markdown artifact (the PNG inline: artifacts hold no files)."""
    image = ""
    if verdict.screenshot and Path(verdict.screenshot).is_file():
        image = (
            f"\n\n![screen of restore point {verdict.point_id}]({png_data_uri(Path(verdict.screenshot).read_bytes())})"
        )
    console = verdict.console_tail.strip()[-1500:] or "(nothing)"
    create_markdown_artifact(
        key=boot_verify_artifact_key(verdict.point_id),
        markdown=(
            f"# Restore point {verdict.point_id}: {'boots' if verdict.booted else 'does NOT boot'}\n\n"
            f"{verdict.reason} ({verdict.accel}, {verdict.seconds} s; boot disk {verdict.boot_disk_id})\n\n"
            f"Serial console (end):\n\n```\n{console}\n```{image}"
        ),
        description=f"Boot verification of restore point {verdict.point_id}",
    )
