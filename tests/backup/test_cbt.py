"""Incremental backups through CBT against the lab's vcsim, which answers QueryChangedDiskAreas as vSphere does."""

from __future__ import annotations

import logging
import os

import pytest

from catalog.inventory import find_vm
from catalog.restore_points import committed_points
from clients.agent import AgentJobFailed
from common.contract import DiskProgress
from common.vsphere import VSphereClient
from flows.backup import backup_vm
from infra.lab.mutate import make_cbt_omit_changes, read_disk_bytes, reset_change_tracking, write_disk_bytes
from infra.lab.vcenter import session
from tests.copy.helpers import assert_nothing_left, source_facts, target_facts

pytestmark = pytest.mark.usefixtures("prefect_backend", "nbd_port_range")

MiB = 2**20
KiB = 1024
CBT_BLOCK = 64 * KiB  # the lab's tracking granularity, like vSphere's


def cbt_vm(make_scratch_vm, vcenter_block, *, disks: int, size_mib: int) -> str:
    name = make_scratch_vm(disks=disks, size_mib=size_mib)
    with VSphereClient(vcenter_block.endpoint()) as client:
        assert not client.find_vm(name).cbt_enabled
        assert client.enable_change_tracking(name)
        assert client.find_vm(name).cbt_enabled
        assert not client.enable_change_tracking(name)  # already on: nothing done
    return name


def agent_disks(agent_block, job_id: str) -> dict[int, DiskProgress]:
    with agent_block.client() as client:
        return {d.device_key: d for d in client.status(job_id).disks}


def assert_point_is_source(lab, vm_name, point, repository_block, tmp_path) -> None:
    repo = repository_block.repository()
    for disk in point.disks:
        source = source_facts(lab, vm_name, disk.device_key, tmp_path)
        assert target_facts(repo.absolute(disk.file_path), tmp_path) == source
        assert disk.checksum == source[0]


def copy_bytes_read(progress: DiskProgress) -> int:
    """Read by the copy itself, without the sampled check's reads."""
    return progress.bytes_read - (progress.cbt_check.bytes_read if progress.cbt_check else 0)


def test_cbt_incrementals_read_what_changed_and_a_cbt_reset_falls_back(
    make_scratch_vm, lab, agent_block, lab_vcenter_block, repository_block, configured_catalog, tmp_path
):
    vm_name = cbt_vm(make_scratch_vm, lab_vcenter_block, disks=2, size_mib=24)
    full = backup_vm(vm_name, repository_block, agent_block, lab_vcenter_block)
    assert all(d.change_id for d in full.disks)
    changed = full.disks[-1]
    # Across the boundary of the lab's 16 MiB CBT answer slices: a caller that does not loop misses half.
    offset, length = 16 * MiB - CBT_BLOCK, 3 * CBT_BLOCK
    write_disk_bytes(lab.vcenter, vm_name, changed.device_key, offset, os.urandom(length))

    incremental = backup_vm(vm_name, repository_block, agent_block, lab_vcenter_block)
    assert incremental.kind == "incremental"
    assert_point_is_source(lab, vm_name, incremental, repository_block, tmp_path)
    progress = agent_disks(agent_block, incremental.job_id)
    for disk, before in zip(incremental.disks, full.disks, strict=True):
        seen = progress[disk.device_key]
        assert seen.mode == "changed-areas"
        expected = length if disk.device_key == changed.device_key else 0
        assert copy_bytes_read(seen) == expected  # block-aligned change: exactly the changed blocks, nothing else
        assert disk.bytes_written == expected
        assert seen.cbt_check is not None and seen.cbt_check.blocks_checked == 32
        assert seen.cbt_check.mismatched_offsets == [] and seen.cbt_check.action == "none"
        assert disk.change_id and disk.change_id != before.change_id

    # A CBT reset (off, on) starts a new epoch: the old change ids are refused and the agent compares whole disks.
    with session(lab.vcenter) as si:
        reset_change_tracking(si, vm_name)
    write_disk_bytes(lab.vcenter, vm_name, changed.device_key, 2 * MiB, os.urandom(CBT_BLOCK))
    after_reset = backup_vm(vm_name, repository_block, agent_block, lab_vcenter_block)
    assert after_reset.kind == "incremental"
    assert_point_is_source(lab, vm_name, after_reset, repository_block, tmp_path)
    progress = agent_disks(agent_block, after_reset.job_id)
    assert {seen.mode for seen in progress.values()} == {"compare"}
    assert all(seen.bytes_read == 24 * MiB for seen in progress.values())
    assert after_reset.disk(changed.disk_id).bytes_written == CBT_BLOCK

    # The new epoch's change ids work from the next run on.
    write_disk_bytes(lab.vcenter, vm_name, changed.device_key, 20 * MiB, os.urandom(CBT_BLOCK))
    again = backup_vm(vm_name, repository_block, agent_block, lab_vcenter_block)
    assert_point_is_source(lab, vm_name, again, repository_block, tmp_path)
    progress = agent_disks(agent_block, again.job_id)
    assert {seen.mode for seen in progress.values()} == {"changed-areas"}
    assert copy_bytes_read(progress[changed.device_key]) == CBT_BLOCK
    assert_nothing_left(configured_catalog, lab, vm_name, [])


