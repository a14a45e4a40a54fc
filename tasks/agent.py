"""Calling the agent: submit one job for all disks, follow it with progress artifacts, cancel it."""

from __future__ import annotations

import concurrent.futures
import contextvars
import logging
import time
from collections.abc import Callable

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from blocks.agent import Agent
from catalog import default_catalog
from catalog.resources import mark_snapshot_removed, record_snapshot
from common.contract import JobRequest, JobStatus
from orchestration.runs import describe_progress
from vmferry.errors import retry_unless_permanent
from vmferry.progress import CopyProgress, DiskCopyProgress, publish

log = logging.getLogger(__name__)


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
def follow_agent_job(
    agent: Agent,
    job_id: str,
    disk_labels: dict[int, str],
    timeout: float,
    on_disk_done: Callable[[int], None] | None = None,
) -> JobStatus:
    """Wait for the agent job, showing one progress artifact per disk; raises unless it succeeded.

    The one follower of the job: every status it reads is also published (vmferry/progress.py) to whoever
    listens in this process, such as the ``vmferry`` command's progress bars. ``on_disk_done`` is called (in
    this thread) with a disk's key once, when the agent reports the disk done, which may be before the other
    disks and the job are.
    """
    artifacts: dict[int, object] = {}
    shown: dict[int, float] = {}  # the progress each disk's artifact shows
    done: set[int] = set()
    last_update = 0.0
    started = time.monotonic()
    snapshot = SnapshotLedger(job_id)
    # Progress artifacts are API calls (each a round trip to the Prefect server, a second each on a loaded
    # machine): made on a thread of their own, so the long polls go on meanwhile and a disk done or the job's
    # end is noticed at once. The copied context keeps them linked to this task run.
    publisher = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="progress")
    context = contextvars.copy_context()
    publishing: concurrent.futures.Future[None] | None = None

    def send_artifacts(rows: list[tuple[int, float, str]]) -> None:
        try:
            for key, percent, description in rows:
                if key not in artifacts:
                    artifacts[key] = create_progress_artifact(progress=percent, description=description)
                else:
                    update_progress_artifact(artifacts[key], progress=percent, description=description)
                shown[key] = percent
        except Exception as exc:  # progress is for people watching: its failure must not fail the copy
            log.warning("progress artifacts of agent job %s not updated: %s", job_id, exc)

    def show(status: JobStatus) -> None:
        nonlocal last_update, publishing
        snapshot.follow(status)
        publish(copy_progress(status, disk_labels))
        if on_disk_done is not None:
            for disk in status.disks:
                if disk.state == "done" and disk.device_key not in done:
                    done.add(disk.device_key)
                    on_disk_done(disk.device_key)
        now = time.monotonic()
        if not status.finished and (now - last_update < 1.0 or (publishing is not None and not publishing.done())):
            return  # at most one round per second, and none while the previous one is still being sent
        last_update = now
        rows = []
        for disk in status.disks:
            percent = 100.0 * disk.bytes_done / disk.bytes_total if disk.bytes_total else 0.0
            label = f"copy of {disk_labels.get(disk.device_key, disk.device_key)}"
            description = describe_progress(label, disk.bytes_done, disk.bytes_total, now - started)
            if status.finished and shown.get(disk.device_key) == percent:
                continue  # a disk done earlier already shows its end
            rows.append((disk.device_key, percent, description))
        publishing = publisher.submit(context.run, send_artifacts, rows)

    try:
        with agent.client() as client:
            return client.wait(job_id, timeout=timeout, on_progress=show)
    finally:
        publisher.shutdown(wait=True)


def copy_progress(status: JobStatus, disk_labels: dict[int, str]) -> CopyProgress:
    disks = tuple(
        DiskCopyProgress(
            d.device_key, disk_labels.get(d.device_key, f"disk-{d.device_key}"), d.bytes_done, d.bytes_total
        )
        for d in status.disks
    )
    return CopyProgress(job_id=status.job_id, disks=disks, finished=status.finished)


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
