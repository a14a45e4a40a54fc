"""The volume and VM rules the simulator enforces, each with CloudStack's own error text."""

from __future__ import annotations

import re

import pytest

from clients.cloudstack import CloudStackError, CloudStackJobFailed, CloudStackNotFound
from tests.cloudstack.helpers import base_params, new_vm, new_volume, raw_call

GIB = 1024**3
NOT_ATTACHED_TO_ANY_VM = "Please specify a volume that is not attached to any VM."
ROOT_NEEDS_STOPPED = "Root volume detach can happen only when vm is in states: Stopped or Destroyed"


def _sync_error(exc: CloudStackError, text: str, *, errorcode: int = 431, cserrorcode: int = 4350) -> None:
    assert not isinstance(exc, CloudStackJobFailed), "expected a synchronous refusal"
    assert (exc.errortext, exc.errorcode, exc.cserrorcode, exc.http_status) == (text, errorcode, cserrorcode, errorcode)


def _job_error(exc: CloudStackError, text: str, *, errorcode: int = 431) -> None:
    assert isinstance(exc, CloudStackJobFailed)
    assert (exc.errortext, exc.errorcode) == (text, errorcode)


# ---- createVolume --------------------------------------------------------------------------------------------


def test_create_volume_size_is_in_gb_and_volume_starts_allocated(cs, cloudstack_sim):
    volume = new_volume(cs, cloudstack_sim, size_gb=3)
    assert volume.size == 3 * GIB
    assert (volume.type, volume.state, volume.device_id, volume.virtual_machine_id) == (
        "DATADISK",
        "Allocated",
        None,
        None,
    )


def test_fixed_offering_sets_the_size_and_refuses_a_custom_one(cs, cloudstack_sim):
    info = cloudstack_sim.info()
    assert cs.create_volume("f", None, info.zone_id, info.fixed_disk_offering_id).size == 5 * GIB
    with pytest.raises(CloudStackError) as caught:
        cs.create_volume("f", 2, info.zone_id, info.fixed_disk_offering_id)
    _sync_error(caught.value, "This disk offering does not allow custom size")


@pytest.mark.parametrize(
    ("params", "text"),
    [
        ({"size": "1"}, "At least one of disk Offering ID or snapshot ID must be passed whilst creating volume"),
        ({"diskofferingid": "CUSTOM"}, "This disk offering requires a custom size specified"),
        ({"diskofferingid": "CUSTOM", "size": "0"}, "Disk size must be larger than 0"),
        (
            {"diskofferingid": "CUSTOM", "size": "2000"},
            "Volume size: 2000 GB is out of allowed range. Min: 1. Max: 1024",
        ),
        ({"diskofferingid": "CUSTOM", "size": "1", "zoneid": None}, "Unable to find zone by id null"),
    ],
)
def test_create_volume_refusals_are_synchronous(cs, cloudstack_sim, params, text):
    info = cloudstack_sim.info()
    call = {"zoneid": info.zone_id, "name": "x", **params}
    if call.get("diskofferingid") == "CUSTOM":
        call["diskofferingid"] = info.custom_disk_offering_id
    with pytest.raises(CloudStackError) as caught:
        cs.call("createVolume", **call)
    _sync_error(caught.value, text)


def test_parameter_processing_errors(cs, cloudstack_sim):
    info = cloudstack_sim.info()
    with pytest.raises(CloudStackError) as caught:
        cs.call("createVolume", zoneid=info.zone_id, diskofferingid=info.custom_disk_offering_id, size="abc")
    _sync_error(
        caught.value,
        "Unable to execute API command createvolume due to invalid value abc for parameter size",
        cserrorcode=9999,
    )
    missing = "0a0b0c0d-0000-4000-8000-000000000000"
    with pytest.raises(CloudStackError) as caught:
        cs.call("createVolume", zoneid=info.zone_id, diskofferingid=missing, size=1)
    _sync_error(
        caught.value,
        f"Unable to execute API command createvolume due to invalid value. Invalid parameter diskofferingid "
        f"value={missing} due to incorrect long value format, or entity does not exist or due to incorrect "
        "parameter annotation for the field in api cmd class.",
        cserrorcode=9999,
    )
    volume = new_volume(cs, cloudstack_sim)
    with pytest.raises(CloudStackError) as caught:
        cs.call("attachVolume", id=volume.id)
    _sync_error(
        caught.value,
        "Unable to execute API command attachvolume due to missing parameter virtualmachineid",
        cserrorcode=9999,
    )
    with pytest.raises(CloudStackError) as caught:
        cs.call("listTemplates")
    _sync_error(
        caught.value,
        "Unable to execute API command listtemplates due to missing parameter templatefilter",
        cserrorcode=9999,
    )


