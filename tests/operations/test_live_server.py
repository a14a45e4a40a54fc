"""On a real Prefect server with its services on: schedules create runs that a worker completes, and the
alerts deploy.py creates notify a webhook when a vmferry run fails or is late.

One server for the module (PostgreSQL, scheduler, late-runs, triggers and actions services on), one worker.
The scheduler test is the one that fails with SQLAlchemy 2.1 (constraints.txt pins 2.0.x).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from deployments.alerts import automation_name
from infra.prefect_server import start_worker, wait_for_workers

HERE = Path(__file__).resolve().parent
POOL = "ops-pool"
IDLE_POOL = "ops-idle"  # no worker: runs scheduled there become late


def wait_for(what: str, condition: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        if value := condition():
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def worker(live_server):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from deployments.deploy import ensure_work_pool

    with temporary_settings({PREFECT_API_URL: live_server.url}):
        ensure_work_pool(POOL)
        ensure_work_pool(IDLE_POOL)
    start_worker(live_server, POOL, "ops-worker", cwd=HERE)
    wait_for_workers(live_server, POOL, ["ops-worker"])
    return live_server


class Webhook:
    """A notification receiver on 127.0.0.1: every POSTed JSON body, in order."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.append(json.loads(body or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.received = received
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


def deploy_test_flow(name: str, function: str, pool: str, **options: Any) -> str:
    from prefect import flow

    loaded = flow.from_source(source=str(HERE), entrypoint=f"scheduled_flows.py:{function}")
    loaded.deploy(name=name, work_pool_name=pool, build=False, push=False, print_next_steps=False, **options)
    return f"{loaded.name}/{name}"


def test_a_scheduled_deployment_gets_runs_that_a_worker_completes(worker, talking_to_live_server):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    deploy_test_flow("every-5s", "tick", POOL, interval=5)

    def completed_scheduled_runs() -> list[Any]:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["every-5s"]))
            )
        return [r for r in runs if r.auto_scheduled and r.state is not None and r.state.is_completed()] or None

    try:
        runs = wait_for("two scheduled runs completed", lambda: (r := completed_scheduled_runs()) and len(r) >= 2 and r)
    finally:
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("ops-tick/every-5s")
            client.pause_deployment(deployment.id)
    assert all(run.work_pool_name == POOL for run in runs)
    assert "Can't evaluate bulk DML" not in worker.log()


def test_failed_and_late_vmferry_runs_notify_the_operators_webhook(worker, talking_to_live_server, webhook):
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from deployments.deploy import main as deploy_main

    CustomWebhookNotificationBlock(
        name="ops", url=webhook.url, json_data={"subject": "{{subject}}", "body": "{{body}}"}
    ).save("ops", overwrite=True)
    assert deploy_main(["--no-deploy", "--vm", "db3", "--alerts-block", "custom-webhook/ops"]) == 0
    assert deploy_main(["--no-deploy", "--vm", "db3", "--alerts-block", "custom-webhook/ops"]) == 0  # idempotent
    with get_client(sync_client=True) as client:
        for state in ("Failed", "Crashed", "Late"):
            assert len(client.read_automations_by_name(automation_name(state))) == 1

    # tagged like every deployment deploy.py renders; an untagged one (another project's) stays quiet
    failing = deploy_test_flow("fails", "fail", POOL, tags=["vmferry"])
    quiet = deploy_test_flow("not-ours", "fail", POOL)
    late = deploy_test_flow("waits", "tick", IDLE_POOL, tags=["vmferry"])

    failed_run = run_deployment(failing, timeout=0)
    quiet_run = run_deployment(quiet, timeout=0)
    late_run = run_deployment(late, timeout=0, scheduled_time=datetime.now(UTC) - timedelta(minutes=2))

    def notified(run_name: str, word: str) -> dict[str, Any] | None:
        return next((m for m in webhook.received if run_name in m["subject"] and word in m["subject"]), None)

    message = wait_for("the failure notification", lambda: notified(failed_run.name, "failed"))
    assert "ops-tick/fails" not in message["body"] and "ops-fail/fails" in message["body"], message
    assert "this run fails on purpose" in message["body"], message
    wait_for("the late notification", lambda: notified(late_run.name, "late"))
    with get_client(sync_client=True) as client:
        wait_for("the untagged run to fail", lambda: client.read_flow_run(quiet_run.id).state.is_failed())
    time.sleep(3)  # the failure of the untagged run had as long as the tagged one to notify
    assert notified(quiet_run.name, "failed") is None, webhook.received
