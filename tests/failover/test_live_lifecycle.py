"""Live failover from start to end: confirmation, the source powered on again after a failure, commit, revert.

The flows run against the vcsim lab and our CloudStack simulator; commit and revert are driven through the
`vmferry` command (in-process), with the simulator and lab blocks saved on the session's Prefect server.
"""

from __future__ import annotations

import json
import uuid

import pytest
from pyVim.task import WaitForTask
from typer.testing import CliRunner

from catalog.failovers import READY_FOR_FAILOVER, context_state, failovers_of
from catalog.inventory import find_vm
from catalog.replication import volumes_of_vm
from clients.cloudstack import CloudStackError
from flows.failover import LiveFailoverRefused, failover_vm
from flows.replicate import ReplicationRefused, replicate_vm
from infra.lab.seed import require_vm
from infra.lab.vcenter import session
from tests.failover.test_failover import assert_left_detached, source_shas
from vmferry.errors import EXIT_REFUSED
from vmferry.protection import vm_protection

pytestmark = pytest.mark.usefixtures("prefect_backend", "nbd_port_range")


def power_state(lab, name: str) -> str:
    with session(lab.vcenter) as si:
        return str(require_vm(si, name).runtime.powerState)


def power_on(lab, name: str) -> None:
    with session(lab.vcenter) as si:
        vm = require_vm(si, name)
        if str(vm.runtime.powerState) != "poweredOn":
            WaitForTask(vm.PowerOnVM_Task())


@pytest.fixture
def running_replica(lab, cloudstack_block, agent_block, lab_vcenter_block, configured_catalog, make_scratch_vm) -> str:
    """A two-disk VM, replicated, with its source running (as a VM to fail over live is)."""
    name = make_scratch_vm(disks=2)
    replicate_vm(name, cloudstack_block, agent_block, lab_vcenter_block)
    power_on(lab, name)
    return name


@pytest.fixture
def vmferry(cloudstack_block, lab_vcenter_block, agent_block):
    """``vmferry ARGS`` in-process with the test's CloudStack simulator, lab vCenter and agent as saved blocks."""
    import prefect  # noqa: F401 - configure Prefect's logging before the runner swaps sys.stderr

    from vmferry.cli import app

    suffix = uuid.uuid4().hex[:8]
    cloudstack_block.save(f"cs-{suffix}")
    lab_vcenter_block.save(f"vc-{suffix}")
    agent_block.save(f"ag-{suffix}")
    blocks = {"cloudstack": f"cs-{suffix}", "vcenter": f"vc-{suffix}", "agent": f"ag-{suffix}"}
    runner = CliRunner()

    def run(*args: str, use: tuple[str, ...] = ("cloudstack",)):
        options = [item for name in use for item in (f"--{name}", blocks[name])]
        return runner.invoke(app, [*args, *options])

    return run


def test_live_failover_asks_first_and_powers_the_source_on_when_it_fails(
    running_replica, lab, cloudstack_sim, cloudstack_block, agent_block, lab_vcenter_block, configured_catalog
):
    name = running_replica
    vm = find_vm(configured_catalog, name)
    with pytest.raises(LiveFailoverRefused, match="confirm"):
        failover_vm(name, cloudstack_block, mode="live", vcenter=lab_vcenter_block, agent=agent_block)
    assert power_state(lab, name) == "poweredOn" and failovers_of(configured_catalog, vm.vm_context_id) == []

    for attempt in range(3):  # the deploy task retries twice: the fault outlasts it, after the final sync
        cloudstack_sim.inject_fault("deployVirtualMachine", nth=1 + attempt, errortext="injected deploy failure")
    with pytest.raises(CloudStackError, match="injected deploy failure"):
        failover_vm(
            name, cloudstack_block, mode="live", vcenter=lab_vcenter_block, agent=agent_block, confirm_live=True
        )
    cloudstack_sim.clear_faults()
    assert power_state(lab, name) == "poweredOn"  # it was powered off for the final sync, then on again
    expected = source_shas(lab, name, configured_catalog)
    assert_left_detached(cloudstack_sim, cloudstack_block, configured_catalog, name, expected)
    protection = vm_protection(configured_catalog, vm)
    assert protection.state == READY_FOR_FAILOVER
    assert protection.failover is not None and (protection.failover.mode, protection.failover.state) == (
        "live",
        "rolled-back",
    )


