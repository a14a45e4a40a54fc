"""Restores refused before a byte is copied: a point that is not restorable, a destination this hub cannot write,
a partial file that is not ours. Each leaves what it found as it was."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from blocks.repository import BackupRepository
from catalog.inventory import RecordedVM, record_vm
from catalog.jobs import create_job
from catalog.restore_points import DiskOutcome, PlannedDisk, add_point_disks, commit_point, create_pending_point
from flows.restore import RestoreError, restore_vm
from tests import factories
from tests.refusals.conftest import assert_refusal

pytestmark = pytest.mark.usefixtures("prefect_backend")


@pytest.fixture
def web01(configured_catalog) -> RecordedVM:
    return record_vm(configured_catalog, factories.vm(factories.disk(2000), name="web01", uuid="u-web01"))


@pytest.fixture
def repository(tmp_path: Path) -> BackupRepository:
    return BackupRepository(name="main", path=str(tmp_path / "repository"))


def _point(catalog, vm: RecordedVM, *, committed: bool) -> int:
    """A one-disk point as a backup records it; the copy itself is never reached by these refusals."""
    point_id = create_pending_point(
        catalog, vm_context_id=vm.vm_context_id, job_id=create_job(catalog, "backup"), repository="main",
        kind="full", parent_id=None,
    )  # fmt: skip
    (disk,) = vm.present_disks()
    add_point_disks(
        catalog, point_id,
        [
            PlannedDisk(
                vm_disk_id=disk.vm_disk_id, disk_generation=1, file_path="p/disk-2000.qcow2", capacity_bytes=2**20
            )
        ],
    )  # fmt: skip
    if committed:
        outcome = DiskOutcome(vm_disk_id=disk.vm_disk_id, bytes_written=0, change_id=None, checksum="0" * 64)
        commit_point(catalog, point_id, [outcome])
    return point_id


def test_a_point_whose_backup_has_not_finished(web01, configured_catalog, repository, tmp_path):
    point_id = _point(configured_catalog, web01, committed=False)
    with pytest.raises(RestoreError) as caught:
        restore_vm(point_id, str(tmp_path / "out"), repository)
    assert_refusal(caught.value, f"restore point {point_id} of VM 'web01' is pending", "vmferry points web01")
    assert not (tmp_path / "out").exists()


def test_a_destination_this_hub_cannot_write(web01, configured_catalog, repository, tmp_path):
    point_id = _point(configured_catalog, web01, committed=True)
    (tmp_path / "a-file").write_bytes(b"not a directory")
    destination = tmp_path / "a-file" / "restored"
    with pytest.raises(RestoreError) as caught:
        restore_vm(point_id, str(destination), repository)
    assert_refusal(caught.value, f"cannot write into {destination}", "restore into a directory this hub can write")
    assert (tmp_path / "a-file").read_bytes() == b"not a directory"


def test_a_partial_file_this_restore_did_not_create(web01, configured_catalog, repository, tmp_path):
    point_id = _point(configured_catalog, web01, committed=True)
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"someone else's")
    os.symlink(victim, out / "disk-2000.raw.partial")
    with pytest.raises(RestoreError) as caught:
        restore_vm(point_id, str(out), repository)
    assert_refusal(caught.value, "disk-2000.raw.partial already exists", "remove it")
    assert victim.read_bytes() == b"someone else's" and (out / "disk-2000.raw.partial").is_symlink()
    assert not (out / "disk-2000.raw").exists()


def test_a_point_of_another_repository(web01, configured_catalog, tmp_path):
    point_id = _point(configured_catalog, web01, committed=True)
    elsewhere = BackupRepository(name="elsewhere", path=str(tmp_path / "elsewhere"))
    with pytest.raises(RestoreError) as caught:
        restore_vm(point_id, str(tmp_path / "out"), elsewhere)
    assert_refusal(caught.value, "'web01'", "is in repository 'main', not 'elsewhere'", "that repository")
    assert not (tmp_path / "out").exists()


def test_a_file_already_at_the_destination(web01, configured_catalog, repository, tmp_path):
    point_id = _point(configured_catalog, web01, committed=True)
    out = tmp_path / "out"
    out.mkdir()
    (out / "disk-2000.raw").write_bytes(b"kept")
    with pytest.raises(RestoreError) as caught:
        restore_vm(point_id, str(out), repository)
    assert_refusal(caught.value, "disk-2000.raw exists", "pass overwrite=True")
    assert (out / "disk-2000.raw").read_bytes() == b"kept"
    assert sorted(p.name for p in out.iterdir()) == ["disk-2000.raw"]  # no partial file was left either
