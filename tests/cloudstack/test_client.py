"""The client's own behaviour: errors quoting CloudStack, async timeouts, models, the Prefect block."""

from __future__ import annotations

import time

import httpx
import pytest

from clients.cloudstack import (
    CloudStackClient,
    CloudStackError,
    CloudStackTimeout,
    CloudStackUnreachable,
    Volume,
    device_path_for_volume,
)
from tests.cloudstack.helpers import new_volume


def test_error_message_quotes_errortext_and_names_command_and_codes(cs, cloudstack_sim):
    volume = new_volume(cs, cloudstack_sim)
    cs.attach_volume(volume.id, cloudstack_sim.hub_vm_id)
    with pytest.raises(CloudStackError) as caught:
        cs.delete_volume(volume.id)
    assert str(caught.value) == (
        "CloudStack deleteVolume failed (errorcode 431, cserrorcode 4350): "
        '"Please specify a volume that is not attached to any VM."'
    )


def test_async_timeout_raises_clearly_and_the_job_still_completes(cs, cloudstack_sim):
    cloudstack_sim.job_delay = 1.5
    info = cloudstack_sim.info()
    started = time.monotonic()
    with pytest.raises(CloudStackTimeout) as caught:
        cs.create_volume("slow", 1, info.zone_id, info.custom_disk_offering_id, timeout=0.3)
    assert time.monotonic() - started < 1.2
    exc = caught.value
    assert exc.command == "createVolume" and exc.job_id
    assert str(exc) == (
        f"CloudStack createVolume failed (job {exc.job_id}): "
        '"job still pending after 0.3 s; it may still complete, check before retrying"'
    )
    assert cs.wait_job(exc.job_id, timeout=5)["volume"]["name"] == "slow"


def test_unreachable_server(tmp_path):
    client = CloudStackClient("http://127.0.0.1:9/client/api", "k", "s", timeout=0.5, read_attempts=2)
    with pytest.raises(CloudStackUnreachable, match=r"no answer from http://127\.0\.0\.1:9/client/api"):
        client.list_volumes()
    client.close()


def test_not_json_answer_is_reported(cloudstack_sim):
    client = CloudStackClient(cloudstack_sim.admin_url + "/nowhere", "k", "s", timeout=2, read_attempts=1)
    with pytest.raises(CloudStackError, match="HTTP 404"):
        client.list_volumes()
    client.close()


def test_volume_model_reads_cloudstack_field_names():
    detached = Volume.model_validate(
        {"id": "v", "name": "n", "type": "DATADISK", "state": "Ready", "size": 5, "zoneid": "z", "storage": "x"}
    )
    assert (detached.device_id, detached.virtual_machine_id, detached.attached) == (None, None, False)
    attached = Volume.model_validate({**detached.model_dump(by_alias=True), "deviceid": 4, "virtualmachineid": "vm"})
    assert (attached.device_id, attached.attached) == (4, True)


def test_requests_carry_signature_version_3_and_lower_case_names(cloudstack_sim):
    client = CloudStackClient(cloudstack_sim.url, "key", "secret")
    body = client.signed_body("listVolumes", {"virtualMachineId": "a b", "listall": True})
    names = [pair.split("=", 1)[0] for pair in body.split("&")]
    assert names == [n.lower() for n in names]
    assert "signatureversion=3" in body.split("&") and "expires" in names and names[-1] == "signature"
    assert "virtualmachineid=a%20b" in body and "listall=true" in body
    client.close()


def test_block_builds_a_working_client(cloudstack_sim):
    from blocks.cloudstack import CloudStack

    info = cloudstack_sim.info()
    block = CloudStack(
        endpoint=info.url,
        api_key=info.api_key,
        secret_key=info.secret_key,
        zone_id=info.zone_id,
        disk_offering_id=info.custom_disk_offering_id,
        service_offering_id=info.service_offering_id,
        template_id=info.template_id,
        hub_vm_id=info.hub_vm_id,
        device_root=info.dev_root,
    )
    assert CloudStack.get_block_type_slug() == "vmferry-cloudstack"
    assert info.secret_key not in repr(block)
    with block.client() as client:
        volume = client.create_volume("via-block", 1, block.zone_id, block.disk_offering_id)
        client.attach_volume(volume.id, block.hub_vm_id)
        assert device_path_for_volume(block.device_root_path(), volume.id).exists()
    assert httpx.get(info.admin_url + "/info", timeout=5).status_code == 200


def test_block_saves_and_loads_with_its_secret(cloudstack_sim, prefect_backend):
    from blocks.cloudstack import CloudStack

    info = cloudstack_sim.info()
    CloudStack(
        endpoint=info.url,
        api_key=info.api_key,
        secret_key=info.secret_key,
        zone_id=info.zone_id,
        disk_offering_id=info.custom_disk_offering_id,
        service_offering_id=info.service_offering_id,
        template_id=info.template_id,
        hub_vm_id=info.hub_vm_id,
        device_root=info.dev_root,
        poll_interval=0.01,
    ).save("cloudstack-sim-test", overwrite=True)
    loaded = CloudStack.load("cloudstack-sim-test")
    assert loaded.secret_key.get_secret_value() == info.secret_key
    with loaded.client() as client:
        assert client.get_vm(loaded.hub_vm_id).state == "Running"
