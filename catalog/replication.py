"""Replicated volumes: the one CloudStack volume that receives each source disk, reused by every sync."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from catalog.db import Catalog
from catalog.errors import UnknownRecord
from catalog.models import ReplicatedVolume, VmContext, VmDisk, utcnow
from catalog.views import view


class VolumeView(BaseModel):
    id: int
    vm_disk_id: int
    volume_id: str
    zone_id: str
    size_bytes: int
    disk_generation: int
    state: str
    attached_vm_id: str | None
    device_id: int | None
    device_path: str | None
    last_change_id: str | None
    last_synced_at: dt.datetime | None
    name: str | None = None
    owner_tagged: bool = False
    content_state: str = "unknown"
    content_job_id: str | None = None
    retired_at: dt.datetime | None = None

    def reads_as_zero_for(self, job_id: str) -> bool:
        """Only a volume this very job created and has not written may have zero blocks skipped."""
        return self.content_state == EMPTY and self.content_job_id == job_id

    @property
    def complete(self) -> bool:
        return self.content_state == COMPLETE


EMPTY, COMPLETE, UNKNOWN = "empty", "complete", "unknown"


def _view(row: ReplicatedVolume) -> VolumeView:
    return view(VolumeView, row)


def volume_for_disk(catalog: Catalog, vm_disk_id: int) -> VolumeView | None:
    with catalog.session() as session:
        row = session.scalar(select(ReplicatedVolume).where(ReplicatedVolume.vm_disk_id == vm_disk_id))
        return _view(row) if row else None


def volumes_of_vm(catalog: Catalog, vm_context_id: int, *, retired: bool = False) -> list[VolumeView]:
    """The VM's live volumes (its retired ones with ``retired=True``)."""
    with catalog.session() as session:
        rows = session.scalars(
            select(ReplicatedVolume)
            .join(VmDisk, VmDisk.id == ReplicatedVolume.vm_disk_id)
            .where(VmDisk.vm_context_id == vm_context_id)
            .where(ReplicatedVolume.retired_at.is_not(None) if retired else ReplicatedVolume.retired_at.is_(None))
            .order_by(ReplicatedVolume.vm_disk_id)
        )
        return [_view(row) for row in rows]


def record_volume(
    catalog: Catalog,
    *,
    vm_disk_id: int,
    volume_id: str,
    zone_id: str,
    size_bytes: int,
    disk_generation: int,
    name: str | None = None,
    content_state: str = UNKNOWN,
    content_job_id: str | None = None,
) -> VolumeView:
    """Record the volume made (and tagged) for a disk; idempotent when the same volume is recorded again."""

    def work(session: Session) -> VolumeView:
        row = session.scalar(select(ReplicatedVolume).where(ReplicatedVolume.vm_disk_id == vm_disk_id))
        if row is None:
            row = session.scalar(select(ReplicatedVolume).where(ReplicatedVolume.volume_id == volume_id))
            if row is not None:
                raise UnknownRecord(
                    f"volume {volume_id} is recorded for catalog disk {row.vm_disk_id}, not {vm_disk_id}"
                )
            row = ReplicatedVolume(
                vm_disk_id=vm_disk_id,
                volume_id=volume_id,
                zone_id=zone_id,
                size_bytes=size_bytes,
                disk_generation=disk_generation,
                state="created",
                name=name,
                owner_tagged=True,
                content_state=content_state,
                content_job_id=content_job_id,
            )
            session.add(row)
            session.flush()
        elif row.volume_id != volume_id:
            raise UnknownRecord(f"vm_disk {vm_disk_id} already has volume {row.volume_id}, not {volume_id}")
        return _view(row)

    return catalog.write(work, retry_integrity=True)


def mark_content(catalog: Catalog, volume_ids: list[str], state: str) -> None:
    """Before a copy starts: every target's content is unknown until the copy completes."""

    def work(session: Session) -> None:
        for row in session.scalars(select(ReplicatedVolume).where(ReplicatedVolume.volume_id.in_(volume_ids))):
            row.content_state = state

    catalog.write(work)


