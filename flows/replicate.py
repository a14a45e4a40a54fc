"""Replication: every disk of a VM into its own CloudStack volume attached to the hub, then incremental syncs.

Each disk's volume is created once and recorded against the disk's stable catalog row; every later sync
reuses it. A volume's device on the hub is found from CloudStack's answer for that volume id, never by
guessing the next /dev/vdX. The copy itself is the shared data path (flows/copy.py): one qemu-nbd export per
volume, one agent call, every export stopped and port released at the end, whatever happened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel

from blocks import load_block
from blocks.agent import Agent
from blocks.cloudstack import CloudStack
from blocks.vcenter import VCenter
from catalog import default_catalog
from catalog.failovers import READY_FOR_FAILOVER, context_state, latest_failover, set_context_state
from catalog.inventory import RecordedVM
from catalog.replication import VolumeView, record_sync
from flows.copy import run_copy
from tasks.cloudstack import attach_to_hub, ensure_volume
from tasks.discovery import read_vcenter_inventory, record_vm_inventory
from tasks.jobs import close_job, open_job
from vmferry.errors import Refused, describe
from vmferry.hooks import ON_CANCELLATION, ON_CRASHED, ON_RUNNING
from vmferry.outcome import PUBLISH_OUTCOME
from vmferry.runs import artifact_key, one_job_per_vm, table_rows
from vmferry.targets import DiskTarget


class ReplicatedDisk(BaseModel):
    disk_id: str
    vm_disk_id: int
    volume_id: str
    device_path: str
    bytes_written: int
    change_id: str | None


class ReplicationResult(BaseModel):
    vm: str
    vm_context_id: int
    kind: str
    job_id: str
    disks: list[ReplicatedDisk]


class ReplicationRefused(Refused):
    """The VM is failed over (or migrated): its volumes are not replication's to write."""


def refuse_while_failed_over(recorded: RecordedVM) -> None:
    latest = latest_failover(default_catalog(), recorded.vm_context_id)
    if latest is None or latest.state not in ("active", "committed"):
        return
    where = f"CloudStack VM {latest.destination_vm_id} (failover {latest.id})"
    if latest.state == "committed":
        raise ReplicationRefused(f"VM {recorded.name!r} was migrated to {where}: its replication has stopped")
    if latest.mode == "live":
        raise ReplicationRefused(
            f"VM {recorded.name!r} runs in {where} since its live failover: commit it (`vmferry commit "
            f"{recorded.name}`) or revert it (`vmferry revert {recorded.name} --yes`) before replicating"
        )
    raise ReplicationRefused(
        f"VM {recorded.name!r} has a test failover on {where}: clean it up first (`vmferry cleanup {recorded.name}`)"
    )


@flow(
    name="replicate-vm",
    flow_run_name="replicate-{vm}-{kind}",
    on_running=ON_RUNNING,
    on_crashed=ON_CRASHED,
    on_cancellation=ON_CANCELLATION,
    **PUBLISH_OUTCOME,
)
@one_job_per_vm("replication")
def replicate_vm(
    vm: str,
    cloudstack: CloudStack | str,
    agent: Agent | str,
    vcenter: VCenter | str,
    kind: Literal["initial", "incremental", "auto"] = "auto",
    bandwidth_limit_bytes_per_second: int | None = None,
) -> ReplicationResult:
    """Copy every disk of ``vm`` into its CloudStack volume (created on the first run, reused after).

    Args:
        vm: The VM: its name in vCenter, its instance UUID or its moref (vm-123).
        cloudstack: Saved CloudStack block name (or a CloudStack block) of the destination zone and its hub VM.
        agent: Saved Agent block name (or an Agent block): the agent that reads the VM's disks.
        vcenter: Saved VCenter block name (or a VCenter block) of the VM's vCenter.
        kind: initial copies every disk in full; incremental only what changed since the last sync (needs one);
            auto: initial the first time, incremental after.
        bandwidth_limit_bytes_per_second: Cap on the copy's read rate in bytes per second, all disks together;
            empty: no cap.
    """
    logger = get_run_logger()
    cloud = load_block(CloudStack, cloudstack)
    agent_block = load_block(Agent, agent)
    vcenter_block = load_block(VCenter, vcenter)
    (observed,) = read_vcenter_inventory(vcenter_block, [vm])
    recorded = record_vm_inventory(observed)
    refuse_while_failed_over(recorded)
    job_id = open_job("replication", recorded.vm_context_id)
    try:
        disks = recorded.present_disks()
        volumes: list[VolumeView] = [ensure_volume(cloud, recorded, disk) for disk in disks]
        # All volumes on the hub before a byte moves: a failed attach leaves every volume untouched.
        attached = [
            attach_to_hub(cloud, volume, disk.capacity_bytes) for volume, disk in zip(volumes, disks, strict=True)
        ]
        synced = all(v.last_synced_at is not None for v in attached)
        if kind == "incremental" and not synced:
            raise ReplicationRefused(f"VM {recorded.name!r} has volumes never synced; run an initial replication first")
        copy_kind = "incremental" if kind == "incremental" or (kind == "auto" and synced) else "full"
        logger.info("replicating %s: %s copy into %d volumes", recorded.name, copy_kind, len(attached))
        targets = [
            DiskTarget(
                vm_disk_id=disk.id,
                disk_id=disk.disk_id,
                device_key=disk.device_key,
                capacity_bytes=disk.capacity_bytes,
                file_path=Path(volume.device_path or ""),
                image_format="raw",
                # a volume never written reads as zeros; one holding an earlier copy must have zeros written
                target_is_zero=volume.last_synced_at is None,
                previous_change_id=volume.last_change_id if copy_kind == "incremental" else None,
            )
            for disk, volume in zip(disks, attached, strict=True)
        ]
        status = run_copy(
            job_id=job_id,
            vm=recorded,
            targets=targets,
            agent=agent_block,
            vcenter=vcenter_block,
            kind=copy_kind,
            bandwidth_limit_bytes_per_second=bandwidth_limit_bytes_per_second,
        )
        copied = {d.disk_key: d for d in status.disks}
        result_disks = []
        for disk, volume in zip(disks, attached, strict=True):
            progress = copied[disk.device_key]
            record_sync(default_catalog(), volume.volume_id, progress.change_id)
            result_disks.append(
                ReplicatedDisk(
                    disk_id=disk.disk_id,
                    vm_disk_id=disk.id,
                    volume_id=volume.volume_id,
                    device_path=volume.device_path or "",
                    bytes_written=progress.bytes_written,
                    change_id=progress.change_id,
                )
            )
    except BaseException as exc:
        close_job(job_id, "failed", describe(exc))
        raise
    close_job(job_id, "succeeded")
    if context_state(default_catalog(), recorded.vm_context_id) in ("discovered", READY_FOR_FAILOVER):
        set_context_state(default_catalog(), recorded.vm_context_id, READY_FOR_FAILOVER)
    create_table_artifact(
        key=artifact_key("replication", recorded.name),
        table=table_rows(result_disks, {"device_path": "hub device"}),
        description=f"{copy_kind} replication of {recorded.name} into CloudStack volumes",
    )
    return ReplicationResult(
        vm=recorded.name, vm_context_id=recorded.vm_context_id, kind=copy_kind, job_id=job_id, disks=result_disks
    )
