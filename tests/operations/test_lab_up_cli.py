"""`vmferry lab up --deployable`, the real command, then the documented path on a real Prefect server: the
blocks the deployments name are on the server, the long-lived agent answers after the command has exited,
deploy.py deploys, and a worker runs a backup of a lab VM through those blocks and that agent.

The command reuses the session's lab vCenter (a lab.json describing it, as `lab up` writes one) so nothing is
seeded twice; it starts the CloudStack simulator and the agent itself, and the test stops those two (never
`lab down`: that would stop the session's vcsim).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from infra.prefect_server import start_worker, wait_for_workers

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def lab_dir_of_session_lab(lab, tmp_path: Path) -> Path:
    root = tmp_path / "lab-home"
    (root / "seed").mkdir(parents=True)
    shutil.copy(lab.seed_dir / "manifest.json", root / "seed" / "manifest.json")
    (root / "lab.json").write_text(
        json.dumps({"vcenter": lab.vcenter.to_dict(), "manifest": str(root / "seed" / "manifest.json")})
    )
    return root


@pytest.mark.usefixtures("nbd_port_range")
def test_lab_up_deployable_then_a_deployment_backs_up_a_lab_vm_through_its_blocks(
    talking_to_live_server,
    lab,
    lab_dir_of_session_lab,
    configured_catalog,
    catalog_url,
    nbd_port_range,
    make_scratch_vm,
    tmp_path,
):
    import yaml
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from blocks import Agent, BackupRepository, CloudStack, VCenter
    from catalog.inventory import get_vm
    from catalog.restore_points import points_in_state
    from deployments.deploy import load_config
    from deployments.deploy import main as deploy_main
    from infra.lab.cloudstack.process import simulator_alive, stop_simulator_pid
    from infra.lab.deployable import agent_alive, stop_agent
    from infra.lab.mutate import read_disk_bytes

    server = talking_to_live_server
    root = lab_dir_of_session_lab
    env = server.env({"VMFERRY_LAB_DIR": str(root), "VMFERRY_DATA_DIR": str(tmp_path / "data")})
    command = [sys.executable, "-m", "vmferry.cli", "lab", "up", "--deployable", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300, check=False)
    state: dict[str, Any] = json.loads((root / "lab.json").read_text())
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        printed = json.loads(done.stdout)
        assert printed["reused"] is True  # the running lab, not a second one
        assert "started" in printed["agent"] and str(state["agent"]["pid"]) in printed["agent"]
        assert printed["saved blocks"] == "VCenter 'prod', Agent 'prod', CloudStack 'prod', BackupRepository 'main'"

        # the command has exited; its agent lives on and answers with its token
        assert agent_alive(state["agent"])
        assert simulator_alive(state["cloudstack"]["pid"])
        # the blocks deployments/prefect.yaml names, on this server, describing this lab
        assert VCenter.load("prod").thumbprint == lab.vcenter.thumbprint
        assert Agent.load("prod").url == state["agent"]["url"]
        assert CloudStack.load("prod").hub_vm_id == state["cloudstack"]["info"]["hub_vm_id"]
        repository = BackupRepository.load("main")
        assert Path(repository.path) == tmp_path / "data" / "repository"

        # deploy.py as documented (only backup-vm/on-demand, to keep the run short), a worker, one run
        config = load_config(ROOT / "deployments" / "prefect.yaml")
        config["deployments"] = [
            d
            for d in config["deployments"]
            if d["entrypoint"] == "flows/backup.py:backup_vm" and d["name"] == "on-demand"
        ]
        (tmp_path / "prefect.yaml").write_text(yaml.safe_dump(config))
        (tmp_path / "policies.yaml").write_text("policies: []\n")
        argv = ["--prefect-file", str(tmp_path / "prefect.yaml"), "--policies-file", str(tmp_path / "policies.yaml")]
        assert deploy_main([*argv, "--vm", "db3"]) == 0
        worker_env = {
            "VMFERRY_HOME": str(ROOT),
            "VMFERRY_CATALOG_URL": catalog_url,
            "VMFERRY_NBD_PORT_RANGE": nbd_port_range,
        }
        start_worker(server, "vmferry-hub", "lab-worker", env=worker_env, cwd=ROOT)
        wait_for_workers(server, "vmferry-hub", ["lab-worker"])

        vm_name = make_scratch_vm()
        run = run_deployment("backup-vm/on-demand", parameters={"vm": vm_name, "kind": "full"}, timeout=0)
        deadline = time.monotonic() + 240
        with get_client(sync_client=True) as client:
            while not (finished := client.read_flow_run(run.id)).state.is_final():
                assert time.monotonic() < deadline, "the backup run did not end within 240 s"
                time.sleep(1)
        logs = {worker.name: worker.log()[-4000:] for worker in server.workers}
        assert finished.state.is_completed(), (finished.state, logs)
        assert finished.name == f"backup-{vm_name}-full"

        (point,) = [
            p
            for p in points_in_state(configured_catalog, "committed")
            if get_vm(configured_catalog, p.vm_context_id).name == vm_name
        ]
        assert point.kind == "full" and point.repository == repository.name and point.disks
        for disk in point.disks:
            assert disk.checksum == hashlib.sha256(read_disk_bytes(lab.vcenter, vm_name, disk.device_key)).hexdigest()
            # written where the saved repository block says
            stored = Path(disk.file_path)
            stored = stored if stored.is_absolute() else Path(repository.path) / stored
            assert stored.is_file() and Path(repository.path) in stored.parents
    finally:
        if "agent" in state:
            stop_agent(state["agent"])
        if "cloudstack" in state:
            stop_simulator_pid(state["cloudstack"]["pid"])
    assert not agent_alive(state["agent"])
