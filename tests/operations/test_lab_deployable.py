"""`vmferry lab up --deployable`: a long-lived agent and the blocks the deployments name, saved on the server."""

from __future__ import annotations

import hashlib

import pytest

from blocks import Agent, BackupRepository, CloudStack, VCenter
from flows.backup import backup_vm
from infra.lab.deployable import agent_alive, make_deployable, stop_agent
from infra.lab.mutate import read_disk_bytes

pytestmark = pytest.mark.usefixtures("prefect_backend", "nbd_port_range")


def test_lab_blocks_and_agent_serve_a_backup_by_block_names(
    lab, cloudstack_sim, configured_catalog, make_scratch_vm, tmp_path
):
    state = {"vcenter": lab.vcenter.to_dict(), "cloudstack": {"info": cloudstack_sim.info().to_dict()}}
    saved, agent, reused = make_deployable(tmp_path, state, "lab-main", tmp_path / "repository")
    try:
        assert saved == {"VCenter": "prod", "Agent": "prod", "CloudStack": "prod", "BackupRepository": "main"}
        assert not reused and state["agent"] == agent and agent_alive(agent)
        assert VCenter.load("prod").thumbprint == lab.vcenter.thumbprint
        assert Agent.load("prod").url == agent["url"]
        assert CloudStack.load("prod").hub_vm_id == cloudstack_sim.info().hub_vm_id
        assert BackupRepository.load("main").name == "lab-main"

        # a second `lab up --deployable` keeps the running agent
        _, again, reused = make_deployable(tmp_path, state, "lab-main", tmp_path / "repository")
        assert reused and again == agent

        # what a deployment run does: everything by the block names of deployments/prefect.yaml
        vm_name = make_scratch_vm()
        point = backup_vm(vm_name, "main", "prod", "prod", kind="full")
        assert point.state == "committed"
        for disk in point.disks:
            assert disk.checksum == hashlib.sha256(read_disk_bytes(lab.vcenter, vm_name, disk.device_key)).hexdigest()
    finally:
        stop_agent(state["agent"])
    assert not agent_alive(agent)
    stop_agent(agent)  # idempotent, and a pid reused by another process is never signalled

    # an agent recorded but gone (a reboot) is replaced
    _, replaced, reused = make_deployable(tmp_path, state, "lab-main", tmp_path / "repository")
    try:
        assert not reused and replaced["pid"] != agent["pid"] and agent_alive(replaced)
    finally:
        stop_agent(replaced)
