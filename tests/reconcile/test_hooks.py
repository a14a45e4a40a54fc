"""A crashed or cancelled flow marks its running job rows failed; every flow records the process it runs in."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.sorting import FlowRunSort
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL
from prefect.states import Cancelling

from catalog.jobs import get_job, list_jobs
from flows.backup import backup_vm
from flows.cleanup import cleanup_failover
from flows.copy import copy_vm_disks
from flows.discover import discover
from flows.failover import failover_vm
from flows.reconcile import reconcile
from flows.replicate import replicate_vm
from orchestration.hooks import mark_jobs_cancelled, mark_jobs_crashed, record_flow_run_process
from tests.reconcile.hook_flows import Meltdown, crashing_job
from vmferry.reconcile import process_identity

pytestmark = pytest.mark.usefixtures("prefect_backend")

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "job_flow", [backup_vm, copy_vm_disks, replicate_vm, failover_vm, cleanup_failover, discover, reconcile]
)
def test_every_job_opening_flow_carries_the_hooks(job_flow):
    assert job_flow.on_running_hooks == [record_flow_run_process]
    assert job_flow.on_crashed_hooks == [mark_jobs_crashed]
    assert job_flow.on_cancellation_hooks == [mark_jobs_cancelled]


def _flow_run(flow_run_id: str):
    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(flow_run_id)])),
            sort=FlowRunSort.ID_DESC,
            limit=1,
        )
        return run


def test_a_crashed_flow_marks_its_job_failed(configured_catalog):
    with pytest.raises(Meltdown):
        crashing_job()
    (job,) = list_jobs(configured_catalog)
    assert job.state == "failed"
    assert job.error.startswith("crashed: ") and "Meltdown" in job.error
    run = _flow_run(job.flow_run_id)
    assert run.state.is_crashed()
    # on_running recorded the process, which is how the reconciler tells a live run from a SIGKILLed one
    assert run.infrastructure_pid == process_identity()


def test_a_cancelled_flow_marks_its_job_failed(configured_catalog, tmp_path):
    """Cancelled as Prefect does it: a runner serves the flow, the API is asked to cancel, the runner stops
    the flow's process and runs its on_cancellation hooks."""
    env = {
        **os.environ,
        "VMFERRY_CATALOG_URL": configured_catalog.url,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PYTHONPATH": str(ROOT),
    }
    log = (tmp_path / "runner.log").open("wb")
    runner = subprocess.Popen(
        [sys.executable, "-m", "tests.reconcile.serve_stuck"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # so the runner and the flow process it starts can be stopped together
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                flow_run = run_deployment("stuck-job/stuck", timeout=0)
                break
            except Exception:
                # the deployment does not exist until the runner has registered it
                assert runner.poll() is None, (tmp_path / "runner.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the runner never registered its deployment"
                time.sleep(0.5)
        job = _wait_for(
            lambda: next((j for j in list_jobs(configured_catalog) if j.flow_run_id == str(flow_run.id)), None),
            deadline,
            runner,
            tmp_path,
        )
        assert job.state == "running"
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(flow_run.id, Cancelling(message="operator cancelled it"))
        failed = _wait_for(
            lambda: next((j for j in [get_job(configured_catalog, job.id)] if j.state != "running"), None),
            deadline,
            runner,
            tmp_path,
        )
        assert failed.state == "failed"
        assert failed.error.startswith("cancelled: ")
        _wait_for(lambda: _flow_run(str(flow_run.id)).state.is_cancelled() or None, deadline, runner, tmp_path)
    finally:
        os.killpg(runner.pid, signal.SIGTERM)
        try:
            runner.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(runner.pid, signal.SIGKILL)
            runner.wait()
        log.close()


def _wait_for(probe, deadline, runner, tmp_path):
    while True:
        found = probe()
        if found:
            return found
        assert runner.poll() is None, (tmp_path / "runner.log").read_text()[-3000:]
        assert time.monotonic() < deadline, (tmp_path / "runner.log").read_text()[-3000:]
        time.sleep(0.2)
