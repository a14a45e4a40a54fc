"""deployments/prefect.yaml against the flows it names, and deployments/deploy.py against the session's server."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from prefect import Flow
from prefect.client.schemas.schedules import CronSchedule
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools import validate

ROOT = Path(__file__).resolve().parents[2]
PREFECT_FILE = ROOT / "deployments" / "prefect.yaml"
CONFIG = yaml.safe_load(PREFECT_FILE.read_text())
DEPLOYMENTS: list[dict[str, Any]] = CONFIG["deployments"]
BLOCK_PARAMETERS = {"vcenter", "agent", "repository", "cloudstack"}
POOL = "vmferry-hub"


def selector(deployment: dict[str, Any]) -> str:
    return f"{deployment['entrypoint']}/{deployment['name']}"


def load_flow(deployment: dict[str, Any]) -> Flow:
    path, function = deployment["entrypoint"].split(":", 1)
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    flow = getattr(module, function, None)
    assert isinstance(flow, Flow), f"{deployment['entrypoint']} is not a Prefect flow"
    return flow


def load_deploy_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vmferry_deploy_script", ROOT / "deployments" / "deploy.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as a script run has it: its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=selector)
def test_deployment_matches_its_flow(deployment):
    flow = load_flow(deployment)
    signature = inspect.signature(flow.fn)
    parameters = deployment.get("parameters") or {}
    assert set(parameters) <= set(signature.parameters), f"not parameters of {flow.name}"
    required = {name for name, p in signature.parameters.items() if p.default is inspect.Parameter.empty}
    missing = required - set(parameters)
    # blocks are always named; only per-run values (a VM, a point id, paths) may come with each run
    assert not missing & BLOCK_PARAMETERS, f"{selector(deployment)} names no {missing & BLOCK_PARAMETERS} block"
    schema = parameter_schema(flow).model_dump_for_openapi()
    validate(parameters, schema, raise_on_error=True, ignore_required=True)  # values of the right types
    assert deployment["work_pool"]["name"] == POOL
    for schedule in deployment.get("schedules") or []:
        CronSchedule(cron=schedule["cron"], timezone=schedule.get("timezone"))  # raises on a bad cron
        merged = {**parameters, **(schedule.get("parameters") or {})}
        # a scheduled run has nobody to pass the rest: everything required is there
        validate(merged, schema, raise_on_error=True)


def test_every_flow_has_a_deployment():
    registered = {d["entrypoint"] for d in DEPLOYMENTS}
    found = set()
    for path in sorted((ROOT / "flows").glob("*.py")):
        module = importlib.import_module(f"flows.{path.stem}")
        for name, value in vars(module).items():
            if isinstance(value, Flow) and value.fn.__module__ == module.__name__:
                found.add(f"flows/{path.name}:{name}")
    assert found, "no flows found"
    assert found <= registered, f"flows without a deployment: {sorted(found - registered)}"
    assert "flows/reconcile.py:reconcile" in registered


def test_schedules_and_pull_step():
    def crons(entrypoint: str) -> dict[str, dict[str, Any]]:
        return {
            s["cron"]: s.get("parameters") or {}
            for d in DEPLOYMENTS
            if d["entrypoint"] == entrypoint
            for s in d.get("schedules") or []
        }

    backup = crons("flows/backup.py:backup_vm")
    assert backup["0 1 * * 1-6"] == {"kind": "auto"} and backup["0 1 * * 0"] == {"kind": "full"}
    assert "*/30 * * * *" in crons("flows/replicate.py:replicate_vm")
    assert "0 * * * *" in crons("flows/reconcile.py:reconcile")
    never = ["failover.py:failover_vm", "cleanup.py:cleanup_failover"]
    never += ["live_failover.py:commit_failover", "live_failover.py:revert_failover"]
    for entrypoint in (f"flows/{name}" for name in never):
        assert not crons(entrypoint), f"{entrypoint} must never run on a schedule"
    (step,) = CONFIG["pull"]
    assert set(step) == {"prefect.deployments.steps.set_working_directory"}


def prefect_cli(*args: str) -> subprocess.CompletedProcess[str]:
    from prefect.settings import get_current_settings

    env = {**os.environ, "PREFECT_API_URL": str(get_current_settings().api.url), "PREFECT_CLI_PROMPT": "false"}
    return subprocess.run(
        [sys.executable, "-m", "prefect", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_plain_prefect_deploy_all_creates_every_deployment_as_written(prefect_backend):
    """What an operator without deploy.py runs: `prefect deploy --all` on the file, from the repository root."""
    from prefect.client.orchestration import get_client

    created = prefect_cli("work-pool", "create", POOL, "--type", "process", "--overwrite")
    assert created.returncode == 0, created.stdout + created.stderr
    done = prefect_cli("deploy", "--all", "--prefect-file", str(PREFECT_FILE))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with get_client(sync_client=True) as client:
        for deployment in DEPLOYMENTS:
            flow = load_flow(deployment)
            stored = client.read_deployment_by_name(f"{flow.name}/{deployment['name']}")
            assert stored.work_pool_name == POOL
            assert stored.parameters == (deployment.get("parameters") or {})
            assert sorted(s.schedule.cron for s in stored.schedules) == sorted(
                s["cron"] for s in deployment.get("schedules") or []
            )
            assert stored.pull_steps == CONFIG["pull"]


def test_deploy_script_creates_pool_limits_and_per_vm_deployments(prefect_backend):
    """deploy.py against the session's Prefect server: the pool, the limits, then `prefect deploy`."""
    from prefect.client.orchestration import get_client
    from pydantic import SecretStr

    from blocks import BackupRepository, VCenter

    # limits are keyed on what the saved blocks hold: the repository's name and the vCenter's host and port
    BackupRepository(name="nightly-store", path="/srv/vmferry/main").save("main", overwrite=True)
    VCenter(host="VC01.example.test", port=8443, username="u", password=SecretStr("p")).save("prod", overwrite=True)
    script = load_deploy_script()
    assert script.main(["--repository-limit", "3", "--vm", "web1", "--vm", "pgtest1"]) == 0
    with get_client(sync_client=True) as client:
        assert client.read_work_pool(POOL).type == "process"
        assert client.read_global_concurrency_limit_by_name("repo-backup-nightly-store").limit == 3
        assert client.read_global_concurrency_limit_by_name("vcenter-snapshots-vc01.example.test-8443").limit == 4
        for deployment in DEPLOYMENTS:
            if "per-vm" not in (deployment.get("tags") or []):
                stored = client.read_deployment_by_name(f"{load_flow(deployment).name}/{deployment['name']}")
                assert stored.parameters == (deployment.get("parameters") or {})
        per_vm = [d for d in DEPLOYMENTS if "per-vm" in (d.get("tags") or [])]
        assert {load_flow(d).name for d in per_vm} == {
            *("backup-vm", "prune-restore-points", "replicate-vm", "verify-restore-point")
        }
        for template in per_vm:  # every VM asked for got its own copy of every per-VM deployment
            for vm in ("web1", "pgtest1"):
                stored = client.read_deployment_by_name(f"{load_flow(template).name}/{vm}")
                assert stored.parameters == {**template["parameters"], "vm": vm}
                assert stored.work_pool_name == POOL and stored.pull_steps == CONFIG["pull"]
                assert sorted(s.schedule.cron for s in stored.schedules) == sorted(
                    s["cron"] for s in template["schedules"]
                )
    # a second run changes nothing and still succeeds (pool exists, limits upserted, deployments updated)
    assert script.main(["--no-deploy"]) == 0


