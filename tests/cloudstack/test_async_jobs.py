"""Async jobs: the answer to the command, then queryAsyncJobResult pending -> succeeded or failed (431 vs 530)."""

from __future__ import annotations

import re
import time

import pytest

from clients.cloudstack import CloudStackError, CloudStackJobFailed
from tests.cloudstack.helpers import new_vm, new_volume


def test_create_style_command_answers_id_and_jobid_then_job_goes_pending_to_succeeded(cs, cloudstack_sim):
    cloudstack_sim.job_delay = 0.8
    info = cloudstack_sim.info()
    answer = cs.submit(
        "createVolume", name="d1", size=2, zoneid=info.zone_id, diskofferingid=info.custom_disk_offering_id
    )
    assert set(answer) == {"id", "jobid"}

    pending = cs.call("queryAsyncJobResult", jobid=answer["jobid"])
    assert pending["jobstatus"] == 0
    assert pending["jobresultcode"] == 0
    assert "jobresult" not in pending and "completed" not in pending
    assert pending["cmd"] == "org.apache.cloudstack.api.command.admin.volume.CreateVolumeCmdByAdmin"
    assert pending["jobinstancetype"] == "Volume" and pending["jobinstanceid"] == answer["id"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+0000", pending["created"])

    result = cs.wait_job(answer["jobid"], command="createVolume")
    assert result["volume"]["id"] == answer["id"]
    assert result["volume"]["size"] == 2 * 1024**3

    done = cs.call("queryAsyncJobResult", jobid=answer["jobid"])
    assert done["jobstatus"] == 1 and done["jobresultcode"] == 0
    assert done["jobresulttype"] == "object"
    assert done["jobresult"]["volume"]["id"] == answer["id"]
    assert "completed" in done


def test_other_async_commands_answer_only_a_jobid(cs, cloudstack_sim):
    volume = new_volume(cs, cloudstack_sim)
    answer = cs.submit("attachVolume", id=volume.id, virtualmachineid=cloudstack_sim.hub_vm_id)
    assert set(answer) == {"jobid"}
    assert cs.wait_job(answer["jobid"])["volume"]["virtualmachineid"] == cloudstack_sim.hub_vm_id


def _failed_job(cs, job_id: str) -> dict:
    deadline = time.monotonic() + 5
    while True:
        job = cs.call("queryAsyncJobResult", jobid=job_id)
        if job["jobstatus"] != 0 or time.monotonic() > deadline:
            return job
        time.sleep(0.02)


def test_invalid_parameter_failure_is_jobresultcode_431(cs, cloudstack_sim):
    volume = new_volume(cs, cloudstack_sim)
    vm = new_vm(cs, cloudstack_sim)
    cs.attach_volume(volume.id, cloudstack_sim.hub_vm_id)
    job = _failed_job(cs, cs.submit("attachVolume", id=volume.id, virtualmachineid=vm.id)["jobid"])
    assert job["jobstatus"] == 2
    assert job["jobresultcode"] == 431
    assert job["jobresulttype"] == "object"
    assert job["jobresult"] == {
        "errorcode": 431,
        "errortext": "Please specify a volume that is not attached to any VM.",
    }


def test_runtime_failure_is_jobresultcode_530(cs, cloudstack_sim):
    volume = new_volume(cs, cloudstack_sim)
    job_id = cs.submit("attachVolume", id=volume.id, virtualmachineid=cloudstack_sim.hub_vm_id, deviceid=3)["jobid"]
    job = _failed_job(cs, job_id)
    assert (job["jobstatus"], job["jobresultcode"]) == (2, 530)
    assert job["jobresult"] == {"errorcode": 530, "errortext": "deviceId should be 0,1,2,4-33"}  # KVM: 32


def test_client_raises_job_failed_quoting_errortext(cs, cloudstack_sim):
    volume = new_volume(cs, cloudstack_sim)
    with pytest.raises(CloudStackJobFailed) as caught:
        cs.attach_volume(volume.id, cloudstack_sim.hub_vm_id, device_id=3)
    exc = caught.value
    assert exc.errorcode == 530 and exc.job_id and exc.command == "attachVolume"
    assert exc.errortext == "deviceId should be 0,1,2,4-33"
    assert '"deviceId should be 0,1,2,4-33"' in str(exc)


def test_unknown_job_id_fails_parameter_translation(cs):
    with pytest.raises(CloudStackError) as caught:
        cs.call("queryAsyncJobResult", jobid="00000000-0000-0000-0000-000000000000")
    assert caught.value.errorcode == 431
    assert caught.value.cserrorcode == 9999
    assert caught.value.errortext.startswith(
        "Unable to execute API command queryasyncjobresult due to invalid value. Invalid parameter jobid "
        "value=00000000-0000-0000-0000-000000000000 due to incorrect long value format, or entity does not exist"
    )


def test_job_state_changes_only_when_the_job_completes(cs, cloudstack_sim):
    cloudstack_sim.job_delay = 0.8
    volume = new_volume(cs, cloudstack_sim)
    job_id = cs.submit("attachVolume", id=volume.id, virtualmachineid=cloudstack_sim.hub_vm_id)["jobid"]
    assert cs.get_volume(volume.id).virtual_machine_id is None
    cs.wait_job(job_id)
    assert cs.get_volume(volume.id).virtual_machine_id == cloudstack_sim.hub_vm_id
