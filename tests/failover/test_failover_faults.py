"""Failovers that CloudStack fails or that are killed: nothing stays behind, the context tells the truth, and the
next failover works."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from prefect.settings import PREFECT_API_URL

from catalog.failovers import READY_FOR_FAILOVER, SOURCE_OFF_UNFINISHED, context_state, failovers_of
from catalog.inventory import find_vm
from catalog.jobs import get_job
from catalog.replication import volumes_of_vm
from clients.cloudstack import CloudStackJobFailed
from flows.cleanup import cleanup_failover
from flows.failover import failover_vm
from flows.reconcile import reconcile
from infra.lab.seed import require_vm
from infra.lab.vcenter import session
from tests.failover.test_failover import assert_left_detached, source_shas
from tests.slots import free_vm_slot

pytestmark = pytest.mark.usefixtures("prefect_backend", "nbd_port_range")


def _destination_vms(cloudstack_block, vm) -> list:
    with cloudstack_block.client() as client:
        return [v for v in client.list_vms() if v.name.startswith(f"vmferry-vm{vm.vm_context_id}-")]


@pytest.mark.parametrize("failures", [1, 3], ids=["once", "always"])
def test_a_failed_deploy_job_leaves_no_vm_in_error(
    failures, replicated, lab, cloudstack_sim, cloudstack_block, configured_catalog
):
    name = replicated(disks=2)
    expected = source_shas(lab, name, configured_catalog)
    vm = find_vm(configured_catalog, name)
    for attempt in range(failures):  # the deploy task retries twice
        cloudstack_sim.inject_fault(
            "deployVirtualMachine", nth=1 + attempt, kind="job-failure", errortext="injected: no capacity on host"
        )
    if failures == 1:
        result = failover_vm(name, cloudstack_block)
        (destination,) = _destination_vms(cloudstack_block, vm)  # the VM in Error went, one VM was deployed
        assert destination.id == result.destination_vm_id and destination.state == "Running"
        cleanup_failover(name, cloudstack_block)
    else:
        with pytest.raises(CloudStackJobFailed, match=r"deployVirtualMachine.*injected: no capacity on host"):
            failover_vm(name, cloudstack_block)
        (record,) = failovers_of(configured_catalog, vm.vm_context_id)
        assert record.state == "rolled-back"
    assert cloudstack_sim.faults() == []
    assert _destination_vms(cloudstack_block, vm) == []
    assert_left_detached(cloudstack_sim, cloudstack_block, configured_catalog, name, expected)


def _kill_between_root_and_data_attach(arguments: dict, catalog, cloudstack_block, vm) -> None:
    env = {**os.environ, "VMFERRY_CATALOG_URL": catalog.url, "PREFECT_API_URL": PREFECT_API_URL.value()}
    process = subprocess.Popen([sys.executable, "-m", "tests.failover.run_failover", json.dumps(arguments)], env=env)
    try:
        volumes = volumes_of_vm(catalog, vm.vm_context_id)
        boot = next(d.vm_disk_id for d in vm.present_disks() if d.is_boot)
        (root,) = [v for v in volumes if v.vm_disk_id == boot]
        data = [v for v in volumes if v.vm_disk_id != boot]
        deadline = time.monotonic() + 180
        while True:
            with cloudstack_block.client() as client:
                holder = client.get_volume(root.volume_id).virtual_machine_id
                data_not_on_it = all(
                    client.get_volume(v.volume_id).virtual_machine_id in (None, *cloudstack_block.hub_ids())
                    for v in data
                )
            if holder not in (None, *cloudstack_block.hub_ids()) and data_not_on_it:
                break
            assert process.poll() is None and time.monotonic() < deadline, "the failover never attached its root"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("undo", ["cleanup", "reconcile"])
@pytest.mark.parametrize("mode", ["test", "live"])
def test_a_failover_killed_between_root_and_data_attach(
    mode, undo, replicated, lab, cloudstack_sim, cloudstack_block, agent_block, lab_vcenter_block,
    configured_catalog,
):  # fmt: skip
    name = replicated(disks=2)  # the OS disk, then one data disk
    vm = find_vm(configured_catalog, name)
    arguments: dict = {"vm": name, "mode": mode, "cloudstack": json.loads(cloudstack_block.model_dump_json())}
    arguments["cloudstack"]["secret_key"] = cloudstack_block.secret_key.get_secret_value()
    if mode == "live":
        arguments["confirm_live"] = True
        arguments["vcenter"] = json.loads(lab_vcenter_block.model_dump_json())
        arguments["vcenter"]["password"] = lab_vcenter_block.password.get_secret_value()
        arguments["agent"] = json.loads(agent_block.model_dump_json())
        arguments["agent"]["token"] = agent_block.token.get_secret_value()
    cloudstack_sim.job_delay = 0.5  # slow jobs, so the kill lands between the attachments
    _kill_between_root_and_data_attach(arguments, configured_catalog, cloudstack_block, vm)
    cloudstack_sim.job_delay = 0.02
    free_vm_slot(vm.instance_uuid, vm.vm_context_id)  # the killed run's slots; the harness repossesses no lease

    (killed,) = failovers_of(configured_catalog, vm.vm_context_id)
    assert killed.state == "in-progress" and killed.destination_vm_id is not None  # recorded before it existed
    assert [v.id for v in _destination_vms(cloudstack_block, vm)] == [killed.destination_vm_id]
    after = SOURCE_OFF_UNFINISHED if mode == "live" else READY_FOR_FAILOVER
    # never "ready" while the source is off
    assert context_state(configured_catalog, vm.vm_context_id) == (
        SOURCE_OFF_UNFINISHED if mode == "live" else "failing-over-test"
    )

    if undo == "cleanup":
        cleanup_failover(name, cloudstack_block)
    else:
        report = reconcile(cloudstack=cloudstack_block)
        assert [f.action for f in report.of("failover")] == ["rolled back"]
        assert get_job(configured_catalog, killed.job_id).state == "failed"
        assert report.errors == []
    (done,) = failovers_of(configured_catalog, vm.vm_context_id)
    assert done.state == ("cleaned-up" if undo == "cleanup" else "interrupted")
    assert _destination_vms(cloudstack_block, vm) == []
    assert context_state(configured_catalog, vm.vm_context_id) == after
    expected = source_shas(lab, name, configured_catalog)
    with cloudstack_block.client() as client:
        for volume in volumes_of_vm(configured_catalog, vm.vm_context_id):
            assert client.get_volume(volume.volume_id).virtual_machine_id is None  # volumes rest detached
    if mode == "live":
        with session(lab.vcenter) as si:
            assert str(require_vm(si, name).runtime.powerState) == "poweredOff"

    # the next failover works, and reuses nothing
    live = {"vcenter": lab_vcenter_block, "agent": agent_block, "confirm_live": True} if mode == "live" else {}
    result = failover_vm(name, cloudstack_block, mode=mode, **live)
    assert result.destination_vm_id != killed.destination_vm_id
    assert [v.id for v in _destination_vms(cloudstack_block, vm)] == [result.destination_vm_id]
    if mode == "test":
        cleanup_failover(name, cloudstack_block)
        assert_left_detached(cloudstack_sim, cloudstack_block, configured_catalog, name, expected)
