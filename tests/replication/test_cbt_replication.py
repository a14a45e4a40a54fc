"""Incremental replication syncs through CBT: only the changed blocks leave the source; a CBT reset falls back."""

from __future__ import annotations

import os

import pytest

from common.vsphere import VSphereClient
from flows.replicate import replicate_vm
from infra.lab.mutate import reset_change_tracking, write_disk_bytes
from infra.lab.vcenter import session
from tests.copy.helpers import assert_nothing_left
from tests.replication.test_replicate import assert_volumes_equal_sources

pytestmark = pytest.mark.usefixtures("prefect_backend", "nbd_port_range")

MiB = 2**20
CBT_BLOCK = 64 * 1024


def test_cbt_syncs_read_what_changed_and_a_cbt_reset_falls_back(
    make_scratch_vm, lab, cloudstack_sim, cloudstack_block, agent_block, lab_vcenter_block, configured_catalog
):
    vm_name = make_scratch_vm(disks=2, size_mib=24)
    with VSphereClient(lab_vcenter_block.endpoint()) as client:
        assert client.enable_change_tracking(vm_name)
    first = replicate_vm(vm_name, cloudstack_block, agent_block, lab_vcenter_block)
    assert all(d.change_id for d in first.disks)
    data = first.disks[-1]
    key = int(data.disk_id.removeprefix("disk-"))
    write_disk_bytes(lab.vcenter, vm_name, key, 16 * MiB - CBT_BLOCK, os.urandom(2 * CBT_BLOCK))

    second = replicate_vm(vm_name, cloudstack_block, agent_block, lab_vcenter_block)
    assert second.kind == "incremental"
    assert_volumes_equal_sources(cloudstack_sim, lab, vm_name, second)
    with agent_block.client() as client:
        progress = {d.device_key: d for d in client.status(second.job_id).disks}
    for disk in second.disks:
        seen = progress[int(disk.disk_id.removeprefix("disk-"))]
        expected = 2 * CBT_BLOCK if disk.disk_id == data.disk_id else 0
        assert seen.mode == "changed-areas"
        assert seen.bytes_read - seen.cbt_check.bytes_read == expected
        assert seen.cbt_check.mismatched_offsets == []
        assert disk.bytes_written == expected

    with session(lab.vcenter) as si:
        reset_change_tracking(si, vm_name)
    write_disk_bytes(lab.vcenter, vm_name, key, 5 * MiB, os.urandom(CBT_BLOCK))
    third = replicate_vm(vm_name, cloudstack_block, agent_block, lab_vcenter_block)
    assert_volumes_equal_sources(cloudstack_sim, lab, vm_name, third)
    with agent_block.client() as client:
        modes = {d.mode for d in client.status(third.job_id).disks}
    assert modes == {"compare"}
    assert {d.disk_id: d.bytes_written for d in third.disks}[data.disk_id] == CBT_BLOCK
    assert_nothing_left(configured_catalog, lab, vm_name, [])
