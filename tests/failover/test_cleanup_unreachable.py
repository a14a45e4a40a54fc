"""Cleanup while CloudStack does not answer, or refuses our keys: it fails saying so, removes nothing it could not
see, keeps the failover recorded, and a later cleanup (CloudStack back) finishes the job."""

from __future__ import annotations

import socket

import pytest

from catalog.failovers import failovers_of
from catalog.inventory import find_vm
from catalog.jobs import list_jobs
from clients.cloudstack import CloudStackUnreachable
from flows.cleanup import cleanup_failover
from flows.failover import failover_vm
from tasks.failover import DestinationVmUnknown
from tests.failover.test_failover import assert_left_detached, source_shas

pytestmark = pytest.mark.usefixtures("prefect_backend", "nbd_port_range")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens once the probe is closed


@pytest.mark.parametrize("fault", ["unreachable", "auth", "stopped"])
def test_cleanup_without_cloudstack_fails_clearly_and_stays_cleanable(
    fault, replicated, lab, cloudstack_sim, cloudstack_block, configured_catalog
):
    name = replicated(disks=2)
    expected = source_shas(lab, name, configured_catalog)
    vm = find_vm(configured_catalog, name)
    failover = failover_vm(name, cloudstack_block)
    destination = failover.destination_vm_id

    block = cloudstack_block
    if fault == "unreachable":
        # every attempt at the VM's lookup goes unanswered (the connection closes): CloudStackUnreachable
        for nth in (1, 2, 3):
            cloudstack_sim.inject_fault("listVirtualMachines", nth=nth, kind="timeout", hang_seconds=0.1)
        with pytest.raises(DestinationVmUnknown, match=rf"destination VM {destination}.*not removed.*again") as caught:
            cleanup_failover(name, block)
        assert isinstance(caught.value.__cause__, CloudStackUnreachable)
    elif fault == "auth":
        cloudstack_sim.inject_fault(
            "listVirtualMachines", errorcode=401, errortext="unable to verify user credentials and/or request signature"
        )
        with pytest.raises(DestinationVmUnknown, match=rf"destination VM {destination}.*unable to verify user"):
            cleanup_failover(name, block)
    else:  # the whole management server is gone: the block points at a port nobody listens on
        block = cloudstack_block.model_copy(update={"endpoint": f"http://127.0.0.1:{_closed_port()}/client/api"})
        with pytest.raises(CloudStackUnreachable, match="no answer from"):
            cleanup_failover(name, block)

    # nothing it could not see was called gone: the test VM runs, the failover is still there to clean up
    with cloudstack_block.client() as client:
        assert client.get_vm(destination).state == "Running"
    (record,) = failovers_of(configured_catalog, vm.vm_context_id)
    assert (record.state, record.destination_vm_id) == ("active", destination)
    (job,) = [j for j in list_jobs(configured_catalog) if j.kind == "cleanup"]
    assert job.state == "failed" and job.error and ("CloudStack" in job.error)

    cloudstack_sim.clear_faults()
    again = cleanup_failover(name, cloudstack_block)
    assert again.removed_vms == [destination]
    (record,) = failovers_of(configured_catalog, vm.vm_context_id)
    assert record.state == "cleaned-up"
    assert_left_detached(cloudstack_sim, cloudstack_block, configured_catalog, name, expected)
