"""A failover whose bookkeeping fails once its destination VM runs (issue #14).

The last step of a failover records the devices read back and marks the failover active. If that write fails
and the failover stays "in progress", cleanup takes it for an interrupted one and destroys its destination
VM: after a live failover, the production VM (its source is off). A failure there is retried; one that outlasts
the retries rolls the whole failover back (destination destroyed, source powered on again), and cleanup then
has nothing to stop. A destination that cannot be destroyed keeps the source off: never the VM twice.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import pytest

import catalog.failovers
from catalog.failovers import READY_FOR_FAILOVER, SOURCE_OFF_UNFINISHED, context_state, failovers_of
from catalog.inventory import find_vm
from catalog.jobs import get_job
from flows.cleanup import CleanupRefused, cleanup_failover
from flows.failover import failover_vm
from flows.replicate import replicate_vm
from tests.failover.test_live_lifecycle import power_on, power_state

pytestmark = pytest.mark.usefixtures("prefect_backend", "nbd_port_range")


class DeviceRecordFault:
    """Makes the catalog write of a failover's devices raise, the first ``times`` calls (None: until stopped).

    Patched wherever the function is bound (the flow or a task imports it by name), so the test does not
    depend on which module makes the write."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, times: int | None) -> None:
        self.calls = 0
        self.times = times
        original: Callable[..., Any] = catalog.failovers.record_devices

        def failing(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.times is None or self.calls <= self.times:
                raise RuntimeError("injected failure of the failover bookkeeping")
            return original(*args, **kwargs)

        bound = [m for m in list(sys.modules.values()) if vars(m).get("record_devices") is original]
        assert bound, "nothing binds catalog.failovers.record_devices: the test no longer reaches the bookkeeping"
        for module in bound:
            monkeypatch.setattr(module, "record_devices", failing)

    def stop(self) -> None:
        self.times = 0


@pytest.fixture
def running_replica(lab, cloudstack_block, agent_block, lab_vcenter_block, configured_catalog, make_scratch_vm) -> str:
    name = make_scratch_vm(disks=2)
    replicate_vm(name, cloudstack_block, agent_block, lab_vcenter_block)
    power_on(lab, name)
    return name


def destination_vms(cloudstack_block, vm_context_id: int) -> dict[str, str]:
    """Our destination VMs of a VM context in CloudStack (id -> state), found by their deterministic name."""
    with cloudstack_block.client() as client:
        return {
            v.id: v.state
            for v in client.list_vms()
            if v.name.startswith(f"vmferry-vm{vm_context_id}-") and v.state not in ("Destroyed", "Expunging")
        }


def test_a_bookkeeping_failure_once_is_retried_and_cleanup_leaves_production_alone(
    running_replica, lab, monkeypatch, cloudstack_block, agent_block, lab_vcenter_block, configured_catalog
):
    name = running_replica
    vm = find_vm(configured_catalog, name)
    fault = DeviceRecordFault(monkeypatch, times=1)
    try:
        failover_vm(
            name, cloudstack_block, mode="live", vcenter=lab_vcenter_block, agent=agent_block, confirm_live=True
        )
    finally:
        # whatever the failover did, cleanup must not destroy a VM that runs as production now
        with pytest.raises(CleanupRefused, match="live"):
            cleanup_failover(name, cloudstack_block)
    assert fault.calls == 2  # failed once, retried
    (record,) = failovers_of(configured_catalog, vm.vm_context_id)
    assert (record.mode, record.state) == ("live", "active") and len(record.volumes) == 2
    assert get_job(configured_catalog, record.job_id).state == "succeeded"
    assert destination_vms(cloudstack_block, vm.vm_context_id) == {record.destination_vm_id: "Running"}
    assert power_state(lab, name) == "poweredOff"
    assert context_state(configured_catalog, vm.vm_context_id) == "failed-over-live"


def test_a_bookkeeping_failure_that_outlasts_the_retries_rolls_the_failover_back(
    running_replica, lab, monkeypatch, cloudstack_block, agent_block, lab_vcenter_block, configured_catalog
):
    name = running_replica
    vm = find_vm(configured_catalog, name)
    fault = DeviceRecordFault(monkeypatch, times=None)
    with pytest.raises(RuntimeError, match="injected failure of the failover bookkeeping"):
        failover_vm(
            name, cloudstack_block, mode="live", vcenter=lab_vcenter_block, agent=agent_block, confirm_live=True
        )
    # rolled back as any other failure: the VM runs on its source again, and only there
    assert destination_vms(cloudstack_block, vm.vm_context_id) == {}
    assert power_state(lab, name) == "poweredOn"
    (record,) = failovers_of(configured_catalog, vm.vm_context_id)
    assert (record.mode, record.state) == ("live", "rolled-back")
    job = get_job(configured_catalog, record.job_id)
    assert (job.state, job.error) == ("failed", "injected failure of the failover bookkeeping")
    assert context_state(configured_catalog, vm.vm_context_id) == READY_FOR_FAILOVER

    fault.stop()
    result = cleanup_failover(name, cloudstack_block)
    assert result.removed_vms == [] and not result.did_anything
    assert power_state(lab, name) == "poweredOn"


def test_a_destination_that_cannot_be_removed_keeps_the_source_off(
    running_replica, lab, monkeypatch, cloudstack_sim, cloudstack_block, agent_block, lab_vcenter_block,
    configured_catalog,
):  # fmt: skip
    """The rollback of a failover whose VM was started cannot destroy that VM: powering the source on would run
    the VM twice. The source stays off and the failover in progress, which cleanup then rolls back."""
    name = running_replica
    vm = find_vm(configured_catalog, name)
    fault = DeviceRecordFault(monkeypatch, times=None)
    for attempt in range(3):  # the removal task retries twice: the fault outlasts it
        cloudstack_sim.inject_fault(
            "destroyVirtualMachine", nth=1 + attempt, kind="job-failure", errortext="injected destroy failure"
        )
    with pytest.raises(RuntimeError, match="injected failure of the failover bookkeeping"):
        failover_vm(
            name, cloudstack_block, mode="live", vcenter=lab_vcenter_block, agent=agent_block, confirm_live=True
        )
    cloudstack_sim.clear_faults()
    (record,) = failovers_of(configured_catalog, vm.vm_context_id)
    assert (record.mode, record.state) == ("live", "in-progress")
    assert list(destination_vms(cloudstack_block, vm.vm_context_id)) == [record.destination_vm_id]
    assert power_state(lab, name) == "poweredOff"
    assert context_state(configured_catalog, vm.vm_context_id) == SOURCE_OFF_UNFINISHED
    assert get_job(configured_catalog, record.job_id).state == "failed"

    fault.stop()
    result = cleanup_failover(name, cloudstack_block)
    assert result.removed_vms == [record.destination_vm_id]
    assert destination_vms(cloudstack_block, vm.vm_context_id) == {}
    (record,) = failovers_of(configured_catalog, vm.vm_context_id)
    assert record.state == "cleaned-up"
    # the VM runs nowhere until the operator decides (power the source on, or fail over again)
    assert power_state(lab, name) == "poweredOff"
    assert context_state(configured_catalog, vm.vm_context_id) == SOURCE_OFF_UNFINISHED
