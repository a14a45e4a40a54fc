"""The ledger of qemu-nbd exports: which process serves which disk, on which port, for which job."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from catalog.db import Catalog
from catalog.errors import UnknownRecord
from catalog.models import NbdExport, utcnow
from catalog.views import view


class ExportView(BaseModel):
    id: int
    vm_disk_id: int
    job_id: str
    export_name: str
    bind_address: str
    port: int
    file_path: str
    pid: int | None
    state: str
    created_at: dt.datetime
    stopped_at: dt.datetime | None


def _view(row: NbdExport) -> ExportView:
    return view(ExportView, row)


def record_export(
    catalog: Catalog,
    *,
    vm_disk_id: int,
    job_id: str,
    export_name: str,
    bind_address: str,
    port: int,
    file_path: str,
    hub: str | None = None,
) -> ExportView:
    """Record an export before its process starts, so a crash in between still leaves a trace."""

    def work(session: Session) -> ExportView:
        row = NbdExport(
            vm_disk_id=vm_disk_id,
            job_id=job_id,
            export_name=export_name,
            bind_address=bind_address,
            port=port,
            file_path=file_path,
            hub=hub,
            state="starting",
        )
        session.add(row)
        session.flush()
        return _view(row)

    return catalog.write(work)


def _set(catalog: Catalog, export_id: int, **values: object) -> ExportView:
    def work(session: Session) -> ExportView:
        row = session.get(NbdExport, export_id)
        if row is None:
            raise UnknownRecord(f"nbd export {export_id} does not exist")
        for name, value in values.items():
            setattr(row, name, value)
        return _view(row)

    return catalog.write(work)


def mark_export_running(catalog: Catalog, export_id: int, pid: int) -> ExportView:
    return _set(catalog, export_id, pid=pid, state="running")


def mark_export_stopped(catalog: Catalog, export_id: int, state: str = "stopped") -> ExportView:
    return _set(catalog, export_id, state=state, stopped_at=utcnow())


def exports_for_job(catalog: Catalog, job_id: str) -> list[ExportView]:
    with catalog.session() as session:
        rows = session.scalars(select(NbdExport).where(NbdExport.job_id == job_id).order_by(NbdExport.id))
        return [_view(row) for row in rows]


def live_exports(catalog: Catalog) -> list[ExportView]:
    """Exports not known to be stopped: what the reconciler compares with running processes."""
    with catalog.session() as session:
        rows = session.scalars(
            select(NbdExport).where(NbdExport.state.in_(("starting", "running"))).order_by(NbdExport.id)
        )
        return [_view(row) for row in rows]
