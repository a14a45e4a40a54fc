"""Discovery: read VMs and disks from vCenter and upsert them into the catalog."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_table_artifact

from blocks import load_block
from blocks.vcenter import VCenter
from catalog.inventory import RecordedVM
from common.names import artifact_key
from flows._job import job
from orchestration.hooks import ON_CANCELLATION, ON_CRASHED, ON_RUNNING
from orchestration.outcome import PUBLISH_OUTCOME
from tasks.discovery import enable_change_tracking, mark_missing_vms, read_vcenter_inventory, record_vm_inventory


def disk_table(vm: RecordedVM) -> list[dict[str, object]]:
    """One row per disk, in the columns operators ask for first."""
    return [
        {
            "catalog id": disk.vm_disk_id,
            "disk id": disk.disk_id,
            "label": disk.label or "",
            "bus": f"{disk.bus}{disk.bus_number}:{disk.unit_number}",
            "capacity MiB": disk.capacity_bytes // 2**20,
            "boot": "yes" if disk.is_boot else "",
            "present": "yes" if disk.present else "no",
            "change": disk.change,
            "file": disk.file_name,
        }
        for disk in vm.disks
    ]


@flow(
    name="discover",
    log_prints=True,
    on_running=ON_RUNNING,
    on_crashed=ON_CRASHED,
    on_cancellation=ON_CANCELLATION,
    **PUBLISH_OUTCOME,
)
def discover(vcenter: VCenter | str, vms: list[str] | None = None, enable_cbt: bool = False) -> list[RecordedVM]:
    """Read VMs (all, or those named) and their disks from vCenter; upsert them into the catalog.

    A disk keeps its catalog id across runs; a removed disk is marked absent; VMs missing from a full
    discovery are marked absent. ``enable_cbt`` turns changed block tracking on for the VMs read that have
    it off (reconfigure, then a snapshot create/remove so it takes effect), so that their incrementals read
    only what changed. Returns what the catalog now records.

    Args:
        vcenter: Saved VCenter block name (or a VCenter block) to read the VMs from.
        vms: Names, instance UUIDs or morefs of the VMs to read; empty: every VM (and those gone are marked
            absent).
        enable_cbt: Turn changed block tracking on for the VMs read that have it off (incrementals then read only
            what changed); off: only report them.
    """
    block = load_block(VCenter, vcenter)
    with job("discovery"):
        observed = read_vcenter_inventory(block, vms)
        if enable_cbt:
            without = [vm for vm in observed if not vm.cbt_enabled]
            for vm in without:
                enable_change_tracking(block, vm.instance_uuid)
                print(f"VM {vm.name!r}: changed block tracking enabled")
            if without:
                observed = read_vcenter_inventory(block, [vm.instance_uuid for vm in observed] if vms else None)
        for vm in observed:
            if not vm.cbt_enabled:
                print(f"VM {vm.name!r} has no changed block tracking: its incrementals read every disk whole")
        recorded = [record_vm_inventory(vm) for vm in observed]
        if not vms and observed:
            gone = mark_missing_vms(observed[0].vcenter, [vm.instance_uuid for vm in observed])
            for name in gone:
                print(f"VM {name!r} is no longer in vCenter {block.host}; marked absent")
        for vm in recorded:
            create_table_artifact(
                key=artifact_key("discovery", vm.name),
                table=disk_table(vm),
                description=f"Disks of {vm.name} ({vm.instance_uuid}) as recorded by discovery; "
                f"changed block tracking {'on' if vm.cbt_enabled else 'OFF'}",
            )
    return recorded
