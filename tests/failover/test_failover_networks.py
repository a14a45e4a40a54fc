"""Failover networking against vcsim + our CloudStack simulator: one NIC per source NIC, in source order, on the
mapped CloudStack network; a source network without a mapping refuses the failover before anything changes."""

from __future__ import annotations

import pytest
from pyVmomi import vim

from catalog.failovers import context_state, failovers_of
from catalog.inventory import find_vm
from catalog.replication import volumes_of_vm
from flows.cleanup import cleanup_failover
from flows.failover import failover_vm
from flows.replicate import replicate_vm
from infra.lab.seed import require_vm, run_task
from infra.lab.vcenter import session
from vmferry.failover_plan import FailoverRefused

pytestmark = pytest.mark.usefixtures("prefect_backend", "nbd_port_range")

STANDARD, DISTRIBUTED = "VM Network", "DC0_DVPG0"  # vcsim's standard and distributed port groups


def add_nics(lab, vm_name: str, port_groups: list[str]) -> list[str]:
    """Give a lab VM one vmxnet3 per port group (in order); their MAC addresses, in device-key order."""
    with session(lab.vcenter) as si:
        vm = require_vm(si, vm_name)
        view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.Network], True)
        networks = {n.name: n for n in view.view}
        view.Destroy()
        changes = []
        for index, name in enumerate(port_groups):
            network = networks[name]
            if isinstance(network, vim.dvs.DistributedVirtualPortgroup):
                backing = vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo(
                    port=vim.dvs.PortConnection(
                        switchUuid=network.config.distributedVirtualSwitch.uuid, portgroupKey=network.key
                    )
                )
            else:
                backing = vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(deviceName=name, network=network)
            nic = vim.vm.device.VirtualVmxnet3(key=-300 - index, backing=backing, addressType="generated")
            changes.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=nic))
        run_task(vm.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=changes)))
        nics = [d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualEthernetCard)]
        return [d.macAddress.lower() for d in sorted(nics, key=lambda d: d.key)]


def test_two_nics_on_two_mapped_networks_and_an_unmapped_one_refused_untouched(
    lab, make_scratch_vm, cloudstack_sim, cloudstack_block, agent_block, lab_vcenter_block, configured_catalog
):
    name = make_scratch_vm(disks=2)
    macs = add_nics(lab, name, [DISTRIBUTED, STANDARD])
    replicate_vm(name, cloudstack_block, agent_block, lab_vcenter_block)
    vm = find_vm(configured_catalog, name)
    assert [(n.network, n.mac_address) for n in vm.nics] == list(zip([DISTRIBUTED, STANDARD], macs, strict=True))
    info = cloudstack_sim.info()

    # DC0_DVPG0 has no mapping: refused, and nothing anywhere changed
    state_before = context_state(configured_catalog, vm.vm_context_id)
    calls_before = dict(cloudstack_sim.calls)
    partial = cloudstack_block.model_copy(update={"network_map": {STANDARD: info.shared_network_id}})
    with pytest.raises(FailoverRefused, match=f"'{DISTRIBUTED}' have no CloudStack network"):
        failover_vm(name, partial)
    changing = {c for c in cloudstack_sim.calls if not c.startswith(("list", "query"))}
    assert {c: cloudstack_sim.calls[c] for c in changing} == {c: calls_before.get(c, 0) for c in changing}
    assert failovers_of(configured_catalog, vm.vm_context_id) == []
    assert context_state(configured_catalog, vm.vm_context_id) == state_before
    with cloudstack_block.client() as client:
        assert not [v for v in client.list_vms() if v.name.startswith(f"vmferry-vm{vm.vm_context_id}-")]
        for volume in volumes_of_vm(configured_catalog, vm.vm_context_id):
            assert client.get_volume(volume.volume_id).virtual_machine_id is None  # volumes rest detached

    # mapped (one entry from the block, one given for this VM), the second NIC with a static IP
    result = failover_vm(
        name,
        partial,
        network_map={DISTRIBUTED: info.isolated_network_id},
        ip_addresses={macs[1].upper(): "192.168.50.20"},
    )
    with cloudstack_block.client() as client:
        destination = client.get_vm(result.destination_vm_id)
    assert destination.state == "Running"
    assert [(n.network_id, n.device_id, n.is_default) for n in destination.nics] == [
        (info.isolated_network_id, 0, True),
        (info.shared_network_id, 1, False),
    ]
    assert destination.nics[1].ip_address == "192.168.50.20"
    cleanup_failover(name, cloudstack_block)
