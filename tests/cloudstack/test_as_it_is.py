"""CloudStack as it really is: each rule the simulator mirrors (docs/cloudstack-rules.md) refused with
CloudStack's code and text, and our client doing the right thing against it."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from clients.cloudstack import (
    CloudStackAdminRequired,
    CloudStackError,
    CloudStackJobFailed,
    find_volume_device,
    require_admin_field,
)
from infra.lab.cloudstack import CloudStackSimulator
from tasks.cloudstack import wait_for_device
from tests.cloudstack.helpers import base_params, client_for, new_vm, new_volume, raw_call, ready_volume_on

UNSUPPORTED = "The given command does not exist or it is not available for user"


# ---- requests: names, map keys, envelope ----------------------------------------------------------------------


def test_details_keys_are_kept_as_sent_so_lower_case_cpunumber_is_refused(cloudstack_sim):
    info = cloudstack_sim.info()
    params = base_params(
        cloudstack_sim,
        "deployVirtualMachine",
        zoneid=info.zone_id,
        serviceofferingid=info.custom_service_offering_id,
        templateid=info.template_id,
        startvm="false",
        **{"details[0].cpunumber": "2", "details[0].cpuspeed": "1000", "details[0].memory": "1024"},
    )
    response = raw_call(cloudstack_sim, params)
    assert response.status_code == 431
    assert response.json()["deployvirtualmachineresponse"]["errortext"] == (
        "Invalid cpu cores value, specify a value between 1 and 2147483647"
    )
    # the map's own name is case-insensitive, its keys are not
    params = {k.replace("details[0].cpunumber", "DETAILS[0].cpuNumber"): v for k, v in params.items()}
    params = {k.replace("details[0].cpuspeed", "Details[0].cpuSpeed"): v for k, v in params.items()}
    assert raw_call(cloudstack_sim, params).status_code == 200


def test_our_client_sends_custom_sizing_as_cloudstack_reads_it(cs, cloudstack_sim):
    body = cs.signed_body("deployVirtualMachine", {"details[0].cpuNumber": 2, "ZoneId": "z"})
    assert "details[0].cpuNumber=2" in body and "zoneid=z" in body
    info = cloudstack_sim.info()
    vm = cs.deploy_vm(
        zone_id=info.zone_id,
        service_offering_id=info.custom_service_offering_id,
        template_id=info.template_id,
        cpu_number=3,
        cpu_speed_mhz=1200,
        memory_mb=1536,
    )
    assert (vm.cpu_number, vm.memory_mb) == (3, 1536)


def test_answers_xml_without_response_json(cloudstack_sim):
    params = base_params(cloudstack_sim, "listZones")
    params.pop("response")
    response = raw_call(cloudstack_sim, params)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/xml")
    root = ET.fromstring(response.content)
    assert root.tag == "listzonesresponse" and root.get("cloud-stack-version")
    assert root.findtext("count") == "1"
    assert root.find("zone").findtext("id") == cloudstack_sim.info().zone_id


def test_unknown_or_miscased_command_is_432(cloudstack_sim):
    for command in ("noSuchCommand", "listzones"):
        response = raw_call(cloudstack_sim, base_params(cloudstack_sim, command))
        assert response.status_code == 432
        assert response.json() == {
            "errorresponse": {"uuidList": [], "errorcode": 432, "cserrorcode": 9999, "errortext": UNSUPPORTED}
        }
    # verifyRequest looks the command up before the signature: a bad one changes nothing
    params = base_params(cloudstack_sim, "noSuchCommand")
    assert raw_call(cloudstack_sim, params, signature="bad").status_code == 432
    assert raw_call(cloudstack_sim, base_params(cloudstack_sim, "listZones"), signature="bad").status_code == 401


# ---- paging --------------------------------------------------------------------------------------------------


@pytest.fixture
def small_pages(tmp_path: Path):
    with CloudStackSimulator(tmp_path / "paged", job_delay=0.01, default_page_size=3) as sim:
        yield sim


def test_lists_page_and_our_client_pages_until_a_short_page(small_pages):
    sim = small_pages
    with client_for(sim) as admin:
        made = {new_volume(admin, sim, name=f"v{i}").id for i in range(7)}
        everything = {v.id for v in admin.list_volumes()}
        assert admin.page_size == 3  # the cloud's default.page.size is below 500: the client pages at 3
    # the hub's ROOT plus our 7: more than two pages of 3
    assert made < everything and len(everything) == 8
    first = raw_call(sim, base_params(sim, "listVolumes")).json()["listvolumesresponse"]
    assert (first["count"], len(first["volume"])) == (8, 3)
    last = raw_call(sim, base_params(sim, "listVolumes", page="3", pagesize="3")).json()["listvolumesresponse"]
    assert (last["count"], len(last["volume"])) == (8, 2)
    beyond = raw_call(sim, base_params(sim, "listVolumes", page="9", pagesize="3")).json()["listvolumesresponse"]
    assert beyond == {"count": 8}


@pytest.mark.parametrize(
    ("paging", "text"),
    [
        ({"page": "1"}, '"pagesize" parameter is required when "page" is specified'),
        ({"pagesize": "2"}, '"page" parameter is required when "pagesize" is specified'),
        ({"page": "1", "pagesize": "4"}, "Page size can't exceed max allowed page size value: 3"),
    ],
)
def test_paging_refusals(small_pages, paging, text):
    response = raw_call(small_pages, base_params(small_pages, "listVolumes", **paging))
    assert response.status_code == 431
    assert response.json()["listvolumesresponse"]["errortext"] == text


# ---- root admin only -----------------------------------------------------------------------------------------


def test_path_and_storage_are_for_root_admins_only(cloudstack_sim):
    hub = cloudstack_sim.hub_vm_id
    with client_for(cloudstack_sim) as admin, client_for(cloudstack_sim, user=True) as user:
        [root] = admin.list_volumes(virtual_machine_id=hub)
        assert root.path and root.storage == "sim-primary" and root.storage_id == cloudstack_sim.info().primary_pool_id
        [seen] = user.list_volumes(virtual_machine_id=hub)
        assert (seen.path, seen.storage, seen.storage_id) == (None, None, None)
        with pytest.raises(CloudStackAdminRequired, match="root admin"):
            require_admin_field(seen, "storage_id", "the failover checks where the volumes are")
        assert [p.scope for p in admin.list_storage_pools()] == ["CLUSTER"]
        with pytest.raises(CloudStackAdminRequired) as caught:
            user.list_storage_pools()
        assert caught.value.errorcode == 432
        assert caught.value.errortext.startswith(
            "The given command:listStoragePools does not exist or it is not available for user with id:null"
        )
        assert "root admin" in str(caught.value)


# ---- networks ------------------------------------------------------------------------------------------------


def test_deploy_without_networkids_takes_the_only_isolated_network(cs, cloudstack_sim):
    vm = new_vm(cs, cloudstack_sim)
    [nic] = vm.nics
    assert nic.network_id == cloudstack_sim.info().isolated_network_id and nic.is_default
    assert nic.ip_address and nic.ip_address.startswith("10.1.1.")


def test_deploy_without_networkids_refused_when_the_account_has_two_isolated_networks(cs, cloudstack_sim):
    cloud = cloudstack_sim.cloud
    cloud.add_network(next(iter(cloud.zones.values())), "second", "Isolated", "10.9.0.0/24")
    with pytest.raises(CloudStackError) as caught:
        new_vm(cs, cloudstack_sim)
    assert caught.value.errorcode == 431 and not isinstance(caught.value, CloudStackJobFailed)
    assert caught.value.errortext.startswith("More than 1 default Isolated networks are found for account ")
    assert caught.value.errortext.endswith("; please specify networkIds")


def test_deploy_without_networkids_creates_an_isolated_network_when_there_is_none(cs, cloudstack_sim):
    cloud = cloudstack_sim.cloud
    cloud.networks.pop(cloudstack_sim.info().isolated_network_id)
    vm = new_vm(cs, cloudstack_sim)
    [created] = [n for n in cs.list_networks() if n.id == vm.nics[0].network_id]
    assert (created.name, created.type) == ("admin-network", "Isolated")


def test_nics_follow_the_requested_networks_in_order_with_static_ips(cs, cloudstack_sim):
    info = cloudstack_sim.info()
    base = {"zone_id": info.zone_id, "service_offering_id": info.service_offering_id, "template_id": info.template_id}
    vm = cs.deploy_vm(**base, networks=[(info.shared_network_id, None), (info.isolated_network_id, None)])
    assert [(n.network_id, n.device_id, n.is_default) for n in vm.nics] == [
        (info.shared_network_id, 0, True),
        (info.isolated_network_id, 1, False),
    ]
    pinned = cs.deploy_vm(**base, networks=[(info.isolated_network_id, "10.1.1.77"), (info.shared_network_id, None)])
    assert pinned.nics[0].ip_address == "10.1.1.77"
    with pytest.raises(CloudStackError) as caught:  # taken now
        cs.deploy_vm(**base, networks=[(info.isolated_network_id, "10.1.1.77")])
    assert caught.value.errorcode == 533
    assert caught.value.errortext.startswith("Unable to acquire Guest IP address for network Ntwk[")
    with pytest.raises(CloudStackError, match="ipToNetworkMap can't be specified along with networkIds or ipAddress"):
        cs.call(
            "deployVirtualMachine",
            zoneid=info.zone_id,
            serviceofferingid=info.service_offering_id,
            templateid=info.template_id,
            networkids=info.shared_network_id,
            **{"iptonetworklist[0].networkid": info.isolated_network_id},
        )


# ---- storage pools -------------------------------------------------------------------------------------------


def _topology(sim: CloudStackSimulator):
    cloud = sim.cloud
    zone = next(iter(cloud.zones.values()))
    cluster1 = cloud.clusters[sim.info().cluster_id]
    cluster2 = cloud.add_cluster(zone, "sim-cluster-2")
    host2 = cloud.add_host(cluster2, "sim-host-2")
    return cloud, zone, cluster1, cluster2, host2


def test_attach_creates_the_volume_on_the_pool_of_the_vms_root(cs, cloudstack_sim):
    vm = new_vm(cs, cloudstack_sim, startvm=True)
    volume = cs.attach_volume(new_volume(cs, cloudstack_sim).id, vm.id)
    [root] = [v for v in cs.list_volumes(virtual_machine_id=vm.id) if v.type == "ROOT"]
    assert volume.state == "Ready" and volume.storage_id == root.storage_id


def test_local_data_volumes_cannot_move_and_scopes_must_meet(cs, cloudstack_sim):
    cloud, zone, cluster1, cluster2, host2 = _topology(cloudstack_sim)
    vm = new_vm(cs, cloudstack_sim, startvm=True)  # its root is on sim-primary (cluster 1)
    local = ready_volume_on(cloudstack_sim, cloud.add_pool(zone, "local-2", "HOST", host=host2))
    with pytest.raises(CloudStackJobFailed) as caught:
        cs.attach_volume(local, vm.id)
    assert caught.value.errorcode == 431
    assert caught.value.errortext == "Can't move volume between scope: HOST and CLUSTER"
    other_cluster = ready_volume_on(cloudstack_sim, cloud.add_pool(zone, "nfs-2", "CLUSTER", cluster=cluster2))
    moved = cs.attach_volume(other_cluster, vm.id)  # same scope type elsewhere: migrated to the root's pool
    assert moved.storage_id == cloudstack_sim.info().primary_pool_id
    wide_pool = cloud.add_pool(zone, "zone-wide", "ZONE")
    assert cs.attach_volume(ready_volume_on(cloudstack_sim, wide_pool), vm.id).storage_id == wide_pool.id  # stays
    own_host = cloud.vms[vm.id].host
    own_local = cloud.add_pool(zone, "local-own", "HOST", host=own_host)
    assert cs.attach_volume(ready_volume_on(cloudstack_sim, own_local), vm.id).storage_id == own_local.id  # its host
    host1 = next(h for h in cloud.hosts.values() if h.cluster is cluster1)
    local1 = ready_volume_on(cloudstack_sim, cloud.add_pool(zone, "local-1", "HOST", host=host1))
    zone_vm = new_vm(cs, cloudstack_sim)
    with cloudstack_sim._lock:  # a VM whose ROOT is on another host's local pool
        root = next(v for v in cloud.volumes.values() if v.vm is cloud.vms[zone_vm.id])
        cloud._materialize(root, cloud.add_pool(zone, "local-1b", "HOST", host=cloud.add_host(cluster1, "h1b")))
    with pytest.raises(CloudStackJobFailed) as caught:
        cs.attach_volume(local1, zone_vm.id)
    assert caught.value.errorcode == 530
    assert caught.value.errortext == (
        "Failed to attach local data volume placed to VM "
        f"{zone_vm.display_name} as migration of local data volume is not allowed"
    )


def test_a_managed_pool_refuses_root_detach_and_attach_at_device_0(cs, cloudstack_sim):
    cloud = cloudstack_sim.cloud
    zone = next(iter(cloud.zones.values()))
    managed = cloud.add_pool(zone, "solidfire", "ZONE", managed=True)
    vm = new_vm(cs, cloudstack_sim)
    [root] = cs.list_volumes(virtual_machine_id=vm.id)
    with cloudstack_sim._lock:
        cloud._materialize(cloud.volumes[root.id], managed)
    with pytest.raises(CloudStackJobFailed, match="Root volume detach is not supported for Managed DataStores"):
        cs.detach_volume(root.id)
    other = new_vm(cs, cloudstack_sim)
    [other_root] = cs.list_volumes(virtual_machine_id=other.id)
    cs.detach_volume(other_root.id)
    on_managed = ready_volume_on(cloudstack_sim, managed)
    with pytest.raises(CloudStackJobFailed) as caught:
        cs.attach_volume(on_managed, other.id, 0)
    assert caught.value.errortext == "Root volume detach is not supported for Managed DataStores"


def test_a_vm_whose_volumes_no_host_reaches_does_not_start(cs, cloudstack_sim):
    cloud, zone, _, cluster2, _ = _topology(cloudstack_sim)
    vm = new_vm(cs, cloudstack_sim)
    [root] = cs.list_volumes(virtual_machine_id=vm.id)
    with cloudstack_sim._lock:
        cloud._materialize(cloud.volumes[root.id], cloud.add_pool(zone, "nfs-2", "CLUSTER", cluster=cluster2))
    started = cs.start_vm(vm.id)  # the planner picks cluster 2's host
    assert started.state == "Running"
    cs.stop_vm(vm.id)
    with cloudstack_sim._lock:
        cloud.vms[vm.id].cluster_request = next(c for c in cloud.clusters.values() if c is not cluster2)
    with pytest.raises(CloudStackJobFailed) as caught:
        cs.start_vm(vm.id)
    assert caught.value.errorcode == 533 and caught.value.errortext.startswith("Unable to create a deployment for VM[")


# ---- the hub's guest ----------------------------------------------------------------------------------------


def test_detach_from_the_hub_is_refused_while_the_guest_holds_the_device(cs, cloudstack_sim):
    volume = cs.attach_volume(new_volume(cs, cloudstack_sim).id, cloudstack_sim.hub_vm_id)
    device = find_volume_device(cloudstack_sim.dev_root, volume.id)
    assert device is not None
    with open(device, "rb"):
        with pytest.raises(CloudStackJobFailed) as caught:
            cs.detach_volume(volume.id)
        assert caught.value.errorcode == 530
        assert "the guest did not release the device" in caught.value.errortext
        assert cs.get_volume(volume.id).virtual_machine_id == cloudstack_sim.hub_vm_id
    assert cs.detach_volume(volume.id).virtual_machine_id is None


def test_the_hub_finds_virtio_scsi_disks_too(tmp_path):
    with CloudStackSimulator(tmp_path / "scsi", job_delay=0.01, hub_disk_bus="virtio-scsi") as sim:
        with client_for(sim) as client:
            volume = client.attach_volume(new_volume(client, sim, size_gb=2).id, sim.hub_vm_id)
        device = wait_for_device(sim.dev_root, volume.id, 2 * 1024**3, timeout=5)
        assert device.name == "scsi-0QEMU_QEMU_HARDDISK_" + volume.id.replace("-", "")[:20]
        assert device.resolve() == sim.volume_file(volume.id).resolve()


def test_a_network_of_another_zone_is_refused(cs, cloudstack_sim):
    from infra.lab.cloudstack.cloud import Zone

    cloud = cloudstack_sim.cloud
    elsewhere = Zone("0d1e2f30-0000-4000-8000-000000000002", "sim-zone-2")
    cloud.zones[elsewhere.id] = elsewhere
    foreign = cloud.add_network(elsewhere, "far", "Shared", "172.16.0.0/24")
    info = cloudstack_sim.info()
    with pytest.raises(CloudStackError) as caught:
        cs.deploy_vm(
            zone_id=info.zone_id,
            service_offering_id=info.service_offering_id,
            template_id=info.template_id,
            networks=[(foreign.id, None)],
        )
    assert (caught.value.errorcode, caught.value.errortext) == (
        431,
        f"Network id={foreign.db_id} doesn't belong to zone {cloud.zones[info.zone_id].db_id}",
    )
