"""Discovery: read VMs and disks from vCenter and upsert them into the catalog."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_table_artifact

from blocks import load_block
from blocks.vcenter import VCenter
from catalog.inventory import RecordedVM
from tasks.discovery import mark_missing_vms, read_vcenter_inventory, record_vm_inventory
from tasks.jobs import close_job, open_job
from vmferry.errors import describe
from vmferry.hooks import ON_CANCELLATION, ON_CRASHED, ON_RUNNING
from vmferry.outcome import PUBLISH_OUTCOME
from vmferry.runs import artifact_key


def disk_table(vm: RecordedVM) -> list[dict[str, object]]:
    """One row per disk, in the columns operators ask for first."""
    return [
        {
            "catalog id": disk.id,
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
def discover(vcenter: VCenter | str, vms: list[str] | None = None) -> list[RecordedVM]:
    """Read VMs (all, or those named) and their disks from vCenter; upsert them into the catalog.

    A disk keeps its catalog id across runs; a removed disk is marked absent; VMs missing from a full
    discovery are marked absent. Returns what the catalog now records.

    Args:
        vcenter: Saved VCenter block name (or a VCenter block) to read the VMs from.
        vms: Names, instance UUIDs or morefs of the VMs to read; empty: every VM (and those gone are marked
            absent).
    """
    block = load_block(VCenter, vcenter)
    job_id = open_job("discovery")
    try:
        observed = read_vcenter_inventory(block, vms)
        recorded = [record_vm_inventory(vm) for vm in observed]
        if not vms and observed:
            gone = mark_missing_vms(observed[0].vcenter, [vm.instance_uuid for vm in observed])
            for name in gone:
                print(f"VM {name!r} is no longer in vCenter {block.host}; marked absent")
        for vm in recorded:
            create_table_artifact(
                key=artifact_key("discovery", vm.name),
                table=disk_table(vm),
                description=f"Disks of {vm.name} ({vm.instance_uuid}) as recorded by discovery",
            )
    except BaseException as exc:
        close_job(job_id, "failed", describe(exc))
        raise
    close_job(job_id, "succeeded")
    return recorded
