"""Replication: every disk of a VM into its own CloudStack volume, then incremental syncs.

Each disk's volume is created once, tagged with its owner and recorded against the disk's stable catalog row;
every later sync reuses it. A volume is attached to a hub of the pool only while it is written (attach ->
copy -> detach); a sync takes one slot per disk of one hub's limit, sized from CloudStack's data-volume limit,
and waits for room. A volume's device on the hub is found from CloudStack's answer for that volume id, never by
guessing the next /dev/vdX. The copy itself is the shared data path (flows/copy.py): one qemu-nbd export per
volume, one agent call, every export stopped and port released at the end, whatever happened.
"""

from __future__ import annotations

from contextlib import ExitStack
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
from catalog.failovers import READY_FOR_FAILOVER, latest_failover
from catalog.inventory import RecordedDisk, RecordedVM
from catalog.replication import UNKNOWN, VolumeView
from common import names
from common.names import artifact_key, hub_limit_name, vm_volumes_limit_name
from flows._job import job
from flows.copy import run_copy
from orchestration.hooks import ON_CANCELLATION, ON_CRASHED, ON_RUNNING
from orchestration.limits import first_free, holding
from orchestration.outcome import PUBLISH_OUTCOME
from orchestration.runs import all_results, one_job_per_vm, table_rows
from tasks.cloudstack import (
    ReplicationRefused,
    attach_to_hub,
    detach_from_hub,
    ensure_volume,
    plan_hub_capacity,
    upgrade_recorded_volumes,
)
from tasks.discovery import read_vcenter_inventory, record_vm_inventory
from tasks.limits import size_hub_limits
from tasks.records import (
    get_installation_id,
    mark_volumes_content,
    record_volume_sync,
    retire_absent_disk_volumes,
    set_vm_context_state,
)
from vmferry.compensation import quietly
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


def refuse_incomplete_incremental(recorded: RecordedVM, volumes: list[VolumeView], kind: str) -> None:
    """Only changed blocks onto a volume not known to hold the disk would leave it silently wrong: refused before
    any volume is attached (a new volume is empty, an adopted or interrupted one unknown)."""
    incomplete = [v.volume_id for v in volumes if not v.complete]
    if kind == "incremental" and incomplete:
        raise ReplicationRefused(
            f"VM {recorded.name!r} has volumes whose content is not complete (never synced, or a sync was "
            f"interrupted): {', '.join(incomplete)}; run an initial (or auto) replication first"
        )


@flow(
    name="replicate-vm",
    flow_run_name=names.REPLICATE_RUN,
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
    installation = get_installation_id()
    (observed,) = read_vcenter_inventory(vcenter_block, [vm])
    recorded = record_vm_inventory(observed)
    refuse_while_failed_over(recorded)
    with job("replication", recorded.vm_context_id) as job_id:
        upgrade_recorded_volumes(cloud, installation)
        for retired in retire_absent_disk_volumes(recorded.vm_context_id):
            logger.warning(
                "volume %s of a disk no longer on %s (catalog disk %s) is retired: never written again; delete it "
                "in CloudStack when you no longer need it (vmferry status lists it)",
                retired.volume_id, recorded.name, retired.vm_disk_id,
            )  # fmt: skip
        disks = recorded.present_disks()
        # refuses a VM no hub or no destination can take before anything is created
        capacities = plan_hub_capacity(cloud, installation, recorded)
        size_hub_limits(capacities)
        hubs = {hub_limit_name(hub): hub for hub, capacity in capacities.items() if capacity >= len(disks)}
        with holding(vm_volumes_limit_name(installation, recorded.vm_context_id), 1, logger):
            volumes = [ensure_volume(cloud, installation, recorded, disk, job_id) for disk in disks]
            refuse_incomplete_incremental(recorded, volumes, kind)
            with first_free(list(hubs), len(disks), logger) as limit_name:
                copy_kind, result_disks = _sync_through_hub(
                    cloud, hubs[limit_name], recorded, disks, volumes, job_id, kind,
                    agent_block, vcenter_block, bandwidth_limit_bytes_per_second,
                )  # fmt: skip
    set_vm_context_state(recorded.vm_context_id, READY_FOR_FAILOVER, only_from=("discovered", READY_FOR_FAILOVER))
    create_table_artifact(
        key=artifact_key("replication", recorded.name),
        table=table_rows(result_disks, {"device_path": "hub device"}),
        description=f"{copy_kind} replication of {recorded.name} into CloudStack volumes",
    )
    return ReplicationResult(
        vm=recorded.name, vm_context_id=recorded.vm_context_id, kind=copy_kind, job_id=job_id, disks=result_disks
    )


def _sync_through_hub(
    cloud: CloudStack,
    hub_vm_id: str,
    recorded: RecordedVM,
    disks: list[RecordedDisk],
    volumes: list[VolumeView],
    job_id: str,
    kind: str,
    agent: Agent,
    vcenter: VCenter,
    bandwidth_limit_bytes_per_second: int | None,
) -> tuple[str, list[ReplicatedDisk]]:
    """Attach -> copy -> detach. Volumes are on the hub only while written; a failure detaches them too."""
    logger = get_run_logger()
    with ExitStack() as undo:
        for volume in volumes:
            undo.callback(quietly(detach_from_hub, cloud, volume.volume_id))
        # All asked at once: CloudStack runs the attaches of one VM one after the other in its own queue, and a
        # sync then waits for the slowest answer, not for the sum of the round trips.
        attached: list[VolumeView] = all_results(
            [
                attach_to_hub.submit(cloud, hub_vm_id, volume, disk.capacity_bytes)
                for volume, disk in zip(volumes, disks, strict=True)
            ]
        )
        complete = all(v.complete for v in attached)
        copy_kind = "incremental" if kind == "incremental" or (kind == "auto" and complete) else "full"
        logger.info(
            "replicating %s: %s copy into %d volumes on hub %s", recorded.name, copy_kind, len(attached), hub_vm_id
        )
        targets = [
            DiskTarget(
                vm_disk_id=disk.vm_disk_id,
                disk_id=disk.disk_id,
                device_key=disk.device_key,
                capacity_bytes=disk.capacity_bytes,
                file_path=Path(volume.device_path or ""),
                image_format="raw",
                # zeros are skipped only into a volume this very job created and has not written
                target_is_zero=volume.reads_as_zero_for(job_id),
                previous_change_id=volume.last_change_id if copy_kind == "incremental" else None,
            )
            for disk, volume in zip(disks, attached, strict=True)
        ]
        mark_volumes_content([v.volume_id for v in attached], UNKNOWN)
        status = run_copy(
            job_id=job_id,
            vm=recorded,
            targets=targets,
            agent=agent,
            vcenter=vcenter,
            kind=copy_kind,
            bandwidth_limit_bytes_per_second=bandwidth_limit_bytes_per_second,
        )
        copied = {d.device_key: d for d in status.disks}
        result_disks = []
        for disk, volume in zip(disks, attached, strict=True):
            progress = copied[disk.device_key]
            record_volume_sync(volume.volume_id, progress.change_id)
            result_disks.append(
                ReplicatedDisk(
                    disk_id=disk.disk_id,
                    vm_disk_id=disk.vm_disk_id,
                    volume_id=volume.volume_id,
                    device_path=volume.device_path or "",
                    bytes_written=progress.bytes_written,
                    change_id=progress.change_id,
                )
            )
        undo.pop_all()
    all_results([detach_from_hub.submit(cloud, volume.volume_id) for volume in attached])
    return copy_kind, result_disks