def test_the_sampled_check_catches_a_cbt_answer_that_omits_a_change(
    make_scratch_vm,
    lab,
    agent_block,
    lab_vcenter_block,
    repository_block,
    configured_catalog,
    tmp_path,
    monkeypatch,
    caplog,
):
    # 4 MiB disks are 64 blocks: a sample of 64 reads every block CBT calls unchanged, so the omission is certain
    # to be found here (with a smaller sample it is found with a probability, run after run).
    vm_name = cbt_vm(make_scratch_vm, lab_vcenter_block, disks=2, size_mib=4)
    monkeypatch.setenv("VMFERRY_CBT_CHECK_SAMPLE_BLOCKS", "64")
    full = backup_vm(vm_name, repository_block, agent_block, lab_vcenter_block)
    changed = full.disks[-1]
    write_disk_bytes(lab.vcenter, vm_name, changed.device_key, 1 * MiB, os.urandom(CBT_BLOCK))
    write_disk_bytes(lab.vcenter, vm_name, changed.device_key, 3 * MiB, os.urandom(CBT_BLOCK))
    with session(lab.vcenter) as si:
        make_cbt_omit_changes(si, vm_name, True)  # vcsim now drops the first changed area (1 MiB) of each answer

    caplog.set_level(logging.ERROR, logger="flows.copy")
    with pytest.raises(AgentJobFailed, match=rf"disk {changed.device_key} .*offsets \[{MiB}\] unchanged"):
        backup_vm(vm_name, repository_block, agent_block, lab_vcenter_block)
    assert f"CBT of {vm_name} {changed.disk_id} was wrong" in caplog.text
    context = find_vm(configured_catalog, vm_name).vm_context_id
    assert [p.id for p in committed_points(configured_catalog, context)] == [full.id]  # the point failed
    assert list(repository_block.repository().root.glob("**/*.partial")) == []

    # Policy "full": the disk CBT got wrong is read whole instead, and the point holds the right bytes.
    monkeypatch.setenv("VMFERRY_CBT_CHECK_ON_MISMATCH", "full")
    point = backup_vm(vm_name, repository_block, agent_block, lab_vcenter_block)
    assert_point_is_source(lab, vm_name, point, repository_block, tmp_path)
    progress = agent_disks(agent_block, point.job_id)
    wrong = progress[changed.device_key]
    assert wrong.mode == "compare" and wrong.cbt_check.action == "read-whole-disk"
    assert wrong.cbt_check.mismatched_offsets == [MiB]
    assert point.disk(changed.disk_id).bytes_written == 2 * CBT_BLOCK
    assert progress[full.disks[0].device_key].mode == "changed-areas"  # the other disk still trusted CBT
    assert_nothing_left(configured_catalog, lab, vm_name, [])


def blocks_in_use(data: bytes) -> int:
    """Bytes in the 64 KiB blocks that hold anything but zeros: what vSphere reports in use for such a disk."""
    return sum(CBT_BLOCK for at in range(0, len(data), CBT_BLOCK) if data[at : at + CBT_BLOCK].strip(b"\0"))


def test_a_full_backup_with_cbt_reads_only_the_areas_in_use(
    make_scratch_vm,
    lab,
    agent_block,
    lab_vcenter_block,
    repository_block,
    configured_catalog,
    tmp_path,
    monkeypatch,
    caplog,
):
    vm_name = cbt_vm(make_scratch_vm, lab_vcenter_block, disks=2, size_mib=8)
    monkeypatch.setenv("VMFERRY_CBT_CHECK_SAMPLE_BLOCKS", "128")  # 8 MiB disks: every block not in use is checked
    with VSphereClient(lab_vcenter_block.endpoint()) as client:
        data_disk_key = max(d.device_key for d in client.find_vm(vm_name).disks)
    write_disk_bytes(lab.vcenter, vm_name, data_disk_key, 6 * MiB, os.urandom(3 * CBT_BLOCK))
    full = backup_vm(vm_name, repository_block, agent_block, lab_vcenter_block, kind="full")
    assert_point_is_source(lab, vm_name, full, repository_block, tmp_path)
    progress = agent_disks(agent_block, full.job_id)
    for disk in full.disks:
        seen = progress[disk.device_key]
        in_use = blocks_in_use(read_disk_bytes(lab.vcenter, vm_name, disk.device_key))
        assert seen.mode == "allocated-areas"
        assert 0 < copy_bytes_read(seen) == in_use < 8 * MiB  # the zeros were never read
        assert seen.cbt_check is not None and seen.cbt_check.action == "none"

    # vcsim now leaves the first area in use out of its answer: the check reads that block, finds data where the
    # answer said none, and with policy "fail" the full fails naming the disk; nothing is committed.
    with session(lab.vcenter) as si:
        make_cbt_omit_changes(si, vm_name, True)
    caplog.set_level(logging.ERROR, logger="flows.copy")
    with pytest.raises(AgentJobFailed, match=r"CBT calls the blocks at offsets \[0\] not in use, but they hold data"):
        backup_vm(vm_name, repository_block, agent_block, lab_vcenter_block, kind="full")
    assert "was wrong: blocks at [0] hold data, though CBT did not report them in use (point failed)" in caplog.text
    context = find_vm(configured_catalog, vm_name).vm_context_id
    assert [p.id for p in committed_points(configured_catalog, context)] == [full.id]

    # Policy "full": such disks are read whole, and the point holds the right bytes.
    monkeypatch.setenv("VMFERRY_CBT_CHECK_ON_MISMATCH", "full")
    again = backup_vm(vm_name, repository_block, agent_block, lab_vcenter_block, kind="full")
    assert_point_is_source(lab, vm_name, again, repository_block, tmp_path)
    progress = agent_disks(agent_block, again.job_id)
    assert {seen.mode for seen in progress.values()} == {"full"}
    assert all(copy_bytes_read(seen) == 8 * MiB for seen in progress.values())
    assert_nothing_left(configured_catalog, lab, vm_name, [])
