"""Refusals made against CloudStack's answers (our simulator): networks and storage that cannot work, volumes
that are not ours to write, limits a VM does not fit in. Each before anything is created or written."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import SecretStr
from sqlalchemy import update

from catalog.failovers import FailoverVolumeView, finish_failover, record_devices, set_destination, start_failover
from catalog.installation import installation_id
from catalog.inventory import RecordedVM, record_vm
from catalog.jobs import create_job
from catalog.models import ReplicatedVolume
from catalog.replication import COMPLETE, record_volume, volumes_of_vm
from common.names import destination_vm_name
from flows.failover import LiveFailoverRefused, failover_vm
from flows.live_failover import LiveFailoverStateRefused, commit_failover
from tasks.cloudstack import (
    ReplicationRefused,
    VolumeOwnershipError,
    VolumeRefused,
    attach_to_hub,
    data_volume_limit,
    ensure_volume,
    owner_tags,
    plan_hub_capacity,
    upgrade_recorded_volumes,
    volume_name,
)
from tasks.destination import check_destination, check_networks, choose_placement
from tasks.failover import attach_to_destination, deploy_destination_vm
from tests import factories
from tests.cloudstack.helpers import client_for, new_vm, new_volume, ready_volume_on
from tests.refusals.conftest import assert_refusal
from vmferry.failover_plan import FailoverRefused, PlannedAttachment
from vmferry.network_plan import PlannedNic

GiB = 2**30


@pytest.fixture
def web01(configured_catalog) -> RecordedVM:
    disks = [factories.disk(2000 + n, unit=n, capacity_mib=1024) for n in range(3)]
    return record_vm(configured_catalog, factories.vm(*disks, name="web01", uuid="u-web01"))


def _planned(volume_id: str, index: int, *, root: bool = False) -> PlannedAttachment:
    return PlannedAttachment(
        vm_disk_id=index, disk_id=f"disk-{2000 + index}", volume_id=volume_id, replicated_volume_id=index,
        device_id=0 if root else index, is_root=root,
    )  # fmt: skip


def test_a_mapped_network_missing_from_the_zone(cloudstack_sim, web01):
    nic = PlannedNic(device_key=4000, mac_address=None, source_network="prod", network_id="no-such-network")
    with client_for(cloudstack_sim) as client, pytest.raises(FailoverRefused) as caught:
        check_networks(client, cloudstack_sim.info().zone_id, web01, [nic])
    assert_refusal(caught.value, "'web01'", "'prod' -> no-such-network", "fix network_map")


@pytest.mark.parametrize("case", ["host-local", "managed-root", "two-clusters"])
def test_storage_no_destination_vm_can_use(case, cloudstack_sim, web01):
    cloud = cloudstack_sim.cloud
    zone = next(iter(cloud.zones.values()))
    primary = cloud.pools[cloudstack_sim.info().primary_pool_id]
    root = _planned(ready_volume_on(cloudstack_sim, primary, "os"), 0, root=True)
    if case == "host-local":
        host = next(iter(cloud.hosts.values()))
        plan = [root, _planned(ready_volume_on(cloudstack_sim, cloud.add_pool(zone, "local", "HOST", host=host)), 1)]
        fix = "Move the volume to cluster- or zone-wide storage"
    elif case == "managed-root":
        plan = [
            _planned(ready_volume_on(cloudstack_sim, cloud.add_pool(zone, "sf", "ZONE", managed=True)), 0, root=True)
        ]
        fix = "managed pool 'sf'"
    else:
        other = cloud.add_pool(zone, "nfs-2", "CLUSTER", cluster=cloud.add_cluster(zone, "sim-cluster-2"))
        plan = [root, _planned(ready_volume_on(cloudstack_sim, other), 1)]
        fix = "Move them to one cluster or to zone-wide storage"
    with client_for(cloudstack_sim) as client, pytest.raises(FailoverRefused) as caught:
        choose_placement(client, web01, plan)
    assert_refusal(caught.value, "'web01'", "disk-200", fix, "Nothing was created")


def test_a_volume_on_a_pool_that_is_not_listed(cloudstack_sim, web01):
    cloud = cloudstack_sim.cloud
    zone = next(iter(cloud.zones.values()))
    gone = cloud.add_pool(zone, "nfs-old", "ZONE")
    volume_id = ready_volume_on(cloudstack_sim, gone, "os")
    with cloudstack_sim._lock:
        del cloud.pools[gone.id]  # removed from the pool list; the volume still names it as its storage
    with client_for(cloudstack_sim) as client, pytest.raises(FailoverRefused) as caught:
        choose_placement(client, web01, [_planned(volume_id, 0, root=True)])
    assert_refusal(caught.value, "'web01'", "disk-2000", volume_id, gone.id, "set check_placement to false")


def test_a_placement_check_this_key_cannot_make(cloudstack_sim, cloudstack_block, web01):
    primary = cloudstack_sim.cloud.pools[cloudstack_sim.info().primary_pool_id]
    plan = [_planned(ready_volume_on(cloudstack_sim, primary, "os"), 0, root=True)]
    user_block = cloudstack_block.model_copy(
        update={"api_key": cloudstack_sim.user_api_key, "secret_key": SecretStr(cloudstack_sim.user_secret_key)}
    )
    with pytest.raises(FailoverRefused) as caught:
        check_destination.fn(user_block, web01, [], plan)
    assert_refusal(caught.value, "'web01'", "root admin", "set check_placement to false")


def test_a_destination_vm_this_failover_did_not_create(cloudstack_sim, cloudstack_block, configured_catalog, web01):
    failover_id = start_failover(
        configured_catalog, web01.vm_context_id, create_job(configured_catalog, "failover"), "test"
    )
    set_destination(configured_catalog, failover_id, "some-other-vm")
    name = destination_vm_name(web01.vm_context_id, "test")
    with client_for(cloudstack_sim) as client:
        stranger = new_vm(client, cloudstack_sim, name=name)
    with pytest.raises(FailoverRefused) as caught:
        deploy_destination_vm.fn(cloudstack_block, web01, "test", failover_id)
    assert_refusal(caught.value, "'web01'", stranger.id, "run cleanup_failover or the reconciler")


def test_a_volume_another_vm_holds_is_not_moved_to_the_destination(cloudstack_sim, cloudstack_block):
    with client_for(cloudstack_sim) as client:
        holder, destination = new_vm(client, cloudstack_sim), new_vm(client, cloudstack_sim)
        volume = new_volume(client, cloudstack_sim)
        client.attach_volume(volume.id, holder.id)
    with pytest.raises(VolumeRefused) as caught:
        attach_to_destination.fn(cloudstack_block, _planned(volume.id, 1), destination.id)
    assert_refusal(caught.value, volume.id, "disk-2001", holder.id, "clean that up or revert it first")


def test_a_volume_another_vm_holds_is_not_taken_to_the_hub(cloudstack_sim, cloudstack_block, configured_catalog, web01):
    disk = web01.present_disks()[0]
    with client_for(cloudstack_sim) as client:
        holder = new_vm(client, cloudstack_sim)
        volume = new_volume(client, cloudstack_sim)
        client.attach_volume(volume.id, holder.id)
    recorded = record_volume(
        configured_catalog, vm_disk_id=disk.vm_disk_id, volume_id=volume.id, zone_id="z", size_bytes=GiB,
        disk_generation=1,
        content_state=COMPLETE,
    )  # fmt: skip
    with pytest.raises(VolumeRefused) as caught:
        attach_to_hub.fn(cloudstack_block, cloudstack_sim.hub_vm_id, recorded, disk.capacity_bytes)
    assert_refusal(caught.value, volume.id, holder.id, "clean that up (test) or revert it (live) first")


@pytest.mark.parametrize("case", ["retired", "resized", "stranger", "twice"])
def test_a_volume_replication_must_not_write(case, cloudstack_sim, cloudstack_block, configured_catalog, web01):
    disk = web01.present_disks()[0]
    install = installation_id(configured_catalog)
    job = create_job(configured_catalog, "replication")
    name = volume_name(install, web01.vm_context_id, disk.disk_id, disk.vm_disk_id)
    info = cloudstack_sim.info()
    if case in ("retired", "resized"):
        recorded = record_volume(
            configured_catalog, vm_disk_id=disk.vm_disk_id, volume_id="vol-recorded", zone_id="z", disk_generation=1,
            size_bytes=disk.capacity_bytes // 2 if case == "resized" else disk.capacity_bytes,
        )  # fmt: skip
        if case == "retired":
            with configured_catalog.session() as session:
                session.execute(
                    update(ReplicatedVolume)
                    .where(ReplicatedVolume.id == recorded.id)
                    .values(retired_at=dt.datetime.now(dt.UTC))
                )
        kind, fix = (
            (VolumeOwnershipError, "delete that volume in CloudStack and its replicated_volumes row")
            if case == "retired"
            else (VolumeRefused, "resize the volume in CloudStack")
        )
    else:
        with cloudstack_block.client() as client:
            copies = 2 if case == "twice" else 1
            for _ in range(copies):
                volume = client.create_volume(name, 1, info.zone_id, info.custom_disk_offering_id)
                if case == "twice":
                    client.create_tags(
                        "Volume",
                        [volume.id],
                        owner_tags(install, web01.instance_uuid, disk.vm_disk_id, disk.generation),
                    )
        kind, fix = (
            (VolumeOwnershipError, "Delete or rename it in CloudStack")
            if case == "stranger"
            else (VolumeRefused, "delete all but one in CloudStack")
        )
    with pytest.raises(kind) as caught:
        ensure_volume.fn(cloudstack_block, install, web01, disk, job)
    assert_refusal(caught.value, "'web01'", disk.disk_id, fix)


def test_a_recorded_volume_another_installation_tagged(cloudstack_sim, cloudstack_block, configured_catalog, web01):
    disk = web01.present_disks()[0]
    primary = cloudstack_sim.cloud.pools[cloudstack_sim.info().primary_pool_id]
    volume_id = ready_volume_on(cloudstack_sim, primary, disk.disk_id)
    theirs = owner_tags("another-installation", web01.instance_uuid, disk.vm_disk_id, disk.generation)
    with cloudstack_block.client() as client:
        client.create_tags("Volume", [volume_id], theirs)
    recorded = record_volume(
        configured_catalog, vm_disk_id=disk.vm_disk_id, volume_id=volume_id, zone_id="z", size_bytes=GiB,
        disk_generation=1,
    )  # fmt: skip
    with configured_catalog.session() as session:  # as recorded before volumes carried owner tags
        session.execute(update(ReplicatedVolume).where(ReplicatedVolume.id == recorded.id).values(owner_tagged=False))
    with pytest.raises(VolumeOwnershipError) as caught:
        upgrade_recorded_volumes.fn(cloudstack_block, installation_id(configured_catalog))
    assert_refusal(
        caught.value, volume_id, f"catalog disk {disk.vm_disk_id}", "two installations claim it", "catalog row"
    )
    with cloudstack_block.client() as client:
        assert client.get_volume(volume_id).tag_map.items() >= theirs.items()  # their tags were left alone


def test_a_data_volume_limit_nobody_can_tell(cloudstack_sim):
    with client_for(cloudstack_sim) as client, pytest.raises(ReplicationRefused) as caught:
        data_volume_limit(client, None, None, f"hub {cloudstack_sim.hub_vm_id}")
    assert_refusal(caught.value, cloudstack_sim.hub_vm_id, "max_data_volumes_fallback")


@pytest.mark.parametrize("case", ["destination", "hub"])
def test_a_vm_no_destination_or_no_hub_takes(case, cloudstack_sim, cloudstack_block, configured_catalog, web01):
    info = cloudstack_sim.info()
    if case == "destination":
        with cloudstack_sim._lock:  # an operator's updateHypervisorCapabilities maxdatavolumeslimit=1 for KVM
            cloudstack_sim.cloud.set_max_data_volumes("KVM", 1)
        fix = "raise maxdatavolumeslimit"
    else:
        with cloudstack_sim._lock:  # KVM's row says 32; an operator's limit of 6 keeps this test's hub small
            cloudstack_sim.cloud.set_max_data_volumes("KVM", 6)
        with cloudstack_block.client() as client:  # the hub's own data disks leave room for 2 of our 3
            for index in range(4):
                volume = client.create_volume(f"hub-scratch-{index}", 1, info.zone_id, info.custom_disk_offering_id)
                client.attach_volume(volume.id, info.hub_vm_id)
        fix = "Add a hub with room"
    with pytest.raises(ReplicationRefused) as caught:
        plan_hub_capacity.fn(cloudstack_block, installation_id(configured_catalog), web01)
    assert_refusal(caught.value, "'web01'", "3 disks", fix, "nothing was created")


def _replicated(cloudstack_sim, catalog, vm: RecordedVM) -> list[str]:
    """Complete volumes on the simulator's primary pool for every disk of ``vm``, as replication leaves them."""
    primary = cloudstack_sim.cloud.pools[cloudstack_sim.info().primary_pool_id]
    volume_ids = []
    for disk in vm.present_disks():
        volume_id = ready_volume_on(cloudstack_sim, primary, disk.disk_id)
        record_volume(
            catalog, vm_disk_id=disk.vm_disk_id, volume_id=volume_id, zone_id="z", size_bytes=GiB, disk_generation=1,
            content_state=COMPLETE,
        )  # fmt: skip
        volume_ids.append(volume_id)
    return volume_ids


