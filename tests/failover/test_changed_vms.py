"""VMs as operators leave them: a disk hot-added between two jobs, and snapshots of their own."""

from __future__ import annotations

import hashlib
import os

import pytest

from blocks.repository import BackupRepository
from catalog.inventory import find_vm
from clients.agent import AgentJobFailed
from clients.qemu import content_sha256
from common.vsphere import VSphereClient
from flows.backup import backup_vm
from flows.cleanup import cleanup_failover
from flows.failover import failover_vm
from flows.replicate import replicate_vm
from infra.lab.mutate import add_disk, create_user_snapshot, put_disk_on_delta, read_disk_bytes, write_disk_bytes
from infra.lab.seed import require_vm, virtual_disks
from infra.lab.vcenter import session
from tests.copy.helpers import vm_snapshot_names
from tests.failover.test_failover import source_shas, volume_sha

pytestmark = pytest.mark.usefixtures("prefect_backend", "nbd_port_range")

MiB = 2**20


def assert_point_is_source(lab, vm_name, point, repository) -> None:
    for disk in point.disks:
        source = hashlib.sha256(read_disk_bytes(lab.vcenter, vm_name, disk.device_key)).hexdigest()
        assert content_sha256(repository.absolute(disk.file_path)) == source == disk.checksum


def test_a_hot_added_disk_is_backed_up_replicated_and_failed_over_in_its_place(
    make_scratch_vm, lab, agent_block, lab_vcenter_block, cloudstack_sim, cloudstack_block, configured_catalog, tmp_path
):
    repository_block = BackupRepository(name="hot-add", path=str(tmp_path / "repository"))
    repository = repository_block.repository()
    vm_name = make_scratch_vm(disks=2, size_mib=4)
    with VSphereClient(lab_vcenter_block.endpoint()) as client:
        client.enable_change_tracking(vm_name)
    first_point = backup_vm(vm_name, repository_block, agent_block, lab_vcenter_block)
    first_sync = replicate_vm(vm_name, cloudstack_block, agent_block, lab_vcenter_block)

    with session(lab.vcenter) as si:
        new_key = add_disk(si, vm_name, 6 * MiB)
    # vSphere gives a new disk a full-size extent: it reads as zeros until the guest writes.
    assert read_disk_bytes(lab.vcenter, vm_name, new_key) == bytes(6 * MiB)
    write_disk_bytes(lab.vcenter, vm_name, new_key, 0, os.urandom(MiB))
    write_disk_bytes(lab.vcenter, vm_name, new_key, 5 * MiB, os.urandom(512 * 1024))

    point = backup_vm(vm_name, repository_block, agent_block, lab_vcenter_block)
    # A restore point holds every disk of one moment: a disk the previous point lacks starts a new chain.
    assert point.kind == "full" and len(point.disks) == 3
    assert_point_is_source(lab, vm_name, point, repository)
    assert [d.vm_disk_id for d in point.disks[:2]] == [d.vm_disk_id for d in first_point.disks]

    sync = replicate_vm(vm_name, cloudstack_block, agent_block, lab_vcenter_block)
    assert len(sync.disks) == 3
    assert [(d.vm_disk_id, d.volume_id) for d in sync.disks[:2]] == [
        (d.vm_disk_id, d.volume_id) for d in first_sync.disks
    ]
    expected = source_shas(lab, vm_name, configured_catalog)
    for disk in sync.disks:
        assert volume_sha(cloudstack_sim, disk.volume_id, expected[disk.vm_disk_id][1]) == expected[disk.vm_disk_id][0]

    result = failover_vm(vm_name, cloudstack_block)
    vm = find_vm(configured_catalog, vm_name)
    new_row = next(d for d in vm.present_disks() if d.device_key == new_key)
    assert [d.device_id for d in result.devices] == [0, 1, 2]
    assert result.devices[-1].vm_disk_id == new_row.vm_disk_id  # the new disk after the others, in recorded order
    for device in result.devices:
        sha, capacity = expected[device.vm_disk_id]
        assert volume_sha(cloudstack_sim, device.volume_id, capacity) == sha
    cleanup_failover(vm_name, cloudstack_block)

    # The test VM wrote into its volumes; the next sync must not trust CBT's "unchanged" for them.
    with open(cloudstack_sim.volume_file(result.devices[-1].volume_id), "r+b") as volume:
        volume.seek(2 * MiB)
        volume.write(os.urandom(4096))
    again = replicate_vm(vm_name, cloudstack_block, agent_block, lab_vcenter_block)
    with agent_block.client() as client:
        modes = {d.mode for d in client.status(again.job_id).disks}
    assert modes and modes <= {"compare", "digest-compare"}  # every block compared, none trusted to CBT
    for disk in again.disks:
        assert volume_sha(cloudstack_sim, disk.volume_id, expected[disk.vm_disk_id][1]) == expected[disk.vm_disk_id][0]