# ---- device ids ----------------------------------------------------------------------------------------------


def limit_data_volumes(sim, limit: int) -> None:
    """An operator's updateHypervisorCapabilities maxdatavolumeslimit on the lab hypervisor's row."""
    with sim._lock:
        sim.cloud.set_max_data_volumes("KVM", limit)


def test_data_disks_get_1_2_4_5_6_7_and_the_seventh_is_refused(cs, cloudstack_sim):
    limit_data_volumes(cloudstack_sim, 6)  # the column default, as on a row that never got a value
    vm = new_vm(cs, cloudstack_sim)
    assert [(v.type, v.device_id) for v in cs.list_volumes(virtual_machine_id=vm.id)] == [("ROOT", 0)]
    devices = [cs.attach_volume(new_volume(cs, cloudstack_sim, f"d{i}").id, vm.id).device_id for i in range(6)]
    assert devices == [1, 2, 4, 5, 6, 7]
    seventh = new_volume(cs, cloudstack_sim, "d7")
    with pytest.raises(CloudStackJobFailed) as caught:
        cs.attach_volume(seventh.id, vm.id)
    _job_error(
        caught.value,
        "The specified VM already has the maximum number of data disks (6) attached. Please specify another VM.",
    )
    assert cs.get_volume(seventh.id).virtual_machine_id is None


def test_auto_device_id_is_the_lowest_free_one_skipping_3(cs, cloudstack_sim):
    vm = new_vm(cs, cloudstack_sim)
    one, two, four = (cs.attach_volume(new_volume(cs, cloudstack_sim).id, vm.id) for _ in range(3))
    assert (one.device_id, two.device_id, four.device_id) == (1, 2, 4)
    cs.detach_volume(two.id)
    assert cs.attach_volume(new_volume(cs, cloudstack_sim).id, vm.id).device_id == 2
    assert cs.attach_volume(new_volume(cs, cloudstack_sim).id, vm.id).device_id == 5


@pytest.mark.parametrize("device_id", [3, 8, -1])
def test_explicit_device_id_out_of_range_or_cdrom(cs, cloudstack_sim, device_id):
    limit_data_volumes(cloudstack_sim, 6)
    vm = new_vm(cs, cloudstack_sim)
    with pytest.raises(CloudStackJobFailed) as caught:
        cs.attach_volume(new_volume(cs, cloudstack_sim).id, vm.id, device_id=device_id)
    _job_error(caught.value, "deviceId should be 0,1,2,4-7", errorcode=530)


def test_explicit_device_id_taken(cs, cloudstack_sim):
    vm = new_vm(cs, cloudstack_sim)
    assert cs.attach_volume(new_volume(cs, cloudstack_sim).id, vm.id, device_id=5).device_id == 5
    with pytest.raises(CloudStackJobFailed) as caught:
        cs.attach_volume(new_volume(cs, cloudstack_sim).id, vm.id, device_id=5)
    assert caught.value.errorcode == 530
    # CloudStack names the VM by its internal database id here, not its uuid
    assert re.fullmatch(r"deviceId 5 is used by vm \d+", caught.value.errortext)


def test_max_data_disks_is_configurable(tmp_path):
    from clients.cloudstack import CloudStackClient
    from infra.lab.cloudstack import CloudStackSimulator

    with CloudStackSimulator(tmp_path / "cs", job_delay=0.01, max_data_disks=2) as sim:
        client = CloudStackClient(sim.url, sim.api_key, sim.secret_key, poll_interval=0.02, timeout=5)
        vm = new_vm(client, sim)
        with pytest.raises(CloudStackJobFailed) as caught:
            client.attach_volume(new_volume(client, sim).id, vm.id, device_id=4)
        assert caught.value.errortext == "deviceId should be 0,1,2,4-3"
        assert [client.attach_volume(new_volume(client, sim).id, vm.id).device_id for _ in range(2)] == [1, 2]
        with pytest.raises(CloudStackJobFailed, match=r"maximum number of data disks \(2\)"):
            client.attach_volume(new_volume(client, sim).id, vm.id)
        client.close()


# ---- root volumes --------------------------------------------------------------------------------------------


