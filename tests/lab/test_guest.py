"""The lab guest (infra/lab/guest.py) boots under qemu-system-x86_64 and reports its disks, within BOOT_TIMEOUT_S."""

from __future__ import annotations

import time
from pathlib import Path

from clients.qemu_boot import BootDisk, choose_accel, start_vm
from infra.lab.guest import BOOT_REPORT_DONE, BOOT_TIMEOUT_S, guest_kit, parse_report


def test_the_lab_guest_boots_from_its_os_disk_and_reports_every_disk(tmp_path: Path) -> None:
    from infra.lab.guest import build_guest

    images = build_guest(tmp_path, "boot1", data_disks=2)
    accel, why = choose_accel(guest_kit().kernel)  # KVM only if a probe boot gets through, else TCG
    assert accel in ("kvm", "tcg") and why
    serials = ["osdisk", "datadisk1", "datadisk2"]
    started = time.monotonic()
    vm = start_vm(
        [BootDisk(d.path, serial=s) for d, s in zip(images.disks, serials, strict=True)], tmp_path, accel=accel
    )
    try:
        assert vm.wait_for(BOOT_REPORT_DONE, BOOT_TIMEOUT_S), vm.console_text()[-2000:]
        seconds = time.monotonic() - started
        report = parse_report(vm.console_text())
        shot = vm.screendump(tmp_path / "screen.png")
    finally:
        vm.stop()
    assert seconds < BOOT_TIMEOUT_S
    assert report.booted and (report.boot_dev, report.boot_serial) == ("vda", "osdisk")
    assert [(d.dev, d.serial, d.label, d.marker, d.os) for d in report.disks] == [
        ("vda", "osdisk", "VMFERRY-OS", "boot1-os", True),
        ("vdb", "datadisk1", "VMFDATA1", "boot1-data1", False),
        ("vdc", "datadisk2", "VMFDATA2", "boot1-data2", False),
    ]
    assert shot.read_bytes().startswith(b"\x89PNG")
