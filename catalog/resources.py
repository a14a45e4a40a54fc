"""The ledger of what a job creates outside the catalog: output files, temp directories, processes, snapshots.

A resource is recorded (``planned``) before it exists and marked ``removed`` when its job removed it, so a
job killed at any point leaves a row the reconciler can act on; a file or process no row names is not ours.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from catalog.db import Catalog
from catalog.errors import UnknownRecord
from catalog.models import JobResource, utcnow
from catalog.views import view

ResourceKind = Literal["file", "directory", "qemu-nbd", "snapshot"]


class ResourceView(BaseModel):
    id: int
    job_id: str
    kind: str
    path: str | None
    pid: int | None
    ref: str | None
    owner_ref: str | None
    state: str
    created_at: dt.datetime


def _view(row: JobResource) -> ResourceView:
    return view(ResourceView, row)


def plan_resource(
    catalog: Catalog,
    job_id: str,
    kind: ResourceKind,
    *,
    path: str | None = None,
    ref: str | None = None,
    owner_ref: str | None = None,
    hub: str | None = None,
) -> int:
    """Record a resource the job is about to create; call it before creating it."""

    def work(session: Session) -> int:
        row = JobResource(job_id=job_id, kind=kind, path=path, ref=ref, owner_ref=owner_ref, hub=hub)
        row.state = "planned"
        session.add(row)
        session.flush()
        return row.id

    return catalog.write(work)


def _set(catalog: Catalog, resource_id: int, **values: object) -> None:
    def work(session: Session) -> None:
        row = session.get(JobResource, resource_id)
        if row is None:
            raise UnknownRecord(f"job resource {resource_id} does not exist")
        for name, value in values.items():
            setattr(row, name, value)

    catalog.write(work)


def mark_resource_present(catalog: Catalog, resource_id: int, *, pid: int | None = None) -> None:
    _set(catalog, resource_id, state="present", **({"pid": pid} if pid is not None else {}))


def mark_resource_removed(catalog: Catalog, resource_id: int) -> None:
    _set(catalog, resource_id, state="removed", removed_at=utcnow())


def record_snapshot(catalog: Catalog, job_id: str, *, vm_moref: str, snapshot_moref: str, name: str) -> None:
    """The snapshot an agent took for this job (its moref, as the agent reported it). Idempotent."""

    def work(session: Session) -> None:
        existing = session.scalar(
            select(JobResource).where(
                JobResource.job_id == job_id, JobResource.kind == "snapshot", JobResource.ref == snapshot_moref
            )
        )
        if existing is None:
            session.add(
                JobResource(
                    job_id=job_id, kind="snapshot", ref=snapshot_moref, owner_ref=vm_moref, path=name, state="present"
                )
            )

    catalog.write(work)


def mark_snapshot_removed(catalog: Catalog, snapshot_moref: str) -> None:
    """The snapshot is gone (removed by its agent, the hub or the reconciler)."""

    def work(session: Session) -> None:
        rows = session.scalars(
            select(JobResource).where(
                JobResource.kind == "snapshot", JobResource.ref == snapshot_moref, JobResource.state != "removed"
            )
        )
        for row in rows:
            row.state = "removed"
            row.removed_at = utcnow()

    catalog.write(work)


def live_resources(catalog: Catalog, kind: ResourceKind | None = None) -> list[ResourceView]:
    """Resources not known to be removed: what the reconciler checks against their jobs."""
    with catalog.session() as session:
        query = select(JobResource).where(JobResource.state != "removed")
        if kind is not None:
            query = query.where(JobResource.kind == kind)
        return [_view(row) for row in session.scalars(query.order_by(JobResource.id))]


def resources_of_job(catalog: Catalog, job_id: str) -> list[ResourceView]:
    with catalog.session() as session:
        rows = session.scalars(select(JobResource).where(JobResource.job_id == job_id).order_by(JobResource.id))
        return [_view(row) for row in rows]
