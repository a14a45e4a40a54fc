"""A hub takes volumes only while it writes them, never more than CloudStack lets it attach; VMs wait for room,
spread over a pool of hubs, and a VM no hub or no destination can take is refused before anything is made."""

from __future__ import annotations

import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from prefect.concurrency.sync import concurrency

from catalog.installation import installation_id
from catalog.inventory import find_vm
from catalog.replication import volumes_of_vm
from common.names import hub_limit_name, vm_volumes_limit_name
from flows.failover import failover_vm
from flows.replicate import replicate_vm
from infra.lab.mutate import read_disk_bytes
from orchestration.limits import set_limit
from tasks.cloudstack import ReplicationRefused
from tests.replication.test_replicate import assert_volumes_equal_sources

pytestmark = pytest.mark.usefixtures("prefect_backend", "nbd_port_range")

CHANGING = ("createVolume", "createTags", "deleteTags", "attachVolume", "detachVolume", "deleteVolume")


def changes(sim) -> dict[str, int]:
    return {command: sim.calls[command] for command in CHANGING}


def waits_for_room(log_text: str, limit_name: str) -> list[tuple[int, int, int]]:
    """(slots wanted, taken, limit) of each wait that began while the hub had no room for the waiting VM: a wait
    for slots, not for a slow answer from the Prefect server (which makes the acquisition time out the same)."""
    waits = re.findall(r"waiting for (\d+) free slot\(s\) on any of (.*)", log_text)
    found = []
    for wanted, hubs in waits:
        for name, taken, size in re.findall(r"(\S+) \((\d+) of (\d+) taken\)", hubs):
            if name == limit_name and int(wanted) + int(taken) > int(size):
                found.append((int(wanted), int(taken), int(size)))
    return found


def test_a_vm_with_more_disks_than_the_destination_takes_is_refused_before_anything_is_made(
    lab, cloudstack_sim, cloudstack_block, agent_block, lab_vcenter_block, configured_catalog, make_scratch_vm
):
    name = make_scratch_vm(disks=4)
    with cloudstack_sim._lock:  # an operator's updateHypervisorCapabilities maxdatavolumeslimit=2 for KVM
        cloudstack_sim.cloud.set_max_data_volumes("KVM", 2)
    before = changes(cloudstack_sim)
    with pytest.raises(ReplicationRefused, match=r"has 4 disks: 1 OS disk and 3 data disks, .* at most 2 data volumes"):
        replicate_vm(name, cloudstack_block, agent_block, lab_vcenter_block)
    assert changes(cloudstack_sim) == before
    assert volumes_of_vm(configured_catalog, find_vm(configured_catalog, name).vm_context_id) == []


def test_a_vm_with_more_disks_than_any_hub_takes_is_refused_before_anything_is_made(
    lab, cloudstack_sim, cloudstack_block, agent_block, lab_vcenter_block, configured_catalog, make_scratch_vm
):
    name = make_scratch_vm(disks=3)
    info = cloudstack_sim.info()
    with cloudstack_sim._lock:  # an operator's updateHypervisorCapabilities maxdatavolumeslimit=6 for KVM
        cloudstack_sim.cloud.set_max_data_volumes("KVM", 6)
    with cloudstack_block.client() as client:  # the hub's own data disks, not vmferry's, leave it room for 2
        for index in range(4):
            volume = client.create_volume(f"hub-scratch-{index}", 1, info.zone_id, info.custom_disk_offering_id)
            client.attach_volume(volume.id, info.hub_vm_id)
    before = changes(cloudstack_sim)
    with pytest.raises(ReplicationRefused, match=r"has 3 disks, but the largest hub takes 2 volumes at once"):
        replicate_vm(name, cloudstack_block, agent_block, lab_vcenter_block)
    assert changes(cloudstack_sim) == before