def test_root_swap_on_a_stopped_vm_flips_types(cs, cloudstack_sim):
    vm = new_vm(cs, cloudstack_sim)
    (root,) = cs.list_volumes(virtual_machine_id=vm.id)
    os_disk = new_volume(cs, cloudstack_sim, "os")

    with pytest.raises(CloudStackJobFailed) as caught:
        cs.attach_volume(os_disk.id, vm.id, device_id=0)
    _job_error(caught.value, "Vm already has root volume attached to it")

    old_root = cs.detach_volume(root.id)
    assert (old_root.type, old_root.device_id, old_root.virtual_machine_id) == ("DATADISK", None, None)

    new_root = cs.attach_volume(os_disk.id, vm.id, device_id=0)
    assert (new_root.type, new_root.device_id) == ("ROOT", 0)
    assert cs.start_vm(vm.id).state == "Running"
    assert {v.state for v in cs.list_volumes(virtual_machine_id=vm.id)} == {"Ready"}
    cs.delete_volume(old_root.id)


def test_root_attach_and_detach_need_a_stopped_vm(cs, cloudstack_sim):
    vm = new_vm(cs, cloudstack_sim, startvm=True)
    assert vm.state == "Running"
    (root,) = cs.list_volumes(virtual_machine_id=vm.id)
    with pytest.raises(CloudStackJobFailed) as caught:
        cs.detach_volume(root.id)
    _job_error(caught.value, ROOT_NEEDS_STOPPED)
    with pytest.raises(CloudStackJobFailed) as caught:
        cs.attach_volume(new_volume(cs, cloudstack_sim).id, vm.id, device_id=0)
    _job_error(caught.value, ROOT_NEEDS_STOPPED)
    assert cs.stop_vm(vm.id, forced=True).state == "Stopped"
    assert cs.detach_volume(root.id).type == "DATADISK"


def test_start_without_root_volume_fails(cs, cloudstack_sim):
    vm = new_vm(cs, cloudstack_sim)
    (root,) = cs.list_volumes(virtual_machine_id=vm.id)
    cs.detach_volume(root.id)
    with pytest.raises(CloudStackJobFailed, match="no ROOT volume"):
        cs.start_vm(vm.id)


# ---- attach / detach / delete --------------------------------------------------------------------------------


def test_a_volume_attached_to_one_vm_cannot_go_to_another(cs, cloudstack_sim):
    volume = new_volume(cs, cloudstack_sim)
    cs.attach_volume(volume.id, cloudstack_sim.hub_vm_id)
    with pytest.raises(CloudStackJobFailed) as caught:
        cs.attach_volume(volume.id, new_vm(cs, cloudstack_sim).id)
    _job_error(caught.value, NOT_ATTACHED_TO_ANY_VM)


def test_vm_must_be_running_or_stopped_to_attach(cs, cloudstack_sim):
    vm = new_vm(cs, cloudstack_sim)
    cs.destroy_vm(vm.id, expunge=False)
    assert cs.get_vm(vm.id).state == "Destroyed"
    with pytest.raises(CloudStackJobFailed) as caught:
        cs.attach_volume(new_volume(cs, cloudstack_sim).id, vm.id)
    _job_error(caught.value, "Please specify a VM that is either running or stopped.")


def test_deleting_an_attached_volume_fails_synchronously(cs, cloudstack_sim):
    volume = new_volume(cs, cloudstack_sim)
    cs.attach_volume(volume.id, cloudstack_sim.hub_vm_id)
    with pytest.raises(CloudStackError) as caught:
        cs.delete_volume(volume.id)
    _sync_error(caught.value, NOT_ATTACHED_TO_ANY_VM)
    cs.detach_volume(volume.id)
    cs.delete_volume(volume.id)
    with pytest.raises(CloudStackNotFound):
        cs.get_volume(volume.id)
    # a removed id still resolves: an empty list, not an error, and CloudStack leaves out count and the key
    response = raw_call(cloudstack_sim, base_params(cloudstack_sim, "listVolumes", id=volume.id))
    assert response.json() == {"listvolumesresponse": {}}
    with pytest.raises(CloudStackError) as caught:
        cs.delete_volume(volume.id)
    assert caught.value.errortext.startswith("Unable to find volume with ID: ")


def test_get_of_an_id_that_never_existed_is_not_found(cs):
    with pytest.raises(CloudStackNotFound, match="entity does not exist"):
        cs.get_volume("12345678-1234-4234-8234-123456789012")
    with pytest.raises(CloudStackNotFound):
        cs.get_vm("12345678-1234-4234-8234-123456789012")


