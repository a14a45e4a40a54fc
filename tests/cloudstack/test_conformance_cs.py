"""The simulator driven by an independent CloudStack client from PyPI (`cs`, which the project did not write):
its own signing, parameter names (camelCase apiKey/signatureVersion, ``details[0].cpuNumber``), list paging and
async job polling, so the wire format is checked from the outside and not only against our own client."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from pathlib import Path

import cs.client
import pytest
from cs import CloudStack, CloudStackApiException

from infra.lab.cloudstack import CloudStackSimulator


def _cs(sim: CloudStackSimulator, *, method: str = "get", secret: str | None = None) -> CloudStack:
    return CloudStack(
        endpoint=sim.url,
        key=sim.api_key,
        secret=secret or sim.secret_key,
        method=method,
        timeout=10,
        job_timeout=10,
        poll_interval=0.02,
    )


@pytest.mark.parametrize("method", ["get", "post"])
def test_volume_life_cycle_with_async_jobs(cloudstack_sim, method):
    api = _cs(cloudstack_sim, method=method)
    info = cloudstack_sim.info()
    [zone] = api.listZones(fetch_list=True)
    assert zone["id"] == info.zone_id
    created = api.createVolume(
        name="conformance", zoneId=info.zone_id, diskOfferingId=info.custom_disk_offering_id, size=2, fetch_result=True
    )["volume"]
    assert (created["size"], created["state"], created["type"]) == (2 * 1024**3, "Allocated", "DATADISK")
    attached = api.attachVolume(id=created["id"], virtualMachineId=info.hub_vm_id, fetch_result=True)["volume"]
    assert attached["virtualmachineid"] == info.hub_vm_id and attached["deviceid"] == 1
    listed = api.listVolumes(virtualMachineId=info.hub_vm_id, listAll=True, fetch_list=True)
    assert {v["id"]: v.get("deviceid") for v in listed}[created["id"]] == 1
    detached = api.detachVolume(id=created["id"], fetch_result=True)["volume"]
    assert "virtualmachineid" not in detached and "deviceid" not in detached
    assert api.deleteVolume(id=created["id"]) == {"success": True}
    assert api.listVolumes(id=created["id"], fetch_list=True) == []


def test_vm_life_cycle_with_custom_sizing_and_explicit_job_polling(cloudstack_sim):
    api = _cs(cloudstack_sim)
    info = cloudstack_sim.info()
    answer = api.deployVirtualMachine(
        zoneId=info.zone_id,
        serviceOfferingId=info.custom_service_offering_id,
        templateId=info.template_id,
        networkIds=[info.shared_network_id],
        startVm=False,
        details={"cpuNumber": 2, "cpuSpeed": 1000, "memory": 1024},
    )
    assert set(answer) == {"id", "jobid"}
    deadline = time.monotonic() + 10
    while (job := api.queryAsyncJobResult(jobId=answer["jobid"]))["jobstatus"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert (job["jobstatus"], job["jobresultcode"], job["jobinstanceid"]) == (1, 0, answer["id"])
    vm = job["jobresult"]["virtualmachine"]
    assert (vm["state"], vm["cpunumber"], vm["memory"]) == ("Stopped", 2, 1024)
    assert [nic["networkid"] for nic in vm["nic"]] == [info.shared_network_id]
    assert api.startVirtualMachine(id=vm["id"], fetch_result=True)["virtualmachine"]["state"] == "Running"
    assert api.stopVirtualMachine(id=vm["id"], fetch_result=True)["virtualmachine"]["state"] == "Stopped"
    api.destroyVirtualMachine(id=vm["id"], expunge=True, fetch_result=True)
    assert api.listVirtualMachines(id=vm["id"], fetch_list=True) == []


def test_custom_sizing_with_lower_case_keys_is_refused_as_cloudstack_does(cloudstack_sim):
    api = _cs(cloudstack_sim)
    info = cloudstack_sim.info()
    with pytest.raises(CloudStackApiException) as caught:
        api.deployVirtualMachine(
            zoneId=info.zone_id,
            serviceOfferingId=info.custom_service_offering_id,
            templateId=info.template_id,
            details={"cpunumber": 2, "cpuspeed": 1000, "memory": 1024},
        )
    assert caught.value.response.status_code == 431
    assert caught.value.error["errortext"] == "Invalid cpu cores value, specify a value between 1 and 2147483647"


def test_failed_job_and_refusals_reach_the_independent_client(cloudstack_sim):
    api = _cs(cloudstack_sim)
    info = cloudstack_sim.info()
    volume = api.createVolume(
        name="x", zoneId=info.zone_id, diskOfferingId=info.custom_disk_offering_id, size=1, fetch_result=True
    )["volume"]
    with pytest.raises(CloudStackApiException) as caught:
        api.attachVolume(id=volume["id"], virtualMachineId=info.hub_vm_id, deviceId=3, fetch_result=True)
    assert caught.value.error == {"errorcode": 530, "errortext": "deviceId should be 0,1,2,4-33"}
    with pytest.raises(CloudStackApiException) as caught:
        api.noSuchCommand()
    assert caught.value.response.status_code == 432
    with pytest.raises(CloudStackApiException) as caught:
        _cs(cloudstack_sim, secret="not-the-secret").listZones()
    assert caught.value.response.status_code == 401
    assert caught.value.error["errortext"] == "unable to verify user credentials and/or request signature"


def test_list_paging_of_the_independent_client(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(cs.client, "PAGE_SIZE", 2)
    with CloudStackSimulator(tmp_path / "paged", job_delay=0.01, default_page_size=2) as sim:
        api = _cs(sim)
        info = sim.info()
        for i in range(4):
            api.createVolume(name=f"p{i}", zoneId=info.zone_id, diskOfferingId=info.custom_disk_offering_id, size=1)
        names = [v["name"] for v in api.listVolumes(listAll=True, fetch_list=True)]
        # the hub's ROOT and our four volumes: three pages of at most two
        assert len(names) == 5 and {"p0", "p1", "p2", "p3"} < set(names)


def test_xml_is_what_a_client_gets_without_asking_for_json(cloudstack_sim):
    text = _cs(cloudstack_sim).listZones(json=False)
    root = ET.fromstring(text)
    assert root.tag == "listzonesresponse"
    assert root.find("zone").findtext("id") == cloudstack_sim.info().zone_id
