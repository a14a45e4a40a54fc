"""The lab's vcsim answers CBT, paged property retrieval and lookups the way vSphere does, and so does our client."""

from __future__ import annotations

import os
import random
import re
import time

import pytest
from pyVmomi import vim, vmodl

from agent.cbt_check import unchanged_sample
from common.vsphere import CbtUnavailable, VSphereClient, VSphereError, VSphereSnapshots
from infra.lab import dsfiles
from infra.lab.mutate import (
    add_readable_disk,
    find_disk,
    make_cbt_omit_changes,
    put_disk_on_delta,
    remove_disk,
    reset_change_tracking,
    set_change_tracking,
    write_disk_bytes,
)
from infra.lab.seed import disk_add_spec, require_vm, run_task
from infra.lab.vcenter import session

MiB = 2**20
BLOCK = 64 * 1024


@pytest.fixture
def client(lab_vcenter_block):
    with VSphereClient(lab_vcenter_block.endpoint(), page_size=2) as connected:
        yield connected


def test_cbt_sees_a_write_to_a_disk_whose_hashes_the_lab_kept(lab, client, make_scratch_vm):
    """The lab does not read a quiet extent again at every snapshot (same inode, size and ctime: it keeps the
    block hashes); a write after that still shows, at the block it changed."""
    name = make_scratch_vm(disks=1, size_mib=8)
    assert client.enable_change_tracking(name)
    vm = VSphereSnapshots(client, client.find_vm(name).instance_uuid)
    time.sleep(2.5)  # longer than the lab's quiet time: this snapshot's hashes are kept
    first = vm.create_snapshot("first", "", quiesce=False)
    (disk,) = vm.snapshot_disks(first)
    second = vm.create_snapshot("second", "", quiesce=False)
    assert vm.changed_areas(second, disk.device_key, disk.change_id, disk.capacity_bytes) == []
    write_disk_bytes(lab.vcenter, name, disk.device_key, 5 * MiB + 100, os.urandom(10))
    third = vm.create_snapshot("third", "", quiesce=False)
    assert vm.changed_areas(third, disk.device_key, disk.change_id, disk.capacity_bytes) == [(5 * MiB, BLOCK)]


def test_cbt_answers_like_vsphere(lab, client, make_scratch_vm):
    name = make_scratch_vm(disks=1, size_mib=40)
    vm = VSphereSnapshots(client, client.find_vm(name).instance_uuid)
    untracked = vm.create_snapshot("untracked", "", quiesce=False)
    (disk,) = vm.snapshot_disks(untracked)
    assert disk.change_id is None  # CBT off: no change id, and QueryChangedDiskAreas faults
    with pytest.raises(CbtUnavailable, match="ctk"):
        vm.changed_areas(untracked, disk.device_key, "*", disk.capacity_bytes)

    assert client.enable_change_tracking(name)
    first = vm.create_snapshot("first", "", quiesce=False)
    (disk,) = vm.snapshot_disks(first)
    epoch, _, sequence = disk.change_id.partition("/")
    assert len(epoch.replace(" ", "").replace("-", "")) == 32 and sequence.isdigit()
    # "*": the allocated areas; the scratch disk holds a partition table and 1 MiB of random data at 1 MiB
    allocated = vm.changed_areas(first, disk.device_key, "*", disk.capacity_bytes)
    assert allocated == [(0, BLOCK), (MiB, MiB)]

    # Answers come in 16 MiB slices: one call covers only the start of the disk.
    raw = vm.vm.QueryChangedDiskAreas(
        snapshot=vim.vm.Snapshot(first, client.service_instance._stub),
        deviceKey=disk.device_key,
        startOffset=0,
        changeId="*",
    )
    assert (raw.startOffset, raw.length) == (0, 16 * MiB)

    write_disk_bytes(lab.vcenter, name, disk.device_key, 20 * MiB + 100, os.urandom(10))
    second = vm.create_snapshot("second", "", quiesce=False)
    (later,) = vm.snapshot_disks(second)
    assert later.change_id.startswith(epoch + "/") and later.change_id != disk.change_id
    assert vm.changed_areas(second, disk.device_key, disk.change_id, disk.capacity_bytes) == [(20 * MiB, BLOCK)]
    # a change id stays valid after its snapshot is gone
    vm.remove_snapshot(first)
    assert vm.changed_areas(second, disk.device_key, disk.change_id, disk.capacity_bytes) == [(20 * MiB, BLOCK)]

    with session(lab.vcenter) as si:
        make_cbt_omit_changes(si, name, True)
        assert vm.changed_areas(second, disk.device_key, disk.change_id, disk.capacity_bytes) == []
        make_cbt_omit_changes(si, name, False)
        reset_change_tracking(si, name)
    third = vm.create_snapshot("third", "", quiesce=False)
    with pytest.raises(CbtUnavailable, match="changeId"):
        vm.changed_areas(third, disk.device_key, disk.change_id, disk.capacity_bytes)
    with session(lab.vcenter) as si:
        set_change_tracking(si, name, False)
    with pytest.raises(CbtUnavailable):
        vm.changed_areas(third, disk.device_key, "*", disk.capacity_bytes)
    for moref in (untracked, second, third):
        vm.remove_snapshot(moref)


