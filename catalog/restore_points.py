"""Restore points: a VM-level backup with one row per disk. Only ``committed`` points are restorable.

A point is created ``pending`` when its backup starts (its id names its directory), gets its disks as they
are planned, and becomes ``committed`` in one transaction once every disk was copied and checksummed; a
failed backup marks it ``failed``. Pruning marks it ``pruned`` after its files are gone.
"""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from catalog.db import Catalog
from catalog.errors import CatalogError, UnknownRecord
from catalog.models import RestorePoint, RestorePointDisk, VmDisk, utcnow
from catalog.views import view
from common.names import original_disk_id


class PointDiskView(BaseModel):
    id: int
    vm_disk_id: int
    disk_id: str
    device_key: int
    disk_generation: int
    file_path: str
    backing_id: int | None
    capacity_bytes: int
    bytes_written: int | None
    change_id: str | None
    checksum: str | None
    content_state: str = "unknown"  # "empty" (just created by the point's job), "complete" (committed)


class PointView(BaseModel):
    id: int
    vm_context_id: int
    job_id: str
    parent_id: int | None
    repository: str
    kind: str
    state: str
    created_at: dt.datetime
    committed_at: dt.datetime | None
    disks: list[PointDiskView]

    def disk(self, disk_id: str) -> PointDiskView:
        for disk in self.disks:
            if disk.disk_id == disk_id or str(disk.vm_disk_id) == disk_id:
                return disk
        raise UnknownRecord(
            f"restore point {self.id} has no disk {disk_id!r}; it has {[d.disk_id for d in self.disks]}"
        )


def _view(session: Session, point: RestorePoint) -> PointView:
    disk_rows = {d.id: d for d in session.scalars(select(VmDisk).where(VmDisk.vm_context_id == point.vm_context_id))}
    disks = [
        view(
            PointDiskView,
            d,
            # a retired disk keeps its original id in restore listings
            disk_id=original_disk_id(disk_rows[d.vm_disk_id].disk_id),
            device_key=disk_rows[d.vm_disk_id].device_key,
        )
        for d in sorted(point.disks, key=lambda d: d.vm_disk_id)
    ]
    return view(PointView, point, disks=disks)


def _load(session: Session, point_id: int) -> RestorePoint:
    point = session.scalar(
        select(RestorePoint).where(RestorePoint.id == point_id).options(selectinload(RestorePoint.disks))
    )
    if point is None:
        raise UnknownRecord(f"restore point {point_id} does not exist")
    return point


class PlannedDisk(BaseModel):
    vm_disk_id: int
    disk_generation: int
    file_path: str
    capacity_bytes: int
    backing_id: int | None = None


def create_pending_point(
    catalog: Catalog,
    *,
    vm_context_id: int,
    job_id: str,
    repository: str,
    kind: str,
    parent_id: int | None,
) -> int:
    def work(session: Session) -> int:
        point = RestorePoint(
            vm_context_id=vm_context_id,
            job_id=job_id,
            repository=repository,
            kind=kind,
            parent_id=parent_id,
            state="pending",
        )
        session.add(point)
        session.flush()
        return point.id

    return catalog.write(work)


def add_point_disks(catalog: Catalog, point_id: int, disks: list[PlannedDisk]) -> PointView:
    def work(session: Session) -> PointView:
        point = _load(session, point_id)
        if point.state != "pending":
            raise CatalogError(f"restore point {point_id} is {point.state}; disks are added only while pending")
        for disk in disks:
            # the point's job has just created the file: a new qcow2 reads as zeros, an overlay as its parent
            state = "empty" if disk.backing_id is None else "unknown"
            point.disks.append(RestorePointDisk(**disk.model_dump(), content_state=state))
        session.flush()
        return _view(session, point)

    return catalog.write(work)


class DiskOutcome(BaseModel):
    vm_disk_id: int
    bytes_written: int
    change_id: str | None
    checksum: str


def commit_point(catalog: Catalog, point_id: int, outcomes: list[DiskOutcome]) -> PointView:
    """Make a pending point restorable: every disk must have its outcome, in the same transaction."""

    def work(session: Session) -> PointView:
        point = _load(session, point_id)
        if point.state != "pending":
            raise CatalogError(f"restore point {point_id} is {point.state}, not pending")
        by_disk = {o.vm_disk_id: o for o in outcomes}
        missing = sorted(d.vm_disk_id for d in point.disks if d.vm_disk_id not in by_disk)
        if missing or len(by_disk) != len(point.disks):
            raise CatalogError(f"restore point {point_id}: no outcome for disk(s) {missing}; not committing")
        for disk in point.disks:
            outcome = by_disk[disk.vm_disk_id]
            disk.bytes_written = outcome.bytes_written
            disk.change_id = outcome.change_id
            disk.checksum = outcome.checksum
            disk.content_state = "complete"
        point.state = "committed"
        point.committed_at = utcnow()
        session.flush()
        return _view(session, point)

    return catalog.write(work)


def mark_point(catalog: Catalog, point_id: int, state: str) -> None:
    def work(session: Session) -> None:
        _load(session, point_id).state = state

    catalog.write(work)


def get_point(catalog: Catalog, point_id: int) -> PointView:
    with catalog.session() as session:
        return _view(session, _load(session, point_id))


def committed_points(catalog: Catalog, vm_context_id: int, repository: str | None = None) -> list[PointView]:
    """The VM's restorable points, oldest first."""
    with catalog.session() as session:
        query = (
            select(RestorePoint)
            .where(RestorePoint.vm_context_id == vm_context_id, RestorePoint.state == "committed")
            .options(selectinload(RestorePoint.disks))
            .order_by(RestorePoint.id)
        )
        if repository is not None:
            query = query.where(RestorePoint.repository == repository)
        return [_view(session, point) for point in session.scalars(query)]


def points_in_state(catalog: Catalog, state: str) -> list[PointView]:
    with catalog.session() as session:
        query = select(RestorePoint).where(RestorePoint.state == state).options(selectinload(RestorePoint.disks))
        return [_view(session, point) for point in session.scalars(query)]


def find_point(catalog: Catalog, point_id: int) -> PointView | None:
    """The point, or None when the catalog has no such point (a stray directory's id)."""
    with catalog.session() as session:
        point = session.scalar(
            select(RestorePoint).where(RestorePoint.id == point_id).options(selectinload(RestorePoint.disks))
        )
        return _view(session, point) if point is not None else None


def fail_pending_point(catalog: Catalog, point_id: int) -> bool:
    """Mark a point failed only while it is pending: a point committed meanwhile stays committed."""

    def work(session: Session) -> bool:
        point = session.get(RestorePoint, point_id)
        if point is None or point.state != "pending":
            return False
        point.state = "failed"
        return True

    return catalog.write(work)
