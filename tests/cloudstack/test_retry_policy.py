"""One retry policy per remote call: a transient error costs REMOTE_ATTEMPTS attempts in all (the client's, not
the client's times the task's), a refusal one attempt. Against the simulator, counting the calls it answered."""

from __future__ import annotations

import pytest

from clients.cloudstack import CloudStackError
from tasks.failover import read_back_devices
from vmferry.errors import REMOTE_ATTEMPTS

pytestmark = pytest.mark.usefixtures("prefect_backend")

EXTRA = 2  # faults beyond the attempts the policy allows: they must stay unused


def _calls(sim, command: str) -> int:
    return sim.calls.get(command, 0)


def test_a_transient_error_is_tried_remote_attempts_times_in_all(cloudstack_sim, cloudstack_block):
    for nth in range(1, REMOTE_ATTEMPTS + EXTRA + 1):
        cloudstack_sim.inject_fault("listVolumes", nth=nth, errorcode=503, errortext="injected: service unavailable")
    before = _calls(cloudstack_sim, "listVolumes")
    with pytest.raises(CloudStackError, match="injected: service unavailable") as caught:
        read_back_devices(cloudstack_block, cloudstack_sim.hub_vm_id)
    assert caught.value.client_attempts == REMOTE_ATTEMPTS
    assert _calls(cloudstack_sim, "listVolumes") - before == REMOTE_ATTEMPTS
    assert len(cloudstack_sim.faults()) == EXTRA


@pytest.mark.parametrize(
    ("errorcode", "errortext"),
    [
        (431, "Unable to execute API command listvolumes due to invalid value"),
        (401, "unable to verify user credentials"),
    ],
    ids=["refused-parameter", "refused-credentials"],
)
def test_a_refusal_is_tried_once(errorcode, errortext, cloudstack_sim, cloudstack_block):
    for nth in range(1, REMOTE_ATTEMPTS + 1):
        cloudstack_sim.inject_fault("listVolumes", nth=nth, errorcode=errorcode, errortext=errortext)
    before = _calls(cloudstack_sim, "listVolumes")
    with pytest.raises(CloudStackError, match=errortext) as caught:
        read_back_devices(cloudstack_block, cloudstack_sim.hub_vm_id)
    assert caught.value.retryable is False
    assert _calls(cloudstack_sim, "listVolumes") - before == 1
    assert len(cloudstack_sim.faults()) == REMOTE_ATTEMPTS - 1


def test_a_lost_answer_to_a_change_is_retried_by_the_task_only(cloudstack_sim, cloudstack_block):
    """A command that changes something is sent once by the client; the task, which looks first, retries it."""
    from tasks.failover import start_destination_vm
    from tests.cloudstack.helpers import client_for, new_vm

    with client_for(cloudstack_sim) as client:
        vm = new_vm(client, cloudstack_sim)
    for nth in range(1, REMOTE_ATTEMPTS + EXTRA + 1):
        cloudstack_sim.inject_fault("startVirtualMachine", nth=nth, errorcode=530, errortext="injected: try later")
    before = _calls(cloudstack_sim, "startVirtualMachine")
    with pytest.raises(CloudStackError, match="injected: try later"):
        start_destination_vm(cloudstack_block, vm.id)
    assert _calls(cloudstack_sim, "startVirtualMachine") - before == REMOTE_ATTEMPTS
    assert len(cloudstack_sim.faults()) == EXTRA
