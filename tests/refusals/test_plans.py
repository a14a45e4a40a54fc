"""Refusals of the pure planners: the failover's devices and NICs, the backup's chain."""

from __future__ import annotations

import pytest

from catalog.inventory import RecordedDisk, RecordedNic, RecordedVM
from catalog.replication import COMPLETE, UNKNOWN, VolumeView
from tests.refusals.conftest import assert_refusal
from vmferry.backup_plan import BackupRefused, plan_backup
from vmferry.failover_plan import FailoverRefused, check_attached, plan_attachments
from vmferry.network_plan import plan_nics
from vmferry.repository import Repository


def _disk(row: int, *, boot: bool = False) -> RecordedDisk:
    return RecordedDisk(
        vm_disk_id=row, disk_id=f"disk-{2000 + row}", device_key=2000 + row, controller_key=1000, bus="scsi",
        bus_number=0,
        unit_number=row, capacity_bytes=2**20, label=None, file_name=f"[ds] web01/web01_{row}.vmdk", present=True,
        generation=1, is_boot=boot, change="unchanged",
    )  # fmt: skip


def _vm(disks: list[RecordedDisk], nics: list[RecordedNic] | None = None) -> RecordedVM:
    return RecordedVM(
        vm_context_id=7, name="web01", instance_uuid="u-7", moref="vm-7", boot_disk_id=None, boot_disk_source=None,
        disks=disks, nics=nics or [],
    )  # fmt: skip


def _volume(disk: RecordedDisk, content: str = COMPLETE) -> VolumeView:
    return VolumeView(
        id=disk.vm_disk_id, vm_disk_id=disk.vm_disk_id, volume_id=f"vol-{disk.vm_disk_id}", zone_id="z",
        size_bytes=disk.capacity_bytes,
        disk_generation=1, state="detached", attached_vm_id=None, device_id=None, device_path=None,
        last_change_id=None, last_synced_at=None, content_state=content,
    )  # fmt: skip


def test_more_data_disks_than_the_destination_takes():
    disks = [_disk(0, boot=True), *(_disk(n) for n in range(1, 4))]
    with pytest.raises(FailoverRefused) as caught:
        plan_attachments(_vm(disks), {d.vm_disk_id: _volume(d) for d in disks}, max_data_disks=2)
    assert_refusal(caught.value, "'web01'", "3 data disks", "at most 2", "raise maxdatavolumeslimit")


def test_no_disks_in_the_catalog():
    with pytest.raises(FailoverRefused) as caught:
        plan_attachments(_vm([]), {}, max_data_disks=6)
    assert_refusal(caught.value, "'web01'", "no disks", "discover it again")


def test_a_disk_without_a_volume():
    disks = [_disk(0, boot=True), _disk(1)]
    with pytest.raises(FailoverRefused) as caught:
        plan_attachments(_vm(disks), {0: _volume(disks[0])}, max_data_disks=6)
    assert_refusal(caught.value, "'web01'", "disk-2001", "replicate first")


def test_a_volume_without_a_complete_copy():
    disks = [_disk(0, boot=True), _disk(1)]
    volumes = {0: _volume(disks[0]), 1: _volume(disks[1], UNKNOWN)}
    with pytest.raises(FailoverRefused) as caught:
        plan_attachments(_vm(disks), volumes, max_data_disks=6)
    assert_refusal(caught.value, "'web01'", "disk-2001", "replicate again first")


def test_no_recorded_os_disk():
    disks = [_disk(0), _disk(1)]
    with pytest.raises(FailoverRefused) as caught:
        plan_attachments(_vm(disks), {d.vm_disk_id: _volume(d) for d in disks}, max_data_disks=6)
    assert_refusal(caught.value, "'web01'", "no recorded OS disk", "set_boot_disk")


def test_devices_that_are_not_where_the_plan_put_them():
    disks = [_disk(0, boot=True), _disk(1)]
    plan = plan_attachments(_vm(disks), {d.vm_disk_id: _volume(d) for d in disks}, max_data_disks=6)
    with pytest.raises(FailoverRefused) as caught:
        check_attached(plan, {"vol-0": (0, "ROOT"), "vol-1": (2, "DATADISK")}, "web01")
    assert_refusal(caught.value, "'web01'", "disk-2001 (volume vol-1) is on device 2, planned 1", "fail over again")


def _nic(key: int, network: str, mac: str) -> RecordedNic:
    return RecordedNic(device_key=key, network=network, mac_address=mac, adapter="vmxnet3", label=None)


def test_a_static_ip_for_a_mac_the_vm_does_not_have():
    vm = _vm([], [_nic(4000, "prod", "00:50:56:00:00:01")])
    with pytest.raises(FailoverRefused) as caught:
        plan_nics(vm, {"prod": "net-a"}, {"00:50:56:00:00:99": "10.0.0.1"})
    assert_refusal(caught.value, "'web01'", "00:50:56:00:00:99", "nothing was created")


def test_a_network_without_a_cloudstack_network():
    vm = _vm([], [_nic(4000, "dmz", "00:50:56:00:00:01")])
    with pytest.raises(FailoverRefused) as caught:
        plan_nics(vm, {"prod": "net-a"})
    assert_refusal(caught.value, "'web01'", "'dmz'", "network_map")


def test_two_port_groups_on_one_cloudstack_network():
    vm = _vm([], [_nic(4000, "prod", "00:50:56:00:00:01"), _nic(4001, "prod2", "00:50:56:00:00:02")])
    with pytest.raises(FailoverRefused) as caught:
        plan_nics(vm, {"prod": "net-a", "prod2": "net-a"})
    assert_refusal(caught.value, "'web01'", "'prod' and 'prod2'", "Map them to different networks")


def test_an_incremental_backup_without_a_chain(tmp_path):
    with pytest.raises(BackupRefused) as caught:
        plan_backup(_vm([_disk(0, boot=True)]), "incremental", None, Repository(tmp_path, "repo"))
    assert_refusal(caught.value, "'web01'", "no previous restore point", "use kind=auto")
