"""Deciding what a backup writes: full or incremental, and each disk's target and backing file."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from catalog.inventory import RecordedVM
from catalog.restore_points import PointView
from vmferry.errors import Refused
from vmferry.repository import Repository


class BackupRefused(Refused):
    """The requested backup cannot be made; the message says why and what to do."""


class PlannedDiskBackup(BaseModel):
    vm_disk_id: int
    disk_id: str
    device_key: int
    capacity_bytes: int
    generation: int
    backing_point_disk_id: int | None = None
    backing_relative_path: str | None = None  # relative to the repository root
    previous_change_id: str | None = None


class BackupPlan(BaseModel):
    kind: Literal["full", "incremental"]
    reason: str
    parent_id: int | None
    disks: list[PlannedDiskBackup]


def _chain_problem(vm: RecordedVM, previous: PointView | None, repository: Repository) -> str | None:
    """Why an incremental on top of ``previous`` would be wrong, or None when the chain is valid."""
    if previous is None:
        return "no previous restore point in this repository"
    earlier = {d.vm_disk_id: d for d in previous.disks}
    for disk in vm.present_disks():
        before = earlier.get(disk.vm_disk_id)
        if before is None:
            return f"disk {disk.disk_id} is not in restore point {previous.id} (new or replaced disk)"
        if before.disk_generation != disk.generation or before.capacity_bytes != disk.capacity_bytes:
            return f"disk {disk.disk_id} changed size since restore point {previous.id}"
        if not repository.absolute(before.file_path).is_file():
            return f"file {before.file_path} of restore point {previous.id} is missing"
    return None


def plan_backup(
    vm: RecordedVM,
    requested: Literal["full", "incremental", "auto"],
    previous: PointView | None,
    repository: Repository,
) -> BackupPlan:
    problem = _chain_problem(vm, previous, repository) if requested != "full" else "a full backup was asked for"
    if problem is not None and requested == "incremental":
        raise BackupRefused(f"VM {vm.name!r}: an incremental backup needs a valid chain, but {problem}; use kind=auto")
    if problem is not None:
        return BackupPlan(
            kind="full",
            reason=problem,
            parent_id=None,
            disks=[
                PlannedDiskBackup(
                    vm_disk_id=d.vm_disk_id,
                    disk_id=d.disk_id,
                    device_key=d.device_key,
                    capacity_bytes=d.capacity_bytes,
                    generation=d.generation,
                )
                for d in vm.present_disks()
            ],
        )
    assert previous is not None
    earlier = {d.vm_disk_id: d for d in previous.disks}
    return BackupPlan(
        kind="incremental",
        reason=f"on top of restore point {previous.id}",
        parent_id=previous.id,
        disks=[
            PlannedDiskBackup(
                vm_disk_id=d.vm_disk_id,
                disk_id=d.disk_id,
                device_key=d.device_key,
                capacity_bytes=d.capacity_bytes,
                generation=d.generation,
                backing_point_disk_id=earlier[d.vm_disk_id].id,
                backing_relative_path=earlier[d.vm_disk_id].file_path,
                previous_change_id=earlier[d.vm_disk_id].change_id,
            )
            for d in vm.present_disks()
        ],
    )
