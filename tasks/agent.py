"""Calling the agent: submit one job for all disks, follow it with progress artifacts, cancel it."""

from __future__ import annotations

import time

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from agent.contract import JobRequest, JobStatus
from blocks.agent import Agent
from catalog import default_catalog
from catalog.resources import mark_snapshot_removed, record_snapshot
from vmferry.errors import retry_unless_permanent
from vmferry.runs import describe_progress


@task(
    retries=2,
    retry_delay_seconds=2,
    cache_policy=NO_CACHE,
    retry_condition_fn=retry_unless_permanent,
    task_run_name="agent-submit-{request.job_id}",
)
def submit_agent_job(agent: Agent, request: JobRequest) -> JobStatus:
    """Safe to retry: the agent is idempotent on job_id."""
    with agent.client() as client:
        return client.submit(request)


@task(cache_policy=NO_CACHE, task_run_name="agent-follow-{job_id}")
def follow_agent_job(agent: Agent, job_id: str, disk_labels: dict[int, str], timeout: float) -> JobStatus:
    """Wait for the agent job, showing one progress artifact per disk; raises unless it succeeded."""
    artifacts: dict[int, object] = {}
    last_update = 0.0
    started = time.monotonic()
    snapshot = SnapshotLedger(job_id)

    def show(status: JobStatus) -> None:
        nonlocal last_update
        snapshot.follow(status)
        now = time.monotonic()
        if now - last_update < 1.0 and not status.finished:
            return  # each update is an API call: at most one round per second
        last_update = now
        for disk in status.disks:
            percent = 100.0 * disk.bytes_done / disk.bytes_total if disk.bytes_total else 0.0
            label = f"copy of {disk_labels.get(disk.disk_key, disk.disk_key)}"
            description = describe_progress(label, disk.bytes_done, disk.bytes_total, now - started)
            if disk.disk_key not in artifacts:
                artifacts[disk.disk_key] = create_progress_artifact(progress=percent, description=description)
            else:
                update_progress_artifact(artifacts[disk.disk_key], progress=percent, description=description)

    with agent.client() as client:
        return client.wait(job_id, timeout=timeout, on_progress=show)


class SnapshotLedger:
    """Records in the catalog the snapshot the agent reports for a job (by moref), and when it is gone."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.recorded: str | None = None
        self.removed = False

    def follow(self, status: JobStatus) -> None:
        if status.snapshot_moref and self.recorded != status.snapshot_moref:
            record_snapshot(
                default_catalog(),
                self.job_id,
                vm_moref=status.vm,
                snapshot_moref=status.snapshot_moref,
                name=status.snapshot_name or "",
            )
            self.recorded = status.snapshot_moref
        if self.recorded and status.snapshot_removed and not self.removed:
            mark_snapshot_removed(default_catalog(), self.recorded)
            self.removed = True


@task(retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE, retry_condition_fn=retry_unless_permanent)
def cancel_agent_job(agent: Agent, job_id: str) -> JobStatus:
    with agent.client() as client:
        return client.cancel(job_id)
