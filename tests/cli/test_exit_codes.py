"""One error model: the same error ends with the same exit code in-process and through --submit --wait.

The submitted runs go to deployments served by a worker process (tests/cli/serve_deployments.py) on the
session's Prefect server; the worker shares the test's catalog.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from vmferry.errors import EXIT_NOT_FOUND, EXIT_REFUSED

ROOT = Path(__file__).resolve().parents[2]
CLASS_NAMES = ("Error", "Refused", "Exception", "NotFound")


@pytest.fixture
def worker(prefect_backend, saved_blocks, configured_catalog, nbd_port_range):
    """Deployments ``<flow>/<name>`` of backup and restore with the saved blocks, served by a worker process."""
    import prefect.settings as ps
    from prefect.client.orchestration import get_client

    name = f"exit-codes-{uuid.uuid4().hex[:6]}"
    blocks = {key: saved_blocks[key] for key in ("repository", "agent", "vcenter")}
    arguments = {"name": name, "backup": blocks, "restore": {"repository": saved_blocks["repository"]}}
    env = {
        **os.environ,
        "PREFECT_API_URL": str(ps.PREFECT_API_URL.value()),
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "VMFERRY_CATALOG_URL": configured_catalog.url,
        "PYTHONPATH": str(ROOT),
    }
    argv = [sys.executable, "-m", "tests.cli.serve_deployments", json.dumps(arguments)]
    process = subprocess.Popen(argv, cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 90
        with get_client(sync_client=True) as client:
            while True:
                try:
                    client.read_deployment_by_name(f"restore-vm/{name}")
                    break
                except Exception:
                    assert process.poll() is None and time.monotonic() < deadline, "the worker never served"
                    time.sleep(0.5)
        yield name
    finally:
        process.terminate()
        process.wait(30)


def test_same_exit_code_in_process_and_through_submit(vmferry, saved_blocks, worker, tmp_path):
    blocks = ["--vcenter", saved_blocks["vcenter"], "--agent", saved_blocks["agent"]]
    repository = ["--repository", saved_blocks["repository"]]

    # a successful run through the worker: --json carries the flow's result, the new restore point
    result = vmferry("backup", "pgtest1", "--kind", "full", *repository, "--submit", worker, "--wait", "--json")
    assert result.exit_code == 0, result.output
    submitted = json.loads(result.stdout)
    point = submitted["result"]
    assert submitted["state"] == "COMPLETED" and point["state"] == "committed" and point["kind"] == "full"
    assert vmferry("status", "--json").exit_code == 0

    # an unwritable restore target: refused (4) before any work, in-process and on the worker alike
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    target = blocker / "restore"
    here = vmferry("restore", point["id"], "--to", target, *repository)
    there = vmferry("restore", point["id"], "--to", target, "--submit", worker, "--wait")
    for outcome in (here, there):
        assert outcome.exit_code == EXIT_REFUSED, outcome.output
        assert f"cannot write into {blocker}" in outcome.stderr and ": refused: " in outcome.stderr
        assert not any(name in outcome.stderr for name in CLASS_NAMES), outcome.stderr

    # a VM vCenter does not have: not found (3) both ways, and the worker's read of it was not retried
    here = vmferry("backup", "no-such-vm", *blocks, *repository)
    there = vmferry("backup", "no-such-vm", "--submit", worker, "--wait", "--json")
    for outcome in (here, there):
        assert outcome.exit_code == EXIT_NOT_FOUND, outcome.output
        assert "no VM named 'no-such-vm'" in outcome.stderr and ": not found: " in outcome.stderr
        assert not any(name in outcome.stderr for name in CLASS_NAMES), outcome.stderr
    failed = json.loads(there.stdout)
    assert failed["state"] == "FAILED" and "no-such-vm" in failed["error"]


def test_a_vm_that_does_not_exist_is_not_looked_up_again(
    prefect_backend, lab_vcenter_block, configured_catalog, monkeypatch
):
    """The read task retries passing errors; "no such VM" is not one of them."""
    from common.vsphere import VMNotFound, VSphereClient
    from flows.discover import discover

    lookups = []
    find_vm = VSphereClient.find_vm

    def counted(self, name):
        lookups.append(name)
        return find_vm(self, name)

    monkeypatch.setattr(VSphereClient, "find_vm", counted)
    with pytest.raises(VMNotFound, match="no-such-vm"):
        discover(lab_vcenter_block, ["no-such-vm"])
    assert lookups == ["no-such-vm"]
