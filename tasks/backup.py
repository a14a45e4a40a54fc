"""Backup tasks: plan, open a pending restore point, create its qcow2 targets, checksum, commit or discard."""

from __future__ import annotations

import logging
import os

from prefect import task
from prefect.cache_policies import NO_CACHE

from catalog import default_catalog
from catalog.inventory import RecordedVM
from catalog.restore_points import (
    DiskOutcome,
    PlannedDisk,
    PointView,
    add_point_disks,
    commit_point,
    committed_points,
    create_pending_point,
    mark_point,
)
from clients.qemu import content_sha256, create_qcow2
from vmferry.backup_plan import BackupPlan, plan_backup
from vmferry.repository import Repository
from vmferry.targets import DiskTarget

log = logging.getLogger(__name__)


@task(cache_policy=NO_CACHE)
def plan_vm_backup(vm: RecordedVM, kind: str, repository: Repository) -> BackupPlan:
    points = committed_points(default_catalog(), vm.vm_context_id, repository.name)
    return plan_backup(vm, kind, points[-1] if points else None, repository)  # type: ignore[arg-type]


@task(retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def open_restore_point(vm: RecordedVM, job_id: str, plan: BackupPlan, repository: Repository) -> int:
    return create_pending_point(
        default_catalog(),
        vm_context_id=vm.vm_context_id,
        job_id=job_id,
        repository=repository.name,
        kind=plan.kind,
        parent_id=plan.parent_id,
    )


@task(cache_policy=NO_CACHE)
def create_backup_targets(vm: RecordedVM, point_id: int, plan: BackupPlan, repository: Repository) -> list[DiskTarget]:
    """The point's ``.partial`` directory with one qcow2 per disk (an overlay on the parent's file if any)."""
    repository.prepare_partial(vm.vm_context_id, point_id)
    targets, planned = [], []
    for disk in plan.disks:
        path = repository.partial_disk_path(vm.vm_context_id, point_id, disk.disk_id)
        backing = repository.absolute(disk.backing_relative_path) if disk.backing_relative_path else None
        create_qcow2(path, disk.capacity_bytes, backing_file=backing)
        os.chmod(path, 0o600)
        targets.append(
            DiskTarget(
                vm_disk_id=disk.vm_disk_id,
                disk_id=disk.disk_id,
                device_key=disk.device_key,
                capacity_bytes=disk.capacity_bytes,
                file_path=path,
                target_is_zero=backing is None,
                previous_change_id=disk.previous_change_id,
            )
        )
        planned.append(
            PlannedDisk(
                vm_disk_id=disk.vm_disk_id,
                disk_generation=disk.generation,
                file_path=repository.relative_disk_path(vm.vm_context_id, point_id, disk.disk_id),
                capacity_bytes=disk.capacity_bytes,
                backing_id=disk.backing_point_disk_id,
            )
        )
    add_point_disks(default_catalog(), point_id, planned)
    return targets


@task(cache_policy=NO_CACHE, task_run_name="checksum-{target.disk_id}")
def checksum_target(target: DiskTarget) -> str:
    return content_sha256(target.file_path)


@task(retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def commit_restore_point(
    vm: RecordedVM, point_id: int, repository: Repository, outcomes: list[DiskOutcome]
) -> PointView:
    """Rename the ``.partial`` directory, then mark the point committed: files first, so a crash in between
    leaves files of a point that is not restorable (the reconciler's to remove), never the reverse."""
    if repository.partial_dir(vm.vm_context_id, point_id).exists():
        repository.commit(vm.vm_context_id, point_id)
    return commit_point(default_catalog(), point_id, outcomes)


def discard_restore_point(repository: Repository, vm_context_id: int, point_id: int) -> None:
    """Compensation: remove the partial files and mark the point failed. Never raises."""
    try:
        repository.discard_partial(vm_context_id, point_id)
    except Exception:
        log.exception("could not remove the partial files of restore point %s", point_id)
    try:
        mark_point(default_catalog(), point_id, "failed")
    except Exception:
        log.exception("could not mark restore point %s failed", point_id)