@pytest.mark.usefixtures("prefect_backend")
def test_a_live_failover_without_vcenter_or_agent(cloudstack_sim, cloudstack_block, configured_catalog):
    vm = record_vm(configured_catalog, factories.vm(factories.disk(2000), name="web01", uuid="u-web01", boot_key=2000))
    _replicated(cloudstack_sim, configured_catalog, vm)
    with pytest.raises(LiveFailoverRefused) as caught:
        failover_vm("web01", cloudstack_block, mode="live", confirm_live=True)
    assert_refusal(caught.value, "'web01'", "pass vcenter and agent", "Nothing was changed")
    with cloudstack_block.client() as client:
        assert [v for v in client.list_vms() if v.name.startswith(f"vmferry-vm{vm.vm_context_id}-")] == []


@pytest.mark.usefixtures("prefect_backend")
def test_a_commit_whose_volumes_left_the_destination(cloudstack_sim, cloudstack_block, configured_catalog, web01):
    (volume_id, *_) = _replicated(cloudstack_sim, configured_catalog, web01)
    recorded = volumes_of_vm(configured_catalog, web01.vm_context_id)
    with client_for(cloudstack_sim) as client:
        destination = new_vm(client, cloudstack_sim)
    failover_id = start_failover(
        configured_catalog, web01.vm_context_id, create_job(configured_catalog, "failover"), "live"
    )
    set_destination(configured_catalog, failover_id, destination.id)
    record_devices(
        configured_catalog,
        failover_id,
        [
            FailoverVolumeView(
                vm_disk_id=v.vm_disk_id,
                replicated_volume_id=v.id,
                planned_device_id=n,
                actual_device_id=n,
                is_root=n == 0,
            )
            for n, v in enumerate(recorded)
        ],
    )
    finish_failover(configured_catalog, failover_id, "active", "failed-over")
    with pytest.raises(LiveFailoverStateRefused) as caught:
        commit_failover("web01", cloudstack_block)
    assert_refusal(caught.value, "'web01'", volume_id, destination.id, "put them back or revert the failover")