def test_commit_leaves_the_vm_in_cloudstack(
    running_replica, lab, cloudstack_sim, cloudstack_block, agent_block, lab_vcenter_block, configured_catalog, vmferry
):
    from prefect.client.orchestration import get_client

    name = running_replica
    own = replicate_vm.to_deployment(name=f"sched-{name}", parameters={"vm": name}).apply()
    other = replicate_vm.to_deployment(name=f"sched-other-{name}", parameters={"vm": "db3"}).apply()
    everything = ("cloudstack", "vcenter", "agent")

    result = vmferry("failover", name, "--mode", "live", "--no-progress", use=everything)
    assert result.exit_code == EXIT_REFUSED and "--yes" in result.stderr, result.output
    assert power_state(lab, name) == "poweredOn"
    result = vmferry("failover", name, "--mode", "live", "--yes", "--no-progress", "--json", use=everything)
    assert result.exit_code == 0, result.output
    destination = json.loads(result.stdout)["destination_vm_id"]
    assert power_state(lab, name) == "poweredOff"

    status = json.loads(vmferry("status", name, "--json", use=()).stdout)
    (protection,) = status["protection"]
    assert protection["state"] == "failed-over-live" and protection["failover"]["state"] == "active"
    # nothing else may touch the volumes while it is undecided
    assert vmferry("replicate", name, use=everything).exit_code == EXIT_REFUSED
    result = vmferry("cleanup", name)
    assert result.exit_code == EXIT_REFUSED and "revert" in result.stderr

    result = vmferry("commit", name, "--json")
    assert result.exit_code == 0, result.output
    committed = json.loads(result.stdout)
    assert committed["destination_vm_id"] == destination
    assert committed["paused_deployments"] == [f"replicate-vm/sched-{name}"]

    vm = find_vm(configured_catalog, name)
    assert context_state(configured_catalog, vm.vm_context_id) == "migrated"
    with cloudstack_block.client() as client:
        assert client.get_vm(destination).state == "Running"
        on_destination = {v.id for v in client.list_volumes(virtual_machine_id=destination)}
    for volume in volumes_of_vm(configured_catalog, vm.vm_context_id):
        assert volume.volume_id in on_destination
        assert (volume.attached_vm_id, volume.state) == (destination, "owned-by-destination")
    with get_client(sync_client=True) as client:
        assert client.read_deployment(own).paused and not client.read_deployment(other).paused
        client.delete_deployment(own)
        client.delete_deployment(other)
    with pytest.raises(ReplicationRefused, match="migrated"):
        replicate_vm(name, cloudstack_block, agent_block, lab_vcenter_block)
    for args in (["cleanup", name], ["revert", name, "--yes"], ["commit", name]):
        result = vmferry(*args, use=("cloudstack", "vcenter") if args[0] == "revert" else ("cloudstack",))
        assert result.exit_code == EXIT_REFUSED, (args, result.output)
    status = json.loads(vmferry("status", name, "--json", use=()).stdout)
    assert status["protection"][0]["failover"]["state"] == "committed"
    assert power_state(lab, name) == "poweredOff"


def test_revert_brings_the_vm_back_to_vmware(
    running_replica, lab, cloudstack_sim, cloudstack_block, agent_block, lab_vcenter_block, configured_catalog, vmferry
):
    name = running_replica
    failover_vm(name, cloudstack_block, mode="live", vcenter=lab_vcenter_block, agent=agent_block, confirm_live=True)
    vm = find_vm(configured_catalog, name)
    (failover,) = failovers_of(configured_catalog, vm.vm_context_id)

    result = vmferry("revert", name, use=("cloudstack", "vcenter"))
    assert result.exit_code == EXIT_REFUSED and "--yes" in result.stderr, result.output
    result = vmferry("revert", name, "--yes", "--json", use=("cloudstack", "vcenter"))
    assert result.exit_code == 0, result.output
    reverted = json.loads(result.stdout)
    assert reverted["removed_vm"] == failover.destination_vm_id and reverted["source"] == "powered on"

    assert power_state(lab, name) == "poweredOn"
    (record,) = failovers_of(configured_catalog, vm.vm_context_id)
    assert record.state == "reverted"
    # the destination VM ran on the volumes: their next sync compares every block instead of trusting CBT
    assert all(v.last_change_id is None for v in volumes_of_vm(configured_catalog, vm.vm_context_id))
    expected = source_shas(lab, name, configured_catalog)
    assert_left_detached(cloudstack_sim, cloudstack_block, configured_catalog, name, expected)

    # back to replication: a sync succeeds and every volume reads as its source disk
    replicate_vm(name, cloudstack_block, agent_block, lab_vcenter_block)
    assert_left_detached(cloudstack_sim, cloudstack_block, configured_catalog, name, expected)
    result = vmferry("revert", name, "--yes", use=("cloudstack", "vcenter"))  # nothing left to revert
    assert result.exit_code == EXIT_REFUSED and "no active live failover" in result.stderr
