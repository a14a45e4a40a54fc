"""Failover proven from inside the guest: the simulator really runs the VM it starts (lab option boot_vms), and
the lab guest reports which disk it booted from and what it finds on every disk.

Each boot is bounded by infra.lab.guest.BOOT_TIMEOUT_S (TCG on this machine: about 10-30 s).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from pathlib import Path

import pytest

from catalog.inventory import find_vm
from flows.cleanup import cleanup_failover
from flows.failover import failover_vm
from flows.replicate import replicate_vm
from infra.lab.cloudstack import CloudStackSimulator
from infra.lab.cloudstack.cloud import Cloud
from infra.lab.guest import BOOT_REPORT_DONE, BOOT_TIMEOUT_S, GuestReport, parse_report, seed_guest_vm

pytestmark = pytest.mark.usefixtures("prefect_backend", "nbd_port_range")


@pytest.fixture
def cloudstack_sim(tmp_path: Path):
    """The simulator with its KVM host: VMs it starts run in qemu."""
    with CloudStackSimulator(tmp_path / "cloudstack", job_delay=0.02, boot_vms=True) as sim:
        yield sim


def wait_for_guest(sim: CloudStackSimulator, vm_id: str) -> GuestReport:
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    console = ""
    while time.monotonic() < deadline:
        console = sim.vm_console(vm_id)
        if BOOT_REPORT_DONE.search(console):
            return parse_report(console)
        time.sleep(0.5)
    raise AssertionError(f"guest of VM {vm_id} said nothing conclusive in {BOOT_TIMEOUT_S:.0f} s:\n{console[-2000:]}")


def sha(path: Path, size: int) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read(size)).hexdigest()


def test_failed_over_guest_boots_from_its_os_disk_and_sees_its_data_disks_in_source_order(
    lab, cloudstack_sim, cloudstack_block, agent_block, lab_vcenter_block, configured_catalog, tmp_path
):
    name = f"guest-{uuid.uuid4().hex[:8]}"
    images = seed_guest_vm(lab.vcenter, lab.workdir, name, data_disks=3)
    replicate_vm(name, cloudstack_block, agent_block, lab_vcenter_block)
    # the busybox guest has no distribution for virt-v2v to convert: tests/failover/test_guest_prep.py covers that
    result = failover_vm(name, cloudstack_block, prepare_guest=False)

    report = wait_for_guest(cloudstack_sim, result.destination_vm_id)
    serials = [Cloud.serial_of(d.volume_id) for d in result.devices]
    assert report.booted, report
    assert report.boot_serial == serials[0]  # booted from the OS volume, device 0
    # every disk the guest sees, in its own enumeration order: the source's disks, in source order
    assert [(d.serial, d.label, d.marker, d.os) for d in report.disks] == [
        (serial, disk.label, disk.marker, disk.os) for serial, disk in zip(serials, images.disks, strict=True)
    ]
    vm = find_vm(configured_catalog, name)
    assert [d.disk_id for d in result.devices] == [d.disk_id for d in vm.present_disks()]

    cleanup_failover(name, cloudstack_block)
    assert cloudstack_sim.cloud.hypervisor is not None
    assert cloudstack_sim.cloud.hypervisor.vm(result.destination_vm_id) is None  # its qemu is gone
    for device, disk in zip(result.devices, images.disks, strict=True):  # the guest wrote nothing
        assert sha(cloudstack_sim.volume_file(device.volume_id), disk.size_bytes) == sha(disk.path, disk.size_bytes)
