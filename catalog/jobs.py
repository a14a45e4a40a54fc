"""Job rows: what ran, for which VM, how it ended. Leases and exports name their owning job."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Literal

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from catalog.db import Catalog
from catalog.errors import UnknownRecord
from catalog.models import Job, utcnow
from catalog.views import view

JobKind = Literal[
    "discovery", "copy", "backup", "restore", "replication", "failover", "commit", "revert", "cleanup", "reconcile"
]
JobState = Literal["pending", "running", "succeeded", "failed", "cancelled"]
FINISHED_STATES = ("succeeded", "failed", "cancelled")


class JobView(BaseModel):
    id: str
    kind: str
    vm_context_id: int | None
    state: str
    error: str | None
    flow_run_id: str | None
    created_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None


def _view(job: Job) -> JobView:
    return view(JobView, job)


def create_job(
    catalog: Catalog,
    kind: JobKind,
    *,
    vm_context_id: int | None = None,
    flow_run_id: str | None = None,
    hub: str | None = None,
    job_id: str | None = None,
) -> str:
    """Create a running job. Idempotent on ``job_id``: a retried task gets the same row back."""
    new_id = job_id or str(uuid.uuid4())

    def work(session: Session) -> str:
        if session.get(Job, new_id) is None:
            session.add(
                Job(
                    id=new_id,
                    kind=kind,
                    vm_context_id=vm_context_id,
                    flow_run_id=flow_run_id,
                    hub=hub,
                    state="running",
                    started_at=utcnow(),
                )
            )
        return new_id

    return catalog.write(work, retry_integrity=True)


def finish_job(catalog: Catalog, job_id: str, state: JobState, error: str | None = None) -> None:
    if state not in FINISHED_STATES:
        raise ValueError(f"{state!r} is not a finished state; use one of {FINISHED_STATES}")

    def work(session: Session) -> None:
        job = session.get(Job, job_id)
        if job is None:
            raise UnknownRecord(f"job {job_id} does not exist")
        job.state = state
        job.error = error
        job.finished_at = utcnow()

    catalog.write(work)


def get_job(catalog: Catalog, job_id: str) -> JobView:
    with catalog.session() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise UnknownRecord(f"job {job_id} does not exist")
        return _view(job)


def list_jobs(catalog: Catalog, *, limit: int = 50) -> list[JobView]:
    with catalog.session() as session:
        jobs = session.scalars(select(Job).order_by(Job.created_at.desc()).limit(limit)).all()
        return [_view(job) for job in jobs]


def running_jobs(catalog: Catalog) -> list[JobView]:
    """Every job row in state ``running``: what the reconciler has to judge alive or crashed."""
    with catalog.session() as session:
        jobs = session.scalars(select(Job).where(Job.state == "running").order_by(Job.created_at)).all()
        return [_view(job) for job in jobs]


def fail_running_job(catalog: Catalog, job_id: str, error: str) -> bool:
    """Mark a job failed only if it is still running: a job that closed itself meanwhile keeps its outcome."""

    def work(session: Session) -> bool:
        job = session.get(Job, job_id)
        if job is None or job.state != "running":
            return False
        job.state = "failed"
        job.error = error
        job.finished_at = utcnow()
        return True

    return catalog.write(work)


def fail_running_jobs_of_flow_run(catalog: Catalog, flow_run_id: str, error: str) -> list[str]:
    """Mark failed every job of a flow run that is still running (a crashed or cancelled flow's jobs)."""

    def work(session: Session) -> list[str]:
        jobs = session.scalars(select(Job).where(Job.flow_run_id == flow_run_id, Job.state == "running")).all()
        for job in jobs:
            job.state = "failed"
            job.error = error
            job.finished_at = utcnow()
        return [job.id for job in jobs]

    return catalog.write(work)
