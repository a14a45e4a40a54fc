"""Prefect flow state hooks shared by every flow that opens a job row. Signature: ``hook(flow, flow_run, state)``.

- ``record_flow_run_process`` (on_running) writes this process's identity into the flow run's
  ``infrastructure_pid``, so the reconciler can tell a flow run Prefect still calls Running from one whose
  process is gone (SIGKILL, OOM, reboot run no hook at all).
- ``mark_jobs_crashed`` (on_crashed) and ``mark_jobs_cancelled`` (on_cancellation) mark failed every job row of
  the flow run that is still running, so a crashed or cancelled flow does not leave "running" jobs behind.

The hooks are client-side and best effort (Prefect runs them in the flow's process, or in the runner's for a
cancellation it supervises); the reconciler covers what they cannot. Prefect is imported inside the one
hook that talks to its API, so importing this module stays cheap and Prefect-free.
"""

from __future__ import annotations

import logging
from typing import Any

from catalog import default_catalog
from catalog.jobs import fail_running_jobs_of_flow_run
from vmferry.reconcile import parse_process_identity, process_identity

log = logging.getLogger(__name__)


def record_flow_run_process(flow: Any, flow_run: Any, state: Any) -> None:
    """on_running: record ``<host>:<pid>:<start ticks>`` of this process on the flow run.

    Never overwrites an identity somebody else wrote (a worker's container or pid): only an empty one or
    our own, so a run resumed in a new process records its new process.
    """
    current = flow_run.infrastructure_pid
    if current and parse_process_identity(current) is None:
        return
    identity = process_identity()
    if current == identity:
        return
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.update_flow_run(flow_run.id, infrastructure_pid=identity)


def _fail_jobs(flow: Any, flow_run: Any, outcome: str, state: Any) -> list[str]:
    error = f"{outcome}: {state.message or state.name}"
    failed = fail_running_jobs_of_flow_run(default_catalog(), str(flow_run.id), error)
    if failed:
        from prefect.logging.loggers import flow_run_logger

        flow_run_logger(flow_run, flow).warning("flow run %s: marked job(s) %s failed (%s)", outcome, failed, error)
    return failed


def mark_jobs_crashed(flow: Any, flow_run: Any, state: Any) -> None:
    """on_crashed: the flow run's still-running jobs become failed ("crashed: <Prefect's message>")."""
    _fail_jobs(flow, flow_run, "crashed", state)


def mark_jobs_cancelled(flow: Any, flow_run: Any, state: Any) -> None:
    """on_cancellation: the flow run's still-running jobs become failed ("cancelled: <Prefect's message>")."""
    _fail_jobs(flow, flow_run, "cancelled", state)


# What every job-opening flow passes to @flow (one place, so no flow forgets one of the three).
ON_RUNNING = [record_flow_run_process]
ON_CRASHED = [mark_jobs_crashed]
ON_CANCELLATION = [mark_jobs_cancelled]
