"""Replication into our CloudStack simulator: every volume holds exactly its own source disk."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from catalog.exports import exports_for_job
from catalog.inventory import find_vm
from catalog.replication import volumes_of_vm
from clients.cloudstack import CloudStackError
from flows.replicate import replicate_vm
from infra.lab.mutate import read_disk_bytes, write_disk_bytes
from tests.copy.helpers import assert_nothing_left
from tests.databases import CATALOG_BACKENDS

pytestmark = pytest.mark.usefixtures("prefect_backend", "nbd_port_range")


def volume_facts(path: Path, capacity: int) -> str:
    """sha256 of the disk-sized head of a volume; the rest of the (whole-GB) volume must hold no data."""
    with open(path, "rb") as handle:
        head = handle.read(capacity)
        try:
            data_at = os.lseek(handle.fileno(), capacity, os.SEEK_DATA)
        except OSError as exc:
            assert exc.errno == errno.ENXIO
        else:
            handle.seek(data_at)
            tail = handle.read()
            assert tail.count(0) == len(tail), f"data beyond the disk in {path}"
    return hashlib.sha256(head).hexdigest()


def never_written(path: Path) -> bool:
    """No data in the volume's file; a volume never attached is only a database row (Allocated), no file."""
    if not path.exists():
        return True
    with open(path, "rb") as handle:
        try:
            os.lseek(handle.fileno(), 0, os.SEEK_DATA)
        except OSError as exc:
            return exc.errno == errno.ENXIO
    return False


def assert_volumes_equal_sources(sim, lab, vm_name: str, result) -> None:
    for disk in result.disks:
        source = read_disk_bytes(lab.vcenter, vm_name, int(disk.disk_id.removeprefix("disk-")))
        assert volume_facts(sim.volume_file(disk.volume_id), len(source)) == hashlib.sha256(source).hexdigest(), disk


@pytest.mark.parametrize("catalog_url", CATALOG_BACKENDS, indirect=True)
@pytest.mark.parametrize("vm_name", ["pgtest1", "db3"])
def test_initial_replication(
    vm_name, lab, cloudstack_sim, cloudstack_block, agent_block, lab_vcenter_block, configured_catalog
):
    result = replicate_vm(vm_name, cloudstack_block, agent_block, lab_vcenter_block)
    assert result.kind == "full"
    vm = find_vm(configured_catalog, vm_name)
    assert sorted(d.vm_disk_id for d in result.disks) == sorted(d.vm_disk_id for d in vm.present_disks())
    assert len({d.volume_id for d in result.disks}) == len(result.disks)
    assert_volumes_equal_sources(cloudstack_sim, lab, vm_name, result)
    # the catalog ties each volume and each export to its own disk row
    rows = {v.vm_disk_id: v for v in volumes_of_vm(configured_catalog, vm.vm_context_id)}
    for disk in result.disks:
        assert rows[disk.vm_disk_id].volume_id == disk.volume_id
        # written through the hub, then detached: between syncs a volume is Ready and on no VM
        assert disk.device_path.endswith(disk.volume_id.replace("-", "")[:20])
        assert rows[disk.vm_disk_id].attached_vm_id is None and rows[disk.vm_disk_id].content_state == "complete"
        with cloudstack_block.client() as client:
            volume = client.get_volume(disk.volume_id)
        assert volume.virtual_machine_id is None and volume.state == "Ready"
        assert volume.tag_map["vmferry-vm-instance-uuid"] == vm.instance_uuid
        assert volume.tag_map["vmferry-disk-row"] == str(disk.vm_disk_id)
    exports = exports_for_job(configured_catalog, result.job_id)
    by_disk = {e.vm_disk_id: e for e in exports}
    assert {d.vm_disk_id: d.device_path for d in result.disks} == {k: e.file_path for k, e in by_disk.items()}
    assert_nothing_left(configured_catalog, lab, vm_name, [])


def test_incremental_sync_and_rerun_reuse_everything(
    lab, cloudstack_sim, cloudstack_block, agent_block, lab_vcenter_block, configured_catalog
):
    first = replicate_vm("pgtest1", cloudstack_block, agent_block, lab_vcenter_block)
    volumes_before = cloudstack_sim.calls["createVolume"]
    data = next(d for d in first.disks if d.disk_id != first.disks[0].disk_id)
    key = int(data.disk_id.removeprefix("disk-"))
    offset, length = 10 * 2**20, 192 * 1024
    original = read_disk_bytes(lab.vcenter, "pgtest1", key)[offset : offset + length]
    write_disk_bytes(lab.vcenter, "pgtest1", key, offset, os.urandom(length))
    try:
        second = replicate_vm("pgtest1", cloudstack_block, agent_block, lab_vcenter_block)
        assert second.kind == "incremental"
        assert_volumes_equal_sources(cloudstack_sim, lab, "pgtest1", second)
    finally:
        write_disk_bytes(lab.vcenter, "pgtest1", key, offset, original)
    written = {d.disk_id: d.bytes_written for d in second.disks}
    assert length <= written[data.disk_id] <= length + 128 * 1024
    assert all(w == 0 for disk_id, w in written.items() if disk_id != data.disk_id)
    # same volumes, same disk rows, nothing created again
    assert [(d.vm_disk_id, d.volume_id) for d in second.disks] == [(d.vm_disk_id, d.volume_id) for d in first.disks]
    assert cloudstack_sim.calls["createVolume"] == volumes_before == len(first.disks)
    third = replicate_vm("pgtest1", cloudstack_block, agent_block, lab_vcenter_block)
    assert [(d.vm_disk_id, d.volume_id) for d in third.disks] == [(d.vm_disk_id, d.volume_id) for d in first.disks]
    assert_volumes_equal_sources(cloudstack_sim, lab, "pgtest1", third)


def test_a_failed_attach_writes_nothing_and_a_retry_completes(
    lab, cloudstack_sim, cloudstack_block, agent_block, lab_vcenter_block, configured_catalog
):
    # The volumes are attached at once and each attach task retries twice: every attach but the first fails,
    # so one volume is on the hub and two never get there, whichever order CloudStack sees them in.
    for nth in range(2, 8):
        cloudstack_sim.inject_fault(
            "attachVolume", nth=nth, kind="job-failure", errortext="storage pool is in maintenance"
        )
    with pytest.raises(CloudStackError, match="storage pool is in maintenance"):
        replicate_vm("db3", cloudstack_block, agent_block, lab_vcenter_block)
    vm = find_vm(configured_catalog, "db3")
    volumes = volumes_of_vm(configured_catalog, vm.vm_context_id)
    assert len(volumes) == 3
    assert all(never_written(cloudstack_sim.volume_file(v.volume_id)) for v in volumes)
    assert_nothing_left(configured_catalog, lab, "db3", [])

    retried = replicate_vm("db3", cloudstack_block, agent_block, lab_vcenter_block)
    assert sorted(d.volume_id for d in retried.disks) == sorted(v.volume_id for v in volumes)
    assert_volumes_equal_sources(cloudstack_sim, lab, "db3", retried)
    assert_nothing_left(configured_catalog, lab, "db3", [])
