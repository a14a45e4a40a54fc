"""On a real Prefect server with its services on: schedules create runs that a worker completes, and the
alerts deploy.py creates notify a webhook when a vmferry run fails, crashes or is late.

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
from tests.databases import fresh_catalog_url

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
POOL = "ops-pool"
IDLE_POOL = "ops-idle"  # no worker: runs scheduled there become late


@pytest.fixture(params=[pytest.param("mariadb", marks=pytest.mark.mariadb)])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Worker processes write the catalog at once: the production backend, MariaDB."""
    with fresh_catalog_url(request.param, tmp_path) as url:
        yield url


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


def test_failed_crashed_and_late_vmferry_runs_notify_the_operators_webhook(worker, talking_to_live_server, webhook):
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
    crashing = deploy_test_flow("crashes", "crash", POOL, tags=["vmferry"])
    quiet = deploy_test_flow("not-ours", "fail", POOL)
    late = deploy_test_flow("waits", "tick", IDLE_POOL, tags=["vmferry"])

    failed_run = run_deployment(failing, timeout=0)
    crashed_run = run_deployment(crashing, timeout=0)
    quiet_run = run_deployment(quiet, timeout=0)
    late_run = run_deployment(late, timeout=0, scheduled_time=datetime.now(UTC) - timedelta(minutes=2))

    def notified(run_name: str, word: str) -> dict[str, Any] | None:
        return next((m for m in webhook.received if run_name in m["subject"] and word in m["subject"]), None)

    message = wait_for("the failure notification", lambda: notified(failed_run.name, "failed"))
    assert "ops-tick/fails" not in message["body"] and "ops-fail/fails" in message["body"], message
    assert "this run fails on purpose" in message["body"], message
    wait_for("the late notification", lambda: notified(late_run.name, "late"))
    message = wait_for("the crash notification", lambda: notified(crashed_run.name, "crashed"))
    assert "ops-crash/crashes" in message["body"] and "process died or was killed" in message["body"], message
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(crashed_run.id).state.is_crashed()
    with get_client(sync_client=True) as client:
        wait_for("the untagged run to fail", lambda: client.read_flow_run(quiet_run.id).state.is_failed())
    time.sleep(3)  # the failure of the untagged run had as long as the tagged one to notify
    assert notified(quiet_run.name, "failed") is None, webhook.received


def move_into_folder(lab, names: list[str], folder_name: str) -> str:
    """Put the lab VMs ``names`` into a new VM folder of the datacenter; returns its inventory path."""
    from pyVim.task import WaitForTask
    from pyVmomi import vim

    from infra.lab.vcenter import session

    with session(lab.vcenter) as si:
        datacenter = next(e for e in si.content.rootFolder.childEntity if isinstance(e, vim.Datacenter))
        folder = datacenter.vmFolder.CreateFolder(folder_name)
        view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.VirtualMachine], True)
        vms = [vm for vm in view.view if vm.name in names]
        view.Destroy()
        WaitForTask(folder.MoveIntoFolder_Task(vms))
        return f"/{datacenter.name}/vm/{folder_name}"


@pytest.mark.usefixtures("nbd_port_range")
def test_a_policy_over_five_lab_vms_schedules_and_runs_each(
    talking_to_live_server,
    lab,
    lab_vcenter_block,
    agent_block,
    configured_catalog,
    catalog_url,
    nbd_port_range,
    make_scratch_vm,
    tmp_path,
):
    import hashlib

    import yaml
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    from blocks.repository import BackupRepository
    from catalog.inventory import get_vm
    from catalog.restore_points import points_in_state
    from deployments.deploy import load_config
    from deployments.deploy import main as deploy_main
    from infra.lab.mutate import read_disk_bytes

    server = talking_to_live_server
    names = sorted(make_scratch_vm() for _ in range(5))
    folder = move_into_folder(lab, names, f"policy-{names[0]}")
    lab_vcenter_block.save("prod", overwrite=True)
    agent_block.save("prod", overwrite=True)
    BackupRepository(name="policy-repo", path=str(tmp_path / "repository")).save("main", overwrite=True)

    # the per-VM deployment the policy starts, and the policy: every VM of the folder, every 30 s
    config = load_config(ROOT / "deployments" / "prefect.yaml")
    config["deployments"] = [
        d for d in config["deployments"] if d["entrypoint"] == "flows/backup.py:backup_vm" and d["name"] == "on-demand"
    ]
    (tmp_path / "prefect.yaml").write_text(yaml.safe_dump(config))
    policies = {
        "policies": [
            {
                "name": "five",
                "vms": {"folders": [folder]},
                "backup": {"schedules": [{"interval": 30, "slug": "every-30s", "kind": "full"}]},
            }
        ]
    }
    (tmp_path / "policies.yaml").write_text(yaml.safe_dump(policies))
    argv = ["--prefect-file", str(tmp_path / "prefect.yaml"), "--policies-file", str(tmp_path / "policies.yaml")]
    assert deploy_main([*argv, "--vm", names[0]]) == 0

    worker_env = {
        "VMFERRY_HOME": str(ROOT),
        "VMFERRY_CATALOG_URL": catalog_url,
        "VMFERRY_NBD_PORT_RANGE": nbd_port_range,
    }
    start_worker(server, "vmferry-hub", "hub-worker", limit=6, env=worker_env, cwd=ROOT)
    wait_for_workers(server, "vmferry-hub", ["hub-worker"])

    def policy_runs(client) -> list[Any]:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["policy:five", "policy"]))
        )

    with get_client(sync_client=True) as client:
        try:
            # pausing deletes the runs still scheduled: pause once the worker has taken the first one
            first = wait_for(
                "the scheduler's policy run started",
                lambda: [r for r in policy_runs(client) if not r.state.is_scheduled()],
                timeout=90,
            )[0]
        finally:
            client.pause_deployment(client.read_deployment_by_name("protect-policy/five-backup").id)
        assert first.auto_scheduled
        done = wait_for(
            "the policy run to end",
            lambda: (run := client.read_flow_run(first.id)).state.is_final() and run,
            timeout=240,
        )
        per_vm = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["policy:five"])))
    logs = {worker.name: worker.log()[-4000:] for worker in server.workers}
    assert done.state.is_completed(), (done.state, logs)
    assert done.name == "policy-five-backup"
    # the runs this policy run started (a later scheduled one may have been taken before the pause)
    backups = [run for run in per_vm if (run.idempotency_key or "").startswith(f"{first.id}-")]
    assert sorted(run.parameters["vm"] for run in backups) == names
    assert all(run.state.is_completed() for run in backups)
    assert sorted(run.name for run in backups) == sorted(f"backup-{name}-full" for name in names)
    assert all(f"vm:{run.parameters['vm']}" in run.tags and "backup" in run.tags for run in backups)

    points = points_in_state(configured_catalog, "committed")
    by_vm = {get_vm(configured_catalog, p.vm_context_id).name: p for p in points}
    assert sorted(by_vm) == names
    for name, point in by_vm.items():
        assert point.kind == "full"
        for disk in point.disks:
            assert disk.checksum == hashlib.sha256(read_disk_bytes(lab.vcenter, name, disk.device_key)).hexdigest()