def test_property_retrieval_pages_and_lookups_use_the_search_index(lab, client):
    collector = client.service_instance.content.propertyCollector
    everything = client.list_vms()  # in pages of two
    names = [vm.name for vm in everything]
    assert {"pgtest1", "db3"} <= set(names) and len(names) > 4
    spec = vmodl.query.PropertyCollector.FilterSpec(
        objectSet=[
            vmodl.query.PropertyCollector.ObjectSpec(obj=vim.VirtualMachine(v.moref, client.service_instance._stub))
            for v in everything
        ],
        propSet=[vmodl.query.PropertyCollector.PropertySpec(type=vim.VirtualMachine, pathSet=["name"])],
    )
    page = collector.RetrievePropertiesEx([spec], vmodl.query.PropertyCollector.RetrieveOptions(maxObjects=2))
    assert len(page.objects) == 2 and page.token
    rest = collector.ContinueRetrievePropertiesEx(page.token)
    assert len(rest.objects) == 2
    collector.CancelRetrievePropertiesEx(rest.token)
    with pytest.raises(vmodl.fault.InvalidArgument):
        collector.ContinueRetrievePropertiesEx(rest.token)  # cancelled
    with pytest.raises(vmodl.fault.InvalidArgument):
        collector.ContinueRetrievePropertiesEx(page.token)  # already used

    pgtest1 = next(vm for vm in everything if vm.name == "pgtest1")
    assert client.find_vm(pgtest1.instance_uuid) == pgtest1
    assert client.find_vm(pgtest1.moref) == pgtest1
    assert client.find_vm("pgtest1") == pgtest1
    with pytest.raises(VSphereError, match="no VM named 'nope'"):
        client.find_vm("nope")


def test_unchanged_sample_stays_outside_the_changed_areas():
    rng = random.Random(7)
    changed = [(0, 3 * BLOCK), (10 * BLOCK + 5, 100), (40 * BLOCK, 20 * BLOCK)]
    capacity = 64 * BLOCK + 512  # a last, partial block
    for count in (1, 8, 64):
        sample = unchanged_sample(changed, capacity, BLOCK, count, rng)
        assert len(sample) == min(count, 65 - 3 - 1 - 20)  # 65 slots, 24 of them touched by a change
        assert len({offset for offset, _ in sample}) == len(sample)
        for offset, length in sample:
            assert offset % BLOCK == 0 and offset + length <= capacity
            assert all(offset + length <= s or s + n <= offset for s, n in changed)
    assert unchanged_sample([(0, capacity)], capacity, BLOCK, 8, rng) == []


DISK_UUID = re.compile(r"6000C29[0-9a-f]-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def test_every_disk_has_a_backing_uuid_for_its_life(lab, client, make_scratch_vm, tmp_path):
    name = make_scratch_vm(disks=3)
    seen = {d.device_key: d.backing_uuid for d in client.find_vm(name).disks}
    assert all(DISK_UUID.fullmatch(u or "") for u in seen.values()), seen
    assert len(set(seen.values())) == 3
    first, second, third = sorted(seen)
    with session(lab.vcenter) as si:
        # kept in the descriptor as ESXi keeps it, so attaching the same file again is the same disk
        vm = require_vm(si, name)
        disk = find_disk(vm, second)
        dsfiles.download(lab.vcenter, disk.backing.fileName, tmp_path / "d.vmdk", cookie=dsfiles.session_cookie(si))
        descriptor = (tmp_path / "d.vmdk").read_bytes()
        spelled = seen[second].replace("-", "")
        pairs = [spelled[i : i + 2] for i in range(0, 32, 2)]
        assert f'ddb.uuid = "{" ".join(pairs[:8])}-{" ".join(pairs[8:])}"'.encode() in descriptor
        detach = vim.vm.device.VirtualDeviceSpec(operation="remove", device=disk)
        run_task(vm.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=[detach])))
        attach = disk_add_spec(
            controller_key=disk.controllerKey, unit=disk.unitNumber, size_bytes=4 * MiB,
            file_name=disk.backing.fileName, temp_key=-1, create=False,
        )  # fmt: skip
        run_task(vm.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=[attach])))
        reattached = next(d for d in client.find_vm(name).disks if d.file_name == disk.backing.fileName)
        assert reattached.backing_uuid == seen[second]

        # a new disk reusing a removed one's key, file name and size is another disk
        old_file = find_disk(require_vm(si, name), third).backing.fileName
        remove_disk(si, name, third)
        assert add_readable_disk(si, lab.vcenter, name, 4 * MiB, file_name=old_file) == third
    replaced = next(d for d in client.find_vm(name).disks if d.device_key == third)
    assert replaced.file_name == old_file and replaced.capacity_bytes == 4 * MiB
    assert DISK_UUID.fullmatch(replaced.backing_uuid or "") and replaced.backing_uuid != seen[third]

    # a snapshot delta on top is still the same disk
    put_disk_on_delta(lab.vcenter, name, first, {0: os.urandom(64 * 1024)})
    on_delta = next(d for d in client.find_vm(name).disks if d.device_key == first)
    assert on_delta.file_name.endswith("-000001.vmdk") and on_delta.backing_uuid == seen[first]
