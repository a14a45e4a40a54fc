"""Restores of whole VMs, disks and single files; retention; concurrency; hostile names; one snapshot each."""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from pathlib import Path

import pytest
from pyVim.task import WaitForTask

from blocks.repository import BackupRepository
from catalog.exports import exports_for_job
from catalog.restore_points import PointDiskView, PointView, committed_points, get_point
from clients.qemu import images_identical
from flows.backup import backup_vm
from flows.restore import RestoreError, list_backup_files, restore_disk, restore_files, restore_vm
from flows.retention import prune_restore_points
from flows.verify import VerificationFailed, verify_restore_point
from infra.lab.mutate import read_disk_bytes
from infra.lab.seed import require_vm
from infra.lab.vcenter import session
from tests.copy.helpers import assert_nothing_left
from vmferry.filelevel import FileRestoreError, safe_destination
from vmferry.retention import RetentionPolicy, points_to_keep

pytestmark = pytest.mark.usefixtures("prefect_backend", "nbd_port_range")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot_tasks(lab, vm_name: str) -> int:
    """CreateSnapshot tasks vcsim has seen for this VM."""
    with session(lab.vcenter) as si:
        moref = require_vm(si, vm_name)._moId
        return sum(
            1
            for task in si.content.taskManager.recentTask
            if task.info.descriptionId == "VirtualMachine.createSnapshot" and task.info.entityName == moref
        )


def test_restore_a_vm_a_disk_and_single_files(
    lab, agent_block, lab_vcenter_block, repository_block, configured_catalog, tmp_path
):
    before = snapshot_tasks(lab, "db3")
    point = backup_vm("db3", repository_block, agent_block, lab_vcenter_block)
    assert snapshot_tasks(lab, "db3") == before + 1  # all three disks from ONE snapshot
    source = {
        d.device_key: hashlib.sha256(read_disk_bytes(lab.vcenter, "db3", d.device_key)).hexdigest() for d in point.disks
    }

    restored = restore_vm(point.id, str(tmp_path / "vm"), repository_block)
    assert sorted(r.disk_id for r in restored) == sorted(d.disk_id for d in point.disks)
    for item in restored:
        disk = point.disk(item.disk_id)
        assert sha256_file(item.path) == disk.checksum == source[disk.device_key]
    assert list((tmp_path / "vm").glob("*.partial")) == []

    one = point.disks[1]
    as_qcow2 = restore_disk(point.id, one.disk_id, str(tmp_path / "one.qcow2"), repository_block, image_format="qcow2")
    assert images_identical(as_qcow2.path, tmp_path / "vm" / f"{one.disk_id}.raw")
    with pytest.raises(RestoreError, match="exists"):
        restore_disk(point.id, one.disk_id, str(tmp_path / "one.qcow2"), repository_block)
    # the same relative paths exist in every repository: a point is read only from its own
    elsewhere = BackupRepository(name="elsewhere", path=str(tmp_path / "elsewhere"))
    with pytest.raises(RestoreError, match=f"is in repository '{repository_block.name}', not 'elsewhere'"):
        restore_vm(point.id, str(tmp_path / "from-elsewhere"), elsewhere)
    assert not (tmp_path / "from-elsewhere").exists()
    with pytest.raises(VerificationFailed, match="not 'elsewhere'"):
        verify_restore_point(point.id, elsewhere)

    manifest = lab.manifest.vm("db3")
    for record in manifest.disks:
        listing = list_backup_files(point.id, f"disk-{record.device_key}", repository_block, partition=1)
        assert [p.number for p in listing.partitions][: len(record.sfdisk_json["partitiontable"]["partitions"])]
        for known in record.known_files:
            out = tmp_path / "files" / f"disk-{record.device_key}-p{known.partition}"
            (extracted,) = restore_files(
                point.id, f"disk-{record.device_key}", known.partition, [known.path], str(out), repository_block
            )
            assert extracted == out / known.path.lstrip("/")
            assert sha256_file(extracted) == known.sha256, (record.label, known.path)
    os_disk = manifest.disk("OS")
    with pytest.raises(FileRestoreError, match="does not exist"):
        restore_files(point.id, f"disk-{os_disk.device_key}", 2, ["/etc/shadow"], str(tmp_path / "x"), repository_block)


def test_extracted_paths_cannot_escape(tmp_path):
    for hostile in ("../../etc/passwd", "/a/../../b", "", "/.."):
        with pytest.raises(FileRestoreError):
            safe_destination(tmp_path, hostile)
    assert safe_destination(tmp_path, "/etc/hostname") == tmp_path / "etc" / "hostname"


