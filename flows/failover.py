"""Failover (test and live): a CloudStack VM with the OS volume as root and every data volume after it.

Order: (live only: power the source off, final sync) -> deploy the destination VM stopped -> drop its template
root -> move each replicated volume from the hub to its planned device (root 0, data 1, 2, 4, ...) -> read the
devices back from CloudStack and compare with the plan -> start. Every step done is pushed on a
compensation stack; any failure undoes exactly those steps: volumes go back to the hub (device checked), the
destination VM is destroyed, the VM context is ready for failover again.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel

from blocks import load_block
from blocks.agent import Agent
from blocks.cloudstack import CloudStack
from blocks.vcenter import VCenter
from catalog import default_catalog
from catalog.failovers import (
    READY_FOR_FAILOVER,
    FailoverVolumeView,
    finish_failover,
    record_devices,
    set_destination,
    start_failover,
)
from catalog.inventory import find_vm
from catalog.replication import volumes_of_vm
from flows.guest_prep import prepare_os_volume
from flows.replicate import replicate_vm
from tasks.failover import (
    attach_to_destination,
    deploy_destination_vm,
    power_off_source,
    read_back_devices,
    remove_destination_vm,
    remove_template_root,
    return_volume_to_hub,
    start_destination_vm,
)
from tasks.jobs import close_job, open_job
from vmferry.compensation import quietly
from vmferry.failover_plan import check_attached, plan_attachments
from vmferry.hooks import ON_CANCELLATION, ON_CRASHED, ON_RUNNING


class FailoverDevice(BaseModel):
    disk_id: str
    vm_disk_id: int
    volume_id: str
    device_id: int
    role: str


class FailoverResult(BaseModel):
    failover_id: int
    mode: str
    destination_vm_id: str
    devices: list[FailoverDevice]


@flow(name="failover-vm", on_running=ON_RUNNING, on_crashed=ON_CRASHED, on_cancellation=ON_CANCELLATION)
def failover_vm(
    vm: str,
    cloudstack: CloudStack | str,
    mode: Literal["test", "live"] = "test",
    vcenter: VCenter | str | None = None,
    agent: Agent | str | None = None,
    prepare_guest: bool = True,
    virtio_win: str | None = None,
) -> FailoverResult:
    """Bring ``vm`` up in CloudStack from its replicated volumes. ``live`` needs ``vcenter`` and ``agent``.

    ``prepare_guest``: run virt-v2v-in-place on the OS volume first (virtio drivers; ``virtio_win`` names the
    virtio-win driver directory for Windows guests); false turns it off for this VM.
    """
    logger = get_run_logger()
    cloud = load_block(CloudStack, cloudstack)
    catalog = default_catalog()
    recorded = find_vm(catalog, vm)
    if mode == "live":
        if vcenter is None or agent is None:
            raise ValueError("a live failover powers the source off and syncs a last time: pass vcenter and agent")
        vcenter_block = load_block(VCenter, vcenter)
        logger.info("live failover of %s: source %s", recorded.name, power_off_source(vcenter_block, recorded))
        replicate_vm(recorded.instance_uuid, cloud, load_block(Agent, agent), vcenter_block, kind="incremental")
        recorded = find_vm(catalog, vm)
    volumes = {v.vm_disk_id: v for v in volumes_of_vm(catalog, recorded.vm_context_id)}
    plan = plan_attachments(recorded, volumes)
    capacity = {d.id: d.capacity_bytes for d in recorded.present_disks()}
    job_id = open_job("failover", recorded.vm_context_id)
    failover_id = start_failover(catalog, recorded.vm_context_id, job_id, mode)
    try:
        with ExitStack() as undo:
            prepare_os_volume(recorded, plan, volumes, enabled=prepare_guest, virtio_win=virtio_win)
            destination = deploy_destination_vm(cloud, recorded, mode)
            set_destination(catalog, failover_id, destination.id)
            ours = [item.volume_id for item in plan]
            undo.callback(quietly(remove_destination_vm, cloud, destination.id, ours))
            remove_template_root(cloud, destination.id, ours)
            for item in plan:  # root first, then data in source order
                undo.callback(quietly(return_volume_to_hub, cloud, item.volume_id, capacity[item.vm_disk_id]))
                attach_to_destination(cloud, item, destination.id)
            actual = read_back_devices(cloud, destination.id)
            check_attached(plan, actual)
            start_destination_vm(cloud, destination.id)
            undo.pop_all()  # success: nothing to undo
    except BaseException as exc:
        finish_failover(catalog, failover_id, "rolled-back", READY_FOR_FAILOVER)
        close_job(job_id, "failed", f"{type(exc).__name__}: {exc}")
        raise
    record_devices(
        catalog,
        failover_id,
        [
            FailoverVolumeView(
                vm_disk_id=item.vm_disk_id,
                replicated_volume_id=item.replicated_volume_id,
                planned_device_id=item.device_id,
                actual_device_id=actual[item.volume_id][0],
                is_root=item.is_root,
            )
            for item in plan
        ],
    )
    finish_failover(catalog, failover_id, "active", f"failed-over-{mode}")
    close_job(job_id, "succeeded")
    devices = [
        FailoverDevice(
            disk_id=item.disk_id,
            vm_disk_id=item.vm_disk_id,
            volume_id=item.volume_id,
            device_id=actual[item.volume_id][0] or 0,
            role="root (OS)" if item.is_root else "data",
        )
        for item in plan
    ]
    create_table_artifact(
        key=f"failover-vm-{recorded.vm_context_id}",
        table=[d.model_dump() for d in devices],
        description=f"{mode} failover of {recorded.name} into CloudStack VM {destination.id}",
    )
    return FailoverResult(failover_id=failover_id, mode=mode, destination_vm_id=destination.id, devices=devices)
