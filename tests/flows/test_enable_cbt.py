"""Discovery shows VMs without changed block tracking and, asked to, turns it on."""

from __future__ import annotations

import pytest

from common.vsphere import VSphereClient, VSphereSnapshots
from flows.discover import discover
from vmferry.cli.output import disks_table

pytestmark = pytest.mark.usefixtures("prefect_backend")


def test_discover_enables_cbt_on_request(lab_vcenter_block, configured_catalog, make_scratch_vm):
    name = make_scratch_vm()
    (before,) = discover(lab_vcenter_block, [name])
    assert not before.cbt_enabled
    assert "CBT OFF" in str(disks_table(before).title)  # what `vmferry discover` prints

    (after,) = discover(lab_vcenter_block, [name], enable_cbt=True)
    assert after.cbt_enabled and after.vm_context_id == before.vm_context_id
    with VSphereClient(lab_vcenter_block.endpoint()) as client:
        vm = VSphereSnapshots(client, after.instance_uuid)
        assert vm.snapshots() == []  # the stun cycle's snapshot is gone again
        moref = vm.create_snapshot("check", "", quiesce=False)
        assert all(disk.change_id for disk in vm.snapshot_disks(moref))  # CBT really took effect
        vm.remove_snapshot(moref)
