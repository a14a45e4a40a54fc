"""Full and incremental VM backups against the real lab: every disk of every point equals its source then."""

from __future__ import annotations

import os

import pytest

from catalog.inventory import find_vm
from catalog.restore_points import committed_points
from clients.qemu import content_sha256, image_info
from flows.backup import backup_vm
from infra.lab.mutate import read_disk_bytes, write_disk_bytes
from tests.copy.helpers import assert_nothing_left, source_facts, target_facts
from tests.databases import CATALOG_BACKENDS

pytestmark = pytest.mark.usefixtures("prefect_backend", "nbd_port_range")


def source_sha(lab, vm_name, key) -> str:
    import hashlib

    return hashlib.sha256(read_disk_bytes(lab.vcenter, vm_name, key)).hexdigest()


@pytest.mark.parametrize("catalog_url", CATALOG_BACKENDS, indirect=True)
@pytest.mark.parametrize("vm_name", ["pgtest1", "db3"])
def test_full_then_incremental(
    vm_name, lab, agent_block, lab_vcenter_block, repository_block, configured_catalog, tmp_path
):
    repo = repository_block.repository()
    full = backup_vm(vm_name, repository_block, agent_block, lab_vcenter_block)
    assert full.kind == "full" and full.state == "committed"
    assert {d.content_state for d in full.disks} == {"complete"}
    at_full = {d.device_key: source_facts(lab, vm_name, d.device_key, tmp_path) for d in full.disks}
    for disk in full.disks:
        assert target_facts(repo.absolute(disk.file_path), tmp_path) == at_full[disk.device_key]
        assert disk.checksum == at_full[disk.device_key][0]

    changed = full.disks[-1]
    offset, length = 3 * 2**20, 256 * 1024
    original = read_disk_bytes(lab.vcenter, vm_name, changed.device_key)[offset : offset + length]
    write_disk_bytes(lab.vcenter, vm_name, changed.device_key, offset, os.urandom(length))
    try:
        incremental = backup_vm(vm_name, repository_block, agent_block, lab_vcenter_block)
        at_incremental = {d.device_key: source_facts(lab, vm_name, d.device_key, tmp_path) for d in full.disks}
    finally:
        write_disk_bytes(lab.vcenter, vm_name, changed.device_key, offset, original)

    assert incremental.kind == "incremental" and incremental.parent_id == full.id
    assert [d.vm_disk_id for d in incremental.disks] == [d.vm_disk_id for d in full.disks]  # ids unchanged
    for disk in incremental.disks:
        path = repo.absolute(disk.file_path)
        assert image_info(path)["backing-filename"] == f"../point-{full.id}/{disk.disk_id}.qcow2"
        assert target_facts(path, tmp_path) == at_incremental[disk.device_key]
        assert disk.checksum == at_incremental[disk.device_key][0]
        expected_written = length if disk.device_key == changed.device_key else 0
        assert expected_written <= disk.bytes_written <= expected_written + 128 * 1024
    # the full point still reads as the source did at its time
    for disk in full.disks:
        assert content_sha256(repo.absolute(disk.file_path)) == at_full[disk.device_key][0]
    assert [p.id for p in committed_points(configured_catalog, full.vm_context_id)] == [full.id, incremental.id]
    assert find_vm(configured_catalog, vm_name).vm_context_id == full.vm_context_id
    assert_nothing_left(configured_catalog, lab, vm_name, [])
    assert list(repo.root.glob("**/*.partial")) == []
    assert oct(os.stat(repo.absolute(full.disks[0].file_path)).st_mode & 0o777) == "0o600"