@pytest.mark.parametrize("hubs", [1, 2])
def test_five_vms_of_3_to_8_disks_share_the_hubs_within_their_limit(
    lab, cloudstack_sim, cloudstack_block, agent_block, lab_vcenter_block, configured_catalog, make_scratch_vm, caplog,
    hubs,
):  # fmt: skip
    sizes = (3, 6, 8, 8, 8)
    # An operator's updateHypervisorCapabilities maxdatavolumeslimit=16 for KVM (the lab reports 32): every VM
    # fits one hub and one destination VM, but no three of the 8-disk VMs fit one hub at once, so with five
    # syncs started together one must wait on a single hub whatever the timing (with 32, only all five at once
    # overflow it, which a slow start of one of them avoids).
    limit = 16
    with cloudstack_sim._lock:
        cloudstack_sim.cloud.set_max_data_volumes("KVM", limit)
    assert max(sizes) <= limit < sum(sorted(sizes)[-3:])
    block = cloudstack_block
    if hubs == 2:
        block = cloudstack_block.model_copy(update={"hub_pool": [cloudstack_sim.add_hub("vmferry-hub-2")]})
    hub_ids = [block.hub_vm_id, *block.hub_pool]
    names = [make_scratch_vm(disks=n) for n in sizes]
    caplog.set_level(logging.INFO)
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        # a read cap keeps each sync on its hub for seconds, so all five are under way at once
        futures = [
            pool.submit(
                replicate_vm, n, block, agent_block, lab_vcenter_block, bandwidth_limit_bytes_per_second=512 * 1024
            )
            for n in names
        ]
        results = [future.result() for future in futures]
    for name, size, result in zip(names, sizes, results, strict=True):
        assert len({d.volume_id for d in result.disks}) == size  # every disk, each into a volume of its own
        assert_volumes_equal_sources(cloudstack_sim, lab, name, result)
    high_water = cloudstack_sim.cloud.data_volume_high_water
    # never more than CloudStack's limit on a hub (an attach beyond it would have failed)
    assert all(0 < high_water.get(hub, 0) <= limit for hub in hub_ids), high_water
    if hubs == 1:  # the VM that did not fit waited for slots, and said so
        assert waits_for_room(caplog.text, hub_limit_name(hub_ids[0])), caplog.text
    with cloudstack_block.client() as client:  # and every volume rests detached
        for hub in hub_ids:
            assert [v.id for v in client.list_volumes(virtual_machine_id=hub) if v.type != "ROOT"] == []


def test_a_pool_of_hubs_shares_the_work(
    lab, cloudstack_sim, cloudstack_block, agent_block, lab_vcenter_block, configured_catalog, make_scratch_vm
):
    second_hub = cloudstack_sim.add_hub("vmferry-hub-2")
    pool_block = cloudstack_block.model_copy(update={"hub_pool": [second_hub]})
    first, second = make_scratch_vm(disks=3), make_scratch_vm(disks=2)
    first_result = replicate_vm(first, pool_block, agent_block, lab_vcenter_block)
    # the first hub is full (another sync holds all its slots): the next VM goes through the second hub
    limit = cloudstack_sim.cloud.max_data_disks
    set_limit(hub_limit_name(cloudstack_block.hub_vm_id), limit)
    with concurrency(hub_limit_name(cloudstack_block.hub_vm_id), occupy=limit, strict=True):
        second_result = replicate_vm(second, pool_block, agent_block, lab_vcenter_block)
    assert_volumes_equal_sources(cloudstack_sim, lab, first, first_result)
    assert_volumes_equal_sources(cloudstack_sim, lab, second, second_result)
    high_water = cloudstack_sim.cloud.data_volume_high_water
    assert high_water[cloudstack_block.hub_vm_id] == 3 and high_water[second_hub] == 2


def test_a_failover_waits_for_a_running_sync_to_detach_the_volumes(
    lab, cloudstack_sim, cloudstack_block, agent_block, lab_vcenter_block, configured_catalog, make_scratch_vm
):
    name = make_scratch_vm(disks=2)
    replicate_vm(name, cloudstack_block, agent_block, lab_vcenter_block)
    vm = find_vm(configured_catalog, name)
    outcome: dict[str, object] = {}

    def fail_over() -> None:
        try:
            outcome["result"] = failover_vm(name, cloudstack_block)
        except BaseException as exc:
            outcome["error"] = exc

    # the slot a sync of this VM holds while its volumes are on a hub
    with concurrency(vm_volumes_limit_name(installation_id(configured_catalog), vm.vm_context_id), strict=True):
        thread = threading.Thread(target=fail_over)
        thread.start()
        time.sleep(3)
        assert thread.is_alive() and cloudstack_sim.calls["deployVirtualMachine"] == 0  # waiting, nothing made
    thread.join(120)
    result = outcome["result"]
    assert [d.device_id for d in result.devices] == [0, 1]
    for device in result.devices:
        source = read_disk_bytes(lab.vcenter, name, int(device.disk_id.removeprefix("disk-")))
        with open(cloudstack_sim.volume_file(device.volume_id), "rb") as handle:
            assert handle.read(len(source)) == source
