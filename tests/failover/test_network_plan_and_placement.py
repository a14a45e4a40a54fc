"""The failover's checks before anything is created: NICs planned from the port group map, placement from the
volumes' storage pools (against the simulator's pools with scope)."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from catalog.inventory import RecordedNic, RecordedVM
from clients.cloudstack import CloudStackAdminRequired
from infra.lab.cloudstack import CloudStackSimulator
from tasks.destination import check_destination, check_networks, choose_placement
from tests.cloudstack.helpers import client_for, ready_volume_on
from vmferry.failover_plan import FailoverRefused, PlannedAttachment
from vmferry.network_plan import PlannedNic, plan_nics


def _vm(*nics: tuple[int, str, str | None]) -> RecordedVM:
    return RecordedVM(
        vm_context_id=7,
        name="web01",
        instance_uuid="u",
        moref="vm-7",
        boot_disk_id=None,
        boot_disk_source=None,
        disks=[],
        nics=[RecordedNic(device_key=k, network=n, mac_address=m, adapter="vmxnet3", label=None) for k, n, m in nics],
    )


def test_one_nic_per_source_nic_in_source_order_with_static_ips_by_mac():
    vm = _vm((4000, "prod", "00:50:56:00:00:01"), (4001, "backup", "00:50:56:00:00:02"))
    planned = plan_nics(vm, {"prod": "net-a", "backup": "net-b", "unused": "net-c"}, {"00:50:56:00:00:02": "10.0.0.9"})
    assert [(n.device_key, n.network_id, n.ip_address) for n in planned] == [
        (4000, "net-a", None),
        (4001, "net-b", "10.0.0.9"),
    ]


def test_every_unmapped_network_is_named_at_once():
    vm = _vm((4000, "prod", None), (4001, "dmz", None), (4002, "", None))
    with pytest.raises(FailoverRefused, match=r"'\(not connected\)', 'dmz' have no CloudStack network") as caught:
        plan_nics(vm, {"prod": "net-a"})
    assert "web01" in str(caught.value) and "Nothing was created" in str(caught.value)


def test_static_ip_for_an_unknown_mac_and_two_nics_on_one_network_are_refused():
    vm = _vm((4000, "prod", "00:50:56:00:00:01"), (4001, "prod2", "00:50:56:00:00:02"))
    with pytest.raises(FailoverRefused, match="00:50:56:00:00:99, which no NIC of the VM has"):
        plan_nics(vm, {"prod": "a", "prod2": "b"}, {"00:50:56:00:00:99": "10.0.0.1"})
    with pytest.raises(FailoverRefused, match="map to the same CloudStack network a"):
        plan_nics(vm, {"prod": "a", "prod2": "a"})


def _volume_on(sim: CloudStackSimulator, pool, index: int, *, root: bool = False) -> PlannedAttachment:
    return PlannedAttachment(
        vm_disk_id=index, disk_id=f"disk-{2000 + index}", volume_id=ready_volume_on(sim, pool, f"v{index}"),
        replicated_volume_id=index, device_id=0 if root else index, is_root=root,
    )  # fmt: skip


def test_placement_picks_the_volumes_cluster_or_refuses_before_any_change(cloudstack_sim, cloudstack_block):
    cloud = cloudstack_sim.cloud
    zone = next(iter(cloud.zones.values()))
    primary = cloud.pools[cloudstack_sim.info().primary_pool_id]
    other = cloud.add_pool(zone, "nfs-2", "CLUSTER", cluster=cloud.add_cluster(zone, "sim-cluster-2"))
    wide = cloud.add_pool(zone, "zone-wide", "ZONE")
    vm = _vm()
    with client_for(cloudstack_sim) as client:
        together = [_volume_on(cloudstack_sim, primary, 1, root=True), _volume_on(cloudstack_sim, wide, 2)]
        assert choose_placement(client, vm, together).cluster_id == cloudstack_sim.info().cluster_id
        assert choose_placement(client, vm, [_volume_on(cloudstack_sim, wide, 3, root=True)]).cluster_id is None
        apart = [*together, _volume_on(cloudstack_sim, other, 4)]
        before = dict(cloudstack_sim.calls)
        with pytest.raises(FailoverRefused, match="cluster-wide pools of different clusters"):
            choose_placement(client, vm, apart)
        assert {c for c in cloudstack_sim.calls if cloudstack_sim.calls[c] != before.get(c, 0)} <= {
            "listStoragePools",
            "listVolumes",
        }
        host = next(iter(cloud.hosts.values()))
        local = _volume_on(cloudstack_sim, cloud.add_pool(zone, "local", "HOST", host=host), 5)
        with pytest.raises(FailoverRefused, match="host-local pool 'local'"):
            choose_placement(client, vm, [local])
        managed = _volume_on(cloudstack_sim, cloud.add_pool(zone, "sf", "ZONE", managed=True), 6, root=True)
        with pytest.raises(FailoverRefused, match="managed pool 'sf'"):
            choose_placement(client, vm, [managed])
    with client_for(cloudstack_sim, user=True) as user, pytest.raises(CloudStackAdminRequired):
        choose_placement(user, vm, together)
    user_block = cloudstack_block.model_copy(
        update={"api_key": cloudstack_sim.user_api_key, "secret_key": SecretStr(cloudstack_sim.user_secret_key)}
    )
    with pytest.raises(FailoverRefused, match="set check_placement to false"):
        check_destination.fn(user_block, vm, [], together)
    unchecked = user_block.model_copy(update={"check_placement": False})
    assert check_destination.fn(unchecked, vm, [], together).cluster_id is None


def test_a_mapped_network_missing_from_the_zone_is_refused(cloudstack_sim):
    nic = PlannedNic(device_key=4000, mac_address=None, source_network="prod", network_id="no-such-network")
    with client_for(cloudstack_sim) as client, pytest.raises(FailoverRefused, match="'prod' -> no-such-network"):
        check_networks(client, cloudstack_sim.info().zone_id, _vm(), [nic])