def test_protected_vms_get_their_own_copies_of_the_per_vm_deployments(tmp_path):
    script = load_deploy_script()
    protected_file = tmp_path / "protected.yaml"
    protected_file.write_text("vms:\n  - web1\n  - name: files2\n    flows: [backup-vm, prune-restore-points]\n")
    protected = script.load_protected(protected_file)
    rendered = script.render_per_vm(CONFIG, protected)["deployments"]

    def names(flow: str) -> set[str]:
        return {d["name"] for d in rendered if script.flow_name(d) == flow}

    assert names("backup-vm") == {"web1", "files2", "on-demand"}
    assert names("prune-restore-points") == {"web1", "files2", "on-demand"}
    assert names("replicate-vm") == {"web1", "on-demand"}  # files2 is backed up, not replicated
    assert "db3" not in names("backup-vm")  # the template itself is deployed only for the VMs listed
    for deployment in rendered:
        if deployment["name"] in {"web1", "files2"}:
            assert deployment["parameters"]["vm"] == deployment["name"]
    assert script.load_protected(ROOT / "deployments" / "protected.yaml") == [script.ProtectedVM("db3")]


@pytest.mark.parametrize("bad", ["a/b", "50%", "", None])
def test_a_protected_vm_name_prefect_cannot_hold_is_refused(tmp_path, bad):
    script = load_deploy_script()
    protected_file = tmp_path / "protected.yaml"
    protected_file.write_text(yaml.safe_dump({"vms": [bad]}))
    with pytest.raises(SystemExit, match="protected VM"):
        script.load_protected(protected_file)


def test_a_protected_vm_asking_for_an_unknown_schedule_is_refused(tmp_path):
    script = load_deploy_script()
    with pytest.raises(SystemExit, match="no per-VM deployment of \\['discover'\\]"):
        script.render_per_vm(CONFIG, [script.ProtectedVM("web1", frozenset({"discover"}))])
