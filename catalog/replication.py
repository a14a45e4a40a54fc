"""Replicated volumes: the one CloudStack volume that receives each source disk, reused by every sync."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from catalog.db import Catalog
from catalog.errors import UnknownRecord
from catalog.models import ReplicatedVolume, VmDisk, utcnow


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


def _view(row: ReplicatedVolume) -> VolumeView:
    return VolumeView(
        id=row.id,
        vm_disk_id=row.vm_disk_id,
        volume_id=row.volume_id,
        zone_id=row.zone_id,
        size_bytes=row.size_bytes,
        disk_generation=row.disk_generation,
        state=row.state,
        attached_vm_id=row.attached_vm_id,
        device_id=row.device_id,
        device_path=row.device_path,
        last_change_id=row.last_change_id,
        last_synced_at=row.last_synced_at,
    )


def volume_for_disk(catalog: Catalog, vm_disk_id: int) -> VolumeView | None:
    with catalog.session() as session:
        row = session.scalar(select(ReplicatedVolume).where(ReplicatedVolume.vm_disk_id == vm_disk_id))
        return _view(row) if row else None


def volumes_of_vm(catalog: Catalog, vm_context_id: int) -> list[VolumeView]:
    with catalog.session() as session:
        rows = session.scalars(
            select(ReplicatedVolume)
            .join(VmDisk, VmDisk.id == ReplicatedVolume.vm_disk_id)
            .where(VmDisk.vm_context_id == vm_context_id)
            .order_by(ReplicatedVolume.vm_disk_id)
        )
        return [_view(row) for row in rows]


def record_volume(
    catalog: Catalog, *, vm_disk_id: int, volume_id: str, zone_id: str, size_bytes: int, disk_generation: int
) -> VolumeView:
    """Record the volume made for a disk; idempotent when the same volume is recorded again."""

    def work(session: Session) -> VolumeView:
        row = session.scalar(select(ReplicatedVolume).where(ReplicatedVolume.vm_disk_id == vm_disk_id))
        if row is None:
            row = ReplicatedVolume(
                vm_disk_id=vm_disk_id,
                volume_id=volume_id,
                zone_id=zone_id,
                size_bytes=size_bytes,
                disk_generation=disk_generation,
                state="created",
            )
            session.add(row)
            session.flush()
        elif row.volume_id != volume_id:
            raise UnknownRecord(f"vm_disk {vm_disk_id} already has volume {row.volume_id}, not {volume_id}")
        return _view(row)

    return catalog.write(work, retry_integrity=True)


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
    return _update(catalog, volume_id, last_change_id=change_id, last_synced_at=utcnow())


def forget_change_id(catalog: Catalog, volume_id: str) -> VolumeView:
    """The volume was (or may have been) written outside replication: the next sync compares every block."""
    return _update(catalog, volume_id, last_change_id=None)


def recorded_volume_ids(catalog: Catalog) -> set[str]:
    """Every CloudStack volume id the catalog owns (one per replicated disk)."""
    with catalog.session() as session:
        return set(session.scalars(select(ReplicatedVolume.volume_id)))