def mark_tagged(catalog: Catalog, volume_id: str) -> VolumeView:
    return _update(catalog, volume_id, owner_tagged=True)


def retire_volumes_of_absent_disks(catalog: Catalog, vm_context_id: int) -> list[VolumeView]:
    """Volumes whose disk is gone (removed, or its key recycled) are retired: never written, never adopted."""

    def work(session: Session) -> list[VolumeView]:
        rows = session.scalars(
            select(ReplicatedVolume)
            .join(VmDisk, VmDisk.id == ReplicatedVolume.vm_disk_id)
            .where(VmDisk.vm_context_id == vm_context_id, VmDisk.present.is_(False))
            .where(ReplicatedVolume.retired_at.is_(None))
        )
        retired = []
        for row in rows:
            row.retired_at = utcnow()
            row.state = "retired"
            retired.append(_view(row))
        return retired

    return catalog.write(work)


class UntaggedVolume(BaseModel):
    """A volume recorded before volumes carried owner tags, with what its tags must say."""

    volume: VolumeView
    instance_uuid: str


def untagged_volumes(catalog: Catalog) -> list[UntaggedVolume]:
    with catalog.session() as session:
        rows = session.execute(
            select(ReplicatedVolume, VmContext.instance_uuid)
            .join(VmDisk, VmDisk.id == ReplicatedVolume.vm_disk_id)
            .join(VmContext, VmContext.id == VmDisk.vm_context_id)
            .where(ReplicatedVolume.owner_tagged.is_(False))
            .order_by(ReplicatedVolume.id)
        )
        return [UntaggedVolume(volume=_view(row), instance_uuid=uuid) for row, uuid in rows]


def retired_volumes(catalog: Catalog) -> list[VolumeView]:
    """Every retired volume, for the operator to delete in CloudStack."""
    with catalog.session() as session:
        rows = session.scalars(
            select(ReplicatedVolume).where(ReplicatedVolume.retired_at.is_not(None)).order_by(ReplicatedVolume.id)
        )
        return [_view(row) for row in rows]


def _update(catalog: Catalog, volume_id: str, **values: object) -> VolumeView:
    def work(session: Session) -> VolumeView:
        row = session.scalar(select(ReplicatedVolume).where(ReplicatedVolume.volume_id == volume_id))
        if row is None:
            raise UnknownRecord(f"no replicated volume {volume_id}")
        for name, value in values.items():
            setattr(row, name, value)
        return _view(row)

    return catalog.write(work)


def record_attachment(
    catalog: Catalog, volume_id: str, *, vm_id: str | None, device_id: int | None, device_path: str | None, state: str
) -> VolumeView:
    return _update(catalog, volume_id, attached_vm_id=vm_id, device_id=device_id, device_path=device_path, state=state)


def record_sync(catalog: Catalog, volume_id: str, change_id: str | None) -> VolumeView:
    """The copy into the volume completed: it holds the disk as of ``change_id``."""
    return _update(catalog, volume_id, last_change_id=change_id, last_synced_at=utcnow(), content_state=COMPLETE)


def forget_change_id(catalog: Catalog, volume_id: str) -> VolumeView:
    """The volume was written by something else (a failover VM ran on it, guest preparation changed it): changes
    since its last change id no longer describe what differs, so the next sync compares every block instead."""
    return _update(catalog, volume_id, last_change_id=None)


def recorded_volume_contexts(catalog: Catalog) -> dict[str, int]:
    """Every CloudStack volume id the catalog owns (one per replicated disk), with its VM context."""
    with catalog.session() as session:
        rows = session.execute(
            select(ReplicatedVolume.volume_id, VmDisk.vm_context_id).join(
                VmDisk, VmDisk.id == ReplicatedVolume.vm_disk_id
            )
        )
        return {volume_id: context_id for volume_id, context_id in rows}