def test_a_vm_with_its_own_snapshot_is_copied_and_its_snapshot_left_alone(
    make_scratch_vm, lab, agent_block, lab_vcenter_block, cloudstack_sim, cloudstack_block, configured_catalog, tmp_path
):
    repository_block = BackupRepository(name="user-snapshot", path=str(tmp_path / "repository"))
    vm_name = make_scratch_vm(disks=2, size_mib=4)
    with session(lab.vcenter) as si:
        kept = create_user_snapshot(si, vm_name, "before-upgrade")
    full = backup_vm(vm_name, repository_block, agent_block, lab_vcenter_block)
    write_disk_bytes(lab.vcenter, vm_name, full.disks[1].device_key, MiB, os.urandom(64 * 1024))
    incremental = backup_vm(vm_name, repository_block, agent_block, lab_vcenter_block)
    assert_point_is_source(lab, vm_name, incremental, repository_block.repository())
    sync = replicate_vm(vm_name, cloudstack_block, agent_block, lab_vcenter_block)
    for disk in sync.disks:
        source = read_disk_bytes(lab.vcenter, vm_name, int(disk.disk_id.removeprefix("disk-")))
        assert volume_sha(cloudstack_sim, disk.volume_id, len(source)) == hashlib.sha256(source).hexdigest()
    assert vm_snapshot_names(lab, vm_name) == ["before-upgrade"]
    with session(lab.vcenter) as si:
        assert require_vm(si, vm_name).snapshot.rootSnapshotList[0].snapshot._moId == kept


def test_a_vm_on_snapshot_deltas_is_read_through_its_chain_or_refused_naming_vddk(
    make_scratch_vm, lab, agent_block, lab_vcenter_block, configured_catalog, tmp_path
):
    """On vSphere a VM with snapshots of its own runs on delta files (vcsim's snapshots make none: the lab writes
    them). vmfsSparse chains are read down to the flat base; SEsparse is refused naming the VDDK reader."""
    repository_block = BackupRepository(name="delta", path=str(tmp_path / "repository"))
    vm_name = make_scratch_vm(disks=2, size_mib=4)
    with session(lab.vcenter) as si:
        os_key, data_key = sorted(d.key for d in virtual_disks(require_vm(si, vm_name)))
    grain = 64 * 1024
    grains = {0: os.urandom(grain), 17: os.urandom(grain), 63: os.urandom(grain)}
    expected = bytearray(read_disk_bytes(lab.vcenter, vm_name, data_key))
    for index, data in grains.items():
        expected[index * grain : (index + 1) * grain] = data
    with session(lab.vcenter) as si:
        kept = create_user_snapshot(si, vm_name, "before-upgrade")
    delta = put_disk_on_delta(lab.vcenter, vm_name, data_key, grains)  # what that snapshot does on vSphere

    point = backup_vm(vm_name, repository_block, agent_block, lab_vcenter_block)
    assert delta in [d.file_name for d in find_vm(configured_catalog, vm_name).disks]  # discovery saw the chain
    on_delta = next(d for d in point.disks if d.device_key == data_key)
    assert on_delta.checksum == hashlib.sha256(expected).hexdigest()
    assert content_sha256(repository_block.repository().absolute(on_delta.file_path)) == on_delta.checksum
    flat = next(d for d in point.disks if d.device_key == os_key)
    assert flat.checksum == hashlib.sha256(read_disk_bytes(lab.vcenter, vm_name, os_key)).hexdigest()

    put_disk_on_delta(lab.vcenter, vm_name, os_key, {}, sesparse=True)
    with pytest.raises(AgentJobFailed, match=rf"disk {os_key} .*SESPARSE extent.*\"reader\": \"vddk\""):
        backup_vm(vm_name, repository_block, agent_block, lab_vcenter_block)
    assert vm_snapshot_names(lab, vm_name) == ["before-upgrade"]  # the agent's own removed, the owner's kept
    with session(lab.vcenter) as si:
        assert require_vm(si, vm_name).snapshot.rootSnapshotList[0].snapshot._moId == kept
