"""Job bookkeeping tasks: every flow opens a job row and closes it with its outcome."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from catalog import default_catalog
from catalog.jobs import JobKind, JobState, create_job, finish_job


@task(retries=3, retry_delay_seconds=1, cache_policy=NO_CACHE)
def open_job(kind: JobKind, vm_context_id: int | None = None) -> str:
    run_id = flow_run.get_id()
    return create_job(default_catalog(), kind, vm_context_id=vm_context_id, flow_run_id=run_id)


@task(retries=3, retry_delay_seconds=1, cache_policy=NO_CACHE)
def close_job(job_id: str, state: JobState, error: str | None = None) -> None:
    finish_job(default_catalog(), job_id, state, error)
