"""VM-level backups into a repository of qcow2 chains: all disks from ONE snapshot, never disk by disk."""

from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.futures import PrefectFuture

from blocks import load_block
from blocks.agent import Agent
from blocks.repository import BackupRepository
from blocks.vcenter import VCenter
from catalog.restore_points import DiskOutcome, PointView
from common import names
from common.names import artifact_key, repository_limit_name
from flows._job import job
from flows.copy import run_copy
from orchestration.hooks import ON_CANCELLATION, ON_CRASHED, ON_RUNNING
from orchestration.limits import holding
from orchestration.outcome import PUBLISH_OUTCOME
from orchestration.runs import one_job_per_vm
from tasks.backup import (
    checksum_target,
    commit_restore_point,
    create_backup_targets,
    discard_restore_point,
    open_restore_point,
    plan_vm_backup,
)
from tasks.discovery import read_vcenter_inventory, record_vm_inventory
from vmferry.settings import get_settings
from vmferry.targets import DiskTarget


@flow(
    name="backup-vm",
    flow_run_name=names.BACKUP_RUN,
    on_running=ON_RUNNING,
    on_crashed=ON_CRASHED,
    on_cancellation=ON_CANCELLATION,
    **PUBLISH_OUTCOME,
)
@one_job_per_vm("backup")
def backup_vm(
    vm: str,
    repository: BackupRepository | str,
    agent: Agent | str,
    vcenter: VCenter | str,
    kind: Literal["full", "incremental", "auto"] = "auto",
    quiesce: bool = False,
    bandwidth_limit_bytes_per_second: int | None = None,
) -> PointView:
    """Back up every disk of ``vm`` (name, instance UUID or moref) from one snapshot into ``repository``.

    ``auto`` takes an incremental on top of the newest restore point when that chain is valid, else a full.
    The point becomes restorable only when every disk was copied and checksummed; any failure leaves no
    partial file, no qemu-nbd, no port lease and no snapshot behind.

    Args:
        vm: The VM: its name in vCenter, its instance UUID or its moref (vm-123).
        repository: Saved BackupRepository block name (or a BackupRepository block) to write the restore point
            into.
        agent: Saved Agent block name (or an Agent block): the agent that reads the VM's disks.
        vcenter: Saved VCenter block name (or a VCenter block) of the VM's vCenter.
        kind: full copies every disk; incremental only what changed since the newest point (needs a valid
            chain); auto: incremental when the chain allows it, else full.
        quiesce: Ask VMware Tools to quiesce the guest's filesystems for the snapshot (application-consistent);
            off: crash-consistent.
        bandwidth_limit_bytes_per_second: Cap on the copy's read rate in bytes per second, all disks together;
            empty: no cap.
    """
    logger = get_run_logger()
    repository_block = load_block(BackupRepository, repository)
    agent_block = load_block(Agent, agent)
    vcenter_block = load_block(VCenter, vcenter)
    repo = repository_block.repository()

    # The VM as vCenter has it now: a disk added since the last discovery is backed up too.
    (observed,) = read_vcenter_inventory(vcenter_block, [vm])
    recorded = record_vm_inventory(observed)
    # Held from the job's start to its end, so a backup waiting for a slot has taken nothing yet.
    with holding(repository_limit_name(repo.name), get_settings().repository_backup_limit, logger):
        with job("backup", recorded.vm_context_id) as job_id:
            point_id: int | None = None
            checksumming: dict[int, PrefectFuture[str]] = {}
            try:
                plan = plan_vm_backup(recorded, kind, repo)
                logger.info("backing up %s: %s backup (%s)", recorded.name, plan.kind, plan.reason)
                point_id = open_restore_point(recorded, job_id, plan, repo)
                targets = create_backup_targets(recorded, point_id, plan, repo)
                # Each disk's checksum starts the moment the agent reports that disk copied (its export stopped,
                # so the checksum reads what landed in the file) and runs while the other disks still copy; all
                # at once (each reads its own target, hashing releases the GIL).

                def start_checksum(target: DiskTarget) -> None:
                    checksumming[target.device_key] = checksum_target.submit(target)

                status = run_copy(
                    job_id=job_id,
                    vm=recorded,
                    targets=targets,
                    agent=agent_block,
                    vcenter=vcenter_block,
                    kind=plan.kind,
                    quiesce=quiesce,
                    bandwidth_limit_bytes_per_second=bandwidth_limit_bytes_per_second,
                    on_disk_copied=start_checksum,
                )
                copied = {d.device_key: d for d in status.disks}
                checksums = [checksumming[t.device_key].result() for t in targets]
                outcomes = [
                    DiskOutcome(
                        vm_disk_id=target.vm_disk_id,
                        bytes_written=copied[target.device_key].bytes_written,
                        change_id=copied[target.device_key].change_id,
                        checksum=checksum,
                    )
                    for target, checksum in zip(targets, checksums, strict=True)
                ]
                point = commit_restore_point(recorded, point_id, repo, outcomes)
            except BaseException:
                for future in checksumming.values():
                    future.wait()  # no reader left on the files about to be removed
                if point_id is not None:
                    discard_restore_point(repo, recorded.vm_context_id, point_id)
                raise
    create_table_artifact(
        key=artifact_key("backup", recorded.name),
        table=[
            {
                "disk": d.disk_id,
                "catalog id": d.vm_disk_id,
                "file": d.file_path,
                "backing point disk": d.backing_id or "",
                "MiB written": round((d.bytes_written or 0) / 2**20, 1),
                "sha256": d.checksum,
            }
            for d in point.disks
        ],
        description=f"Restore point {point.id} of {recorded.name} ({point.kind}) in repository {repo.name}",
    )
    return point