def test_retention_prunes_the_right_points_and_kept_points_restore(
    make_scratch_vm, lab, agent_block, lab_vcenter_block, repository_block, configured_catalog, tmp_path
):
    vm = make_scratch_vm()
    full_1 = backup_vm(vm, repository_block, agent_block, lab_vcenter_block)
    incr_2 = backup_vm(vm, repository_block, agent_block, lab_vcenter_block)
    full_3 = backup_vm(vm, repository_block, agent_block, lab_vcenter_block, kind="full")
    incr_4 = backup_vm(vm, repository_block, agent_block, lab_vcenter_block)
    assert [p.kind for p in (full_1, incr_2, full_3, incr_4)] == ["full", "incremental", "full", "incremental"]
    assert incr_4.parent_id == full_3.id

    pruned = prune_restore_points(vm, repository_block, RetentionPolicy(keep_last=1))
    assert pruned == [full_1.id, incr_2.id]  # incr_4 is kept, and so is the base it needs
    repo = repository_block.repository()
    assert not repo.point_dir(full_1.vm_context_id, full_1.id).exists()
    assert [p.id for p in committed_points(configured_catalog, full_1.vm_context_id)] == [full_3.id, incr_4.id]
    assert get_point(configured_catalog, full_1.id).state == "pruned"
    for point in (full_3, incr_4):
        assert all(v.ok for v in verify_restore_point(point.id, repository_block))
        (restored,) = restore_vm(point.id, str(tmp_path / f"p{point.id}"), repository_block)
        assert sha256_file(restored.path) == point.disks[0].checksum
    with pytest.raises(RestoreError, match="pruned"):
        restore_vm(full_1.id, str(tmp_path / "gone"), repository_block)


def _point(point_id: int, created: dt.datetime, parent: int | None = None) -> PointView:
    disk = PointDiskView(
        id=point_id,
        vm_disk_id=1,
        disk_id="disk-1",
        device_key=1,
        disk_generation=1,
        file_path="x",
        backing_id=None,
        capacity_bytes=1,
        bytes_written=0,
        change_id=None,
        checksum="x",
    )
    return PointView(
        id=point_id,
        vm_context_id=1,
        job_id="j",
        parent_id=parent,
        repository="r",
        kind="full",
        state="committed",
        created_at=created,
        committed_at=created,
        disks=[disk],
    )


def test_retention_policy_daily_and_weekly_keep_newest_of_each_period():
    start = dt.datetime(2026, 11, 2, 1, 0, tzinfo=dt.UTC)  # a Monday
    points = []
    for day in range(14):  # two points a day for two weeks, each day's second one an incremental
        morning = _point(2 * day + 1, start + dt.timedelta(days=day))
        evening = _point(2 * day + 2, start + dt.timedelta(days=day, hours=12), parent=2 * day + 1)
        points += [morning, evening]
    keep = points_to_keep(points, RetentionPolicy(keep_last=1, keep_daily=3, keep_weekly=2))
    newest_of_days = {28, 26, 24}
    newest_of_weeks = {28, 14}  # Sunday evenings
    bases = {27, 25, 23, 13}
    assert keep == newest_of_days | newest_of_weeks | bases


def test_three_vm_backups_at_once(
    make_scratch_vm, lab, agent_block, lab_vcenter_block, repository_block, configured_catalog
):
    names = ["pgtest1", "db3", make_scratch_vm(disks=2)]
    results: dict[str, PointView] = {}
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            # throttled, so the copies surely overlap however loaded the machine is
            results[name] = backup_vm(
                name, repository_block, agent_block, lab_vcenter_block, bandwidth_limit_bytes_per_second=24 * 2**20
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert errors == []
    exports = [e for name in names for e in exports_for_job(configured_catalog, results[name].job_id)]
    assert len(exports) == 2 + 3 + 2
    for first in exports:  # a port is reused only after the export that held it stopped
        for second in exports:
            if first.id < second.id and first.port == second.port:
                assert first.stopped_at <= second.created_at or second.stopped_at <= first.created_at
    overlapping = [
        (a.job_id, b.job_id)
        for a in exports
        for b in exports
        if a.job_id != b.job_id and a.created_at < b.stopped_at and b.created_at < a.stopped_at
    ]
    assert overlapping, "the backups never ran at the same time"
    for name, point in results.items():
        for disk in point.disks:
            assert disk.checksum == hashlib.sha256(read_disk_bytes(lab.vcenter, name, disk.device_key)).hexdigest()
    assert_nothing_left(configured_catalog, lab, "db3", [])


@pytest.mark.parametrize("hostile_name", ["../../etc/x", "my \"quoted\" 'vm'; rm -rf /"])
def test_hostile_vm_names_stay_inside_the_repository(
    hostile_name, make_scratch_vm, lab, agent_block, lab_vcenter_block, configured_catalog, tmp_path
):
    vm = make_scratch_vm()
    with session(lab.vcenter) as si:
        WaitForTask(require_vm(si, vm).Rename_Task(newName=hostile_name))
    root = tmp_path / "deep" / "repository"
    repository = BackupRepository(name="hostile", path=str(root))
    point = backup_vm(hostile_name, repository, agent_block, lab_vcenter_block)
    everything = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert all(p.parts[:2] == ("deep", "repository") for p in everything if len(p.parts) > 2), everything
    assert [p.relative_to(root).as_posix() for p in root.rglob("*.qcow2")] == [
        f"vm-{point.vm_context_id}/point-{point.id}/{point.disks[0].disk_id}.qcow2"
    ]
    assert not (tmp_path / "etc").exists() and not (tmp_path / "deep" / "etc").exists()
    (restored,) = restore_vm(point.id, str(tmp_path / "restore"), repository)
    assert sha256_file(restored.path) == point.disks[0].checksum
