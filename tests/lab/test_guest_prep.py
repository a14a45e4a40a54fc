"""Guest preparation for real: a tiny Debian whose initramfs has no virtio drivers (infra/lab/guest_debian.py) does
not boot on the CloudStack simulator's KVM VM (virtio disks with serials); after virt-v2v-in-place it does.

The slowest test here: each boot is bounded by DEBIAN_BOOT_TIMEOUT_S; virt-v2v-in-place under TCG took 6 min on a
loaded 2-core machine. The guest itself is built once per machine (about 8 minutes, cached).
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

from clients.v2v import prepare_for_kvm
from infra.lab.cloudstack.cloud import Cloud
from infra.lab.cloudstack.hypervisor import QemuHypervisor, VMDisk
from infra.lab.guest import parse_report
from infra.lab.guest_debian import debian_guest_image

DEBIAN_BOOT_TIMEOUT_S = 240.0
OUTCOME = re.compile(r"VMFERRY-GUEST-BOOTED|Gave up waiting for root file system device")


def boot(hypervisor: QemuHypervisor, disk: VMDisk) -> str:
    hypervisor.start("vm", [disk])
    try:
        deadline = time.monotonic() + DEBIAN_BOOT_TIMEOUT_S
        while not OUTCOME.search(hypervisor.console("vm")) and time.monotonic() < deadline:
            time.sleep(0.5)
        return hypervisor.console("vm")
    finally:
        hypervisor.stop("vm")


def test_a_guest_without_virtio_drivers_boots_on_kvm_only_after_preparation(tmp_path: Path) -> None:
    os_disk = tmp_path / "os.raw"
    subprocess.run(["cp", "--sparse=always", str(debian_guest_image()), str(os_disk)], check=True)
    disk = VMDisk(0, os_disk, Cloud.serial_of("5c3b2a10-7d4e-4f8a-9b1c-2d3e4f5a6b7c"))
    hypervisor = QemuHypervisor(tmp_path / "vms", memory_mib=512)

    before = boot(hypervisor, disk)
    assert "Gave up waiting for root file system device" in before, before[-2000:]
    assert not parse_report(before).booted

    stages: list[str] = []
    outcome = prepare_for_kvm(os_disk, on_stage=lambda number, text: stages.append(text))
    assert outcome.prepared, outcome.log[-3000:]
    assert any(text.startswith("Converting") for text in stages) and "Finishing off" in stages

    after = boot(hypervisor, disk)
    report = parse_report(after)
    assert report.booted, after[-2000:]
    assert report.boot_serial == disk.serial and [d.label for d in report.disks] == ["vmfroot"]
