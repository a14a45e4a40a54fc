"""How protected each VM is, from the catalog alone: what `vmferry status` shows per VM.

The newest committed restore point and the last complete sync (the oldest of its disks' last syncs: a VM is
only as recent in CloudStack as its least recent disk) are the recovery points an operator actually has;
their ages are computed against ``now``.
"""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel

from catalog.db import Catalog
from catalog.failovers import FailoverView, context_state, latest_failover
from catalog.inventory import RecordedVM
from catalog.models import utcnow
from catalog.replication import volumes_of_vm
from catalog.restore_points import committed_points


class VMProtection(BaseModel):
    vm: str
    vm_context_id: int
    state: str  # discovered, ready-for-failover, failed-over-test, failed-over-live, migrated, ...
    newest_point_id: int | None
    newest_point_at: dt.datetime | None
    newest_point_age_seconds: float | None
    replicated_disks: int
    disks: int
    last_sync_at: dt.datetime | None  # every disk synced at least this recently (None: some never synced)
    last_sync_age_seconds: float | None
    failover: FailoverView | None  # the latest one


def _age(at: dt.datetime | None, now: dt.datetime) -> float | None:
    return None if at is None else max(0.0, (now - at).total_seconds())


def vm_protection(catalog: Catalog, vm: RecordedVM, now: dt.datetime | None = None) -> VMProtection:
    now = now or utcnow()
    points = committed_points(catalog, vm.vm_context_id)
    newest = max(points, key=lambda p: (p.committed_at or p.created_at, p.id), default=None)
    newest_at = (newest.committed_at or newest.created_at) if newest else None
    present = {d.vm_disk_id for d in vm.present_disks()}
    volumes = [v for v in volumes_of_vm(catalog, vm.vm_context_id) if v.vm_disk_id in present]
    synced = [v.last_synced_at for v in volumes if v.last_synced_at is not None]
    last_sync = min(synced) if synced and len(synced) == len(present) else None
    return VMProtection(
        vm=vm.name,
        vm_context_id=vm.vm_context_id,
        state=context_state(catalog, vm.vm_context_id),
        newest_point_id=newest.id if newest else None,
        newest_point_at=newest_at,
        newest_point_age_seconds=_age(newest_at, now),
        replicated_disks=len(synced),
        disks=len(present),
        last_sync_at=last_sync,
        last_sync_age_seconds=_age(last_sync, now),
        failover=latest_failover(catalog, vm.vm_context_id),
    )


def format_age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    minutes = int(seconds // 60)
    if minutes < 1:
        return f"{int(seconds)} s ago"
    if minutes < 120:
        return f"{minutes} min ago"
    hours = minutes // 60
    if hours < 48:
        return f"{hours} h {minutes % 60} min ago"
    return f"{hours // 24} d {hours % 24} h ago"


def format_time(at: dt.datetime | None) -> str:
    return "" if at is None else at.strftime("%Y-%m-%d %H:%M:%S UTC")


def describe_failover(failover: FailoverView | None) -> str:
    if failover is None:
        return "never failed over"
    what = f"{failover.mode} {failover.state}"
    if failover.destination_vm_id:
        what += f" (CloudStack VM {failover.destination_vm_id})"
    when = failover.finished_at or failover.created_at
    return f"{what} since {format_time(when)}" if when else what