def test_detach_by_device_id_and_vm_and_the_detach_refusals(cs, cloudstack_sim):
    vm = new_vm(cs, cloudstack_sim)
    volume = cs.attach_volume(new_volume(cs, cloudstack_sim).id, vm.id)
    detached = cs.call_async("detachVolume", deviceid=volume.device_id, virtualmachineid=vm.id)["volume"]
    assert detached["id"] == volume.id
    assert "deviceid" not in detached and "virtualmachineid" not in detached
    with pytest.raises(CloudStackJobFailed) as caught:
        cs.detach_volume(volume.id)
    _job_error(caught.value, "The specified volume is not attached to a VM.")
    with pytest.raises(CloudStackJobFailed) as caught:
        cs.call_async("detachVolume", deviceid=1)
    _job_error(caught.value, "Please provide either a volume id, or a tuple(device id, instance id)")
    with pytest.raises(CloudStackJobFailed) as caught:
        cs.call_async("detachVolume", id=volume.id, virtualmachineid=vm.id)
    _job_error(caught.value, "Please provide either a volume id, or a tuple(device id, instance id)")


def test_volume_response_fields(cs, cloudstack_sim):
    volume = new_volume(cs, cloudstack_sim, size_gb=2)
    raw = cs.call("listVolumes", id=volume.id)
    assert raw["count"] == 1
    detached = raw["volume"][0]
    assert "deviceid" not in detached and "virtualmachineid" not in detached and "path" not in detached
    cs.attach_volume(volume.id, cloudstack_sim.hub_vm_id)
    attached = cs.call("listVolumes", id=volume.id)["volume"][0]
    assert attached["deviceid"] == 1
    assert attached["virtualmachineid"] == cloudstack_sim.hub_vm_id
    assert (attached["vmname"], attached["vmstate"]) == ("vmferry-hub", "Running")
    assert (attached["type"], attached["state"], attached["size"]) == ("DATADISK", "Ready", 2 * GIB)
    assert attached["path"]


# ---- virtual machines ----------------------------------------------------------------------------------------


def test_deploy_defaults_to_starting_and_creates_a_root_volume_from_the_template(cs, cloudstack_sim):
    info = cloudstack_sim.info()
    vm = cs.call_async(
        "deployVirtualMachine",
        zoneid=info.zone_id,
        serviceofferingid=info.service_offering_id,
        templateid=info.template_id,
    )["virtualmachine"]
    assert vm["state"] == "Running" and vm["name"] == f"VM-{vm['id']}"
    (root,) = cs.list_volumes(virtual_machine_id=vm["id"])
    assert (root.type, root.device_id, root.state, root.size) == ("ROOT", 0, "Ready", 2 * GIB)

    sized = cs.deploy_vm(
        zone_id=info.zone_id,
        service_offering_id=info.service_offering_id,
        template_id=info.template_id,
        name="sized",
        display_name="Sized VM",
        root_disk_size_gb=7,
    )
    assert (sized.state, sized.name, sized.display_name) == ("Stopped", "sized", "Sized VM")
    (root,) = cs.list_volumes(virtual_machine_id=sized.id)
    assert (root.state, root.size) == ("Allocated", 7 * GIB)


def test_destroy_with_expunge_keeps_unlisted_data_volumes_detached(cs, cloudstack_sim):
    vm = new_vm(cs, cloudstack_sim)
    (root,) = cs.list_volumes(virtual_machine_id=vm.id)
    keep = cs.attach_volume(new_volume(cs, cloudstack_sim, "keep").id, vm.id)
    drop = cs.attach_volume(new_volume(cs, cloudstack_sim, "drop").id, vm.id)
    cs.destroy_vm(vm.id, expunge=True, volume_ids=[drop.id])
    assert cs.list_vms(vm_id=vm.id) == []
    assert cs.list_volumes(volume_id=root.id) == []
    assert cs.list_volumes(volume_id=drop.id) == []
    kept = cs.get_volume(keep.id)
    assert (kept.virtual_machine_id, kept.device_id) == (None, None)


def test_name_lookups(cs, cloudstack_sim):
    info = cloudstack_sim.info()
    assert cs.call("listZones", name="sim-zone-1")["zone"][0]["id"] == info.zone_id
    offerings = {o["name"]: o for o in cs.call("listDiskOfferings")["diskoffering"]}
    assert offerings["Custom"]["iscustomized"] is True and offerings["Custom"]["id"] == info.custom_disk_offering_id
    assert offerings["Small"]["disksize"] == 5 and offerings["Small"]["iscustomized"] is False
    service = cs.call("listServiceOfferings")["serviceoffering"][0]
    assert (service["id"], service["cpunumber"], service["memory"]) == (info.service_offering_id, 2, 2048)
    template = cs.call("listTemplates", templatefilter="executable")["template"][0]
    assert template["id"] == info.template_id
    hub = cs.get_vm(cloudstack_sim.hub_vm_id)
    assert (hub.name, hub.state) == ("vmferry-hub", "Running")
