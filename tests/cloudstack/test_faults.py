"""Fault injection: the nth call of a command errors, hangs past the client's timeout, or its job fails."""

from __future__ import annotations

import time

import httpx
import pytest

from clients.cloudstack import CloudStackClient, CloudStackError, CloudStackJobFailed, CloudStackUnreachable
from tests.cloudstack.helpers import new_volume


def test_nth_call_errors_with_cloudstack_shape(cs, cloudstack_sim):
    cloudstack_sim.inject_fault("createVolume", nth=2, errortext="primary storage is full")
    new_volume(cs, cloudstack_sim, "first")
    with pytest.raises(CloudStackError) as caught:
        new_volume(cs, cloudstack_sim, "second")
    exc = caught.value
    assert (exc.errorcode, exc.cserrorcode, exc.http_status) == (530, 4250, 530)
    assert exc.errortext == "primary storage is full"
    assert '"primary storage is full"' in str(exc)
    assert [v.name for v in cs.list_volumes(type="DATADISK")] == ["first"]  # an error fault does nothing
    new_volume(cs, cloudstack_sim, "third")  # one-shot
    assert cloudstack_sim.faults() == []


def test_reads_are_retried_on_gateway_errors_but_changes_are_not(cs, cloudstack_sim):
    cloudstack_sim.inject_fault("listVolumes", errorcode=503)
    assert cs.list_volumes(type="DATADISK") == []
    assert cloudstack_sim.calls["listVolumes"] == 2

    cloudstack_sim.inject_fault("deleteVolume", errorcode=503)
    volume = new_volume(cs, cloudstack_sim)
    with pytest.raises(CloudStackError):
        cs.delete_volume(volume.id)
    assert cloudstack_sim.calls["deleteVolume"] == 1


def test_timeout_of_a_read_is_retried(cloudstack_sim):
    client = CloudStackClient(cloudstack_sim.url, cloudstack_sim.api_key, cloudstack_sim.secret_key, timeout=0.3)
    cloudstack_sim.inject_fault("listZones", kind="timeout", hang_seconds=5)
    started = time.monotonic()
    assert len(client.call("listZones")["zone"]) == 1
    assert time.monotonic() - started < 3
    client.close()


def test_timeout_of_a_change_raises_unreachable_and_may_have_happened(cloudstack_sim):
    client = CloudStackClient(
        cloudstack_sim.url, cloudstack_sim.api_key, cloudstack_sim.secret_key, timeout=0.3, poll_interval=0.01
    )
    info = cloudstack_sim.info()
    cloudstack_sim.inject_fault("createVolume", kind="timeout", hang_seconds=5, execute=True)
    with pytest.raises(CloudStackUnreachable) as caught:
        client.create_volume("lost-answer", 1, info.zone_id, info.custom_disk_offering_id)
    assert "ReadTimeout" in caught.value.errortext
    assert cloudstack_sim.calls["createVolume"] == 1
    # the answer was lost, the volume was not: a caller looks it up by name before creating it again
    assert [v.name for v in client.list_volumes(name="lost-answer")] == ["lost-answer"]
    client.close()


def test_job_failure_ends_the_job_with_status_2_and_does_nothing(cs, cloudstack_sim):
    volume = new_volume(cs, cloudstack_sim)
    cloudstack_sim.inject_fault("attachVolume", kind="job-failure", errortext="Failed to attach volume data to VM hub")
    with pytest.raises(CloudStackJobFailed) as caught:
        cs.attach_volume(volume.id, cloudstack_sim.hub_vm_id)
    assert (caught.value.errorcode, caught.value.errortext) == (530, "Failed to attach volume data to VM hub")
    assert cs.get_volume(volume.id).virtual_machine_id is None
    assert cs.attach_volume(volume.id, cloudstack_sim.hub_vm_id).device_id == 1


def test_failed_deploy_job_leaves_the_vm_in_error(cs, cloudstack_sim):
    info = cloudstack_sim.info()
    cloudstack_sim.inject_fault("deployVirtualMachine", kind="job-failure", errorcode=533, errortext="no capacity")
    answer = cs.submit(
        "deployVirtualMachine",
        zoneid=info.zone_id,
        serviceofferingid=info.service_offering_id,
        templateid=info.template_id,
    )
    with pytest.raises(CloudStackJobFailed, match="no capacity"):
        cs.wait_job(answer["jobid"], command="deployVirtualMachine")
    assert cs.get_vm(answer["id"]).state == "Error"
    cs.destroy_vm(answer["id"])


def test_fault_arguments_are_checked(cloudstack_sim):
    for sync_command in ("deleteVolume", "queryAsyncJobResult"):
        with pytest.raises(ValueError, match="synchronous"):
            cloudstack_sim.inject_fault(sync_command, kind="job-failure")
    with pytest.raises(ValueError, match="fault kind"):
        cloudstack_sim.inject_fault("listVolumes", kind="slow")
    with pytest.raises(ValueError, match="does not implement"):
        cloudstack_sim.inject_fault("migrateVolume")


def test_admin_endpoint_injects_and_lists_faults(cs, cloudstack_sim):
    admin = cloudstack_sim.admin_url
    added = httpx.post(f"{admin}/faults", json={"command": "listZones", "errortext": "over HTTP"}, timeout=5)
    assert added.status_code == 200 and added.json()["kind"] == "error"
    assert [f["command"] for f in httpx.get(f"{admin}/faults", timeout=5).json()["faults"]] == ["listZones"]
    with pytest.raises(CloudStackError, match='"over HTTP"'):
        cs.call("listZones")
    assert httpx.post(f"{admin}/faults", json={"command": "listZones", "bogus": 1}, timeout=5).status_code == 400
    assert httpx.get(f"{admin}/info", timeout=5).json()["hub_vm_id"] == cloudstack_sim.hub_vm_id
    assert not cloudstack_sim.admin_url.endswith("/client/api")


def test_polling_survives_a_lost_job_query(cs, cloudstack_sim):
    volume = new_volume(cs, cloudstack_sim)
    cloudstack_sim.inject_fault("queryAsyncJobResult", errorcode=503)
    assert cs.attach_volume(volume.id, cloudstack_sim.hub_vm_id).device_id == 1
    assert cloudstack_sim.faults() == []
