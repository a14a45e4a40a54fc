"""Failover records: which destination VM, which volume on which device (planned and read back)."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel
from sqlalchemy import select, update
from sqlalchemy.orm import Session, selectinload

from catalog.db import Catalog
from catalog.errors import UnknownRecord
from catalog.models import Failover, FailoverVolume, VmContext, utcnow
from catalog.views import view

ACTIVE_STATES = ("in-progress", "active")
READY_FOR_FAILOVER = "ready-for-failover"
# A committed live failover: the VM lives in CloudStack, its source is retired and replication has stopped.
MIGRATED = "migrated"
# A live failover powered the source off and did not finish (killed, or failed after the power-off): neither
# side runs the VM. Never "ready": the operator has to decide (fail over again, or power the source on).
SOURCE_OFF_UNFINISHED = "source-off-failover-unfinished"


class FailoverVolumeView(BaseModel):
    vm_disk_id: int
    replicated_volume_id: int
    planned_device_id: int
    actual_device_id: int | None
    is_root: bool


class FailoverView(BaseModel):
    id: int
    vm_context_id: int
    job_id: str
    mode: str
    destination_vm_id: str | None
    state: str
    volumes: list[FailoverVolumeView]
    created_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None


def _view(row: Failover) -> FailoverView:
    volumes = sorted(row.volumes, key=lambda v: v.planned_device_id)
    return view(FailoverView, row, volumes=[view(FailoverVolumeView, v) for v in volumes])


def _load(session: Session, failover_id: int) -> Failover:
    row = session.scalar(select(Failover).where(Failover.id == failover_id).options(selectinload(Failover.volumes)))
    if row is None:
        raise UnknownRecord(f"failover {failover_id} does not exist")
    return row


def start_failover(catalog: Catalog, vm_context_id: int, job_id: str, mode: str) -> int:
    def work(session: Session) -> int:
        row = Failover(vm_context_id=vm_context_id, job_id=job_id, mode=mode, state="in-progress")
        session.add(row)
        session.execute(update(VmContext).where(VmContext.id == vm_context_id).values(state=f"failing-over-{mode}"))
        session.flush()
        return row.id

    return catalog.write(work)


def get_failover(catalog: Catalog, failover_id: int) -> FailoverView:
    with catalog.session() as session:
        return _view(_load(session, failover_id))


def unfinished_failovers(catalog: Catalog) -> list[FailoverView]:
    """Failovers still ``in-progress``: running ones, and ones whose process died (the reconciler judges)."""
    with catalog.session() as session:
        rows = session.scalars(
            select(Failover)
            .where(Failover.state == "in-progress")
            .options(selectinload(Failover.volumes))
            .order_by(Failover.id)
        )
        return [_view(row) for row in rows]


def set_destination(catalog: Catalog, failover_id: int, vm_id: str) -> None:
    def work(session: Session) -> None:
        _load(session, failover_id).destination_vm_id = vm_id

    catalog.write(work)


def record_devices(catalog: Catalog, failover_id: int, volumes: list[FailoverVolumeView]) -> FailoverView:
    def work(session: Session) -> FailoverView:
        row = _load(session, failover_id)
        row.volumes.clear()
        session.flush()
        for volume in volumes:
            row.volumes.append(FailoverVolume(**volume.model_dump()))
        session.flush()
        return _view(row)

    return catalog.write(work)


def finish_failover(catalog: Catalog, failover_id: int, state: str, context_state: str) -> None:
    def work(session: Session) -> None:
        row = _load(session, failover_id)
        row.state = state
        row.finished_at = utcnow()
        session.execute(update(VmContext).where(VmContext.id == row.vm_context_id).values(state=context_state))

    catalog.write(work)


def set_context_state(catalog: Catalog, vm_context_id: int, state: str) -> None:
    catalog.write(
        lambda session: session.execute(update(VmContext).where(VmContext.id == vm_context_id).values(state=state))
    )


def context_after_rollback(catalog: Catalog, vm_context_id: int) -> str:
    """What a VM context is once an unfinished failover is undone: ready again, unless a live failover had
    powered the source off (then the source is still off, and the context says so)."""
    current = context_state(catalog, vm_context_id)
    return SOURCE_OFF_UNFINISHED if current == SOURCE_OFF_UNFINISHED else READY_FOR_FAILOVER


def failovers_of(catalog: Catalog, vm_context_id: int) -> list[FailoverView]:
    with catalog.session() as session:
        rows = session.scalars(
            select(Failover)
            .where(Failover.vm_context_id == vm_context_id)
            .options(selectinload(Failover.volumes))
            .order_by(Failover.id)
        )
        return [_view(row) for row in rows]


def context_state(catalog: Catalog, vm_context_id: int) -> str:
    with catalog.session() as session:
        context = session.get(VmContext, vm_context_id)
        if context is None:
            raise UnknownRecord(f"vm context {vm_context_id} does not exist")
        return context.state


def latest_failover(catalog: Catalog, vm_context_id: int) -> FailoverView | None:
    history = failovers_of(catalog, vm_context_id)
    return history[-1] if history else None
