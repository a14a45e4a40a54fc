"""Copying every disk of a VM, from one snapshot, each to its own target: the data path backup and replication share.

``run_copy`` is the orchestration (called inside a flow); ``copy_vm_disks`` is the same as a flow of its own.
Every resource taken is pushed on a compensation stack the moment it exists, so any failure - refused
targets, a port range exhausted, qemu-nbd that will not start, an agent that refuses, dies or hangs - stops
every qemu-nbd started and releases every port of the job (``release_job_ports``); while it runs, its port
leases are renewed. The agent removes its snapshot; when the agent cannot be trusted to (unreachable,
killed), the hub removes it through vSphere.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.events import emit_event

from blocks import load_block
from blocks.agent import Agent
from blocks.vcenter import VCenter
from catalog import default_catalog
from catalog.inventory import RecordedVM, find_vm
from catalog.ports import release_job_ports
from clients.agent import AgentError, AgentJobFailed
from common import names
from common.contract import CbtCheckPolicy, JobRequest, JobStatus, Target
from common.names import disk_event_resource, job_snapshot_name, vcenter_limit_name
from flows._job import job
from orchestration.hooks import ON_CANCELLATION, ON_CRASHED, ON_RUNNING
from orchestration.limits import holding
from orchestration.runs import all_results, one_job_per_vm
from tasks.agent import follow_agent_job, submit_agent_job
from tasks.nbd import check_target_file, lease_nbd_port, make_job_log_directory, start_nbd_export, target_digests
from tasks.vsphere import remove_job_snapshots
from vmferry.compensation import quietly
from vmferry.exports import export_url, stop_export
from vmferry.leases import renewing_leases
from vmferry.ledger import JobLedger
from vmferry.settings import get_settings
from vmferry.targets import DiskTarget, check_plan

log = logging.getLogger(__name__)


def _stop_agent_job(agent: Agent, vcenter: VCenter | None, vm: RecordedVM, job_id: str) -> None:
    """After a failure: cancel the agent job; if the agent cannot confirm its snapshot is gone, remove it."""
    # Plain calls, not tasks: this runs after any failure, also while the flow run is being cancelled (Prefect
    # aborts every task run it would start then) or with Prefect's API unreachable.
    removed_by_agent = False
    try:
        with agent.client() as client:
            client.cancel(job_id)
            status = client.status(job_id)
            for _ in range(60):
                if status.finished:
                    break
                time.sleep(0.5)
                status = client.status(job_id)
            removed_by_agent = status.finished and (status.snapshot_removed or status.snapshot_name is None)
    except AgentError as exc:
        log.warning("agent could not cancel job %s: %s", job_id, exc)
    if removed_by_agent or vcenter is None:
        return
    try:
        remove_job_snapshots(vcenter, vm.instance_uuid, job_id)
    except Exception:
        log.exception("could not remove snapshot %s of VM %s", job_snapshot_name(job_id), vm.name)


def run_copy(
    *,
    job_id: str,
    vm: RecordedVM,
    targets: list[DiskTarget],
    agent: Agent,
    vcenter: VCenter | None,
    kind: str = "full",
    quiesce: bool = False,
    bandwidth_limit_bytes_per_second: int | None = None,
    timeout: float = 6 * 3600,
    log_dir: Path | None = None,
    on_disk_copied: Callable[[DiskTarget], None] | None = None,
) -> JobStatus:
    """Serve every target over NBD, have the agent copy the VM into them, then stop the exports.

    With ``on_disk_copied``, each disk's export is stopped the moment the agent reports that disk done (its
    target flushed), and the callback gets its target, free to be read, while other disks may still copy.
    """
    logger = get_run_logger()
    check_plan(vm, targets)
    # each a qemu-img run: asked at once
    all_results([check_target_file.submit(vm.name, target) for target in targets])
    catalog = default_catalog()
    by_key = {t.device_key: t for t in targets}
    # A target holding data is hashed here, locally, so the agent compares against digests instead of reading
    # the whole target back over the link; before the exports start, which lock their images. Not where a
    # change id lets CBT name the changed areas: a hash of the whole target would cost more than the change
    # (should vCenter refuse that change id, the agent falls back to reading the target).
    holding_data = [t for t in targets if not t.target_is_zero and not t.previous_change_id]
    block_digests = target_digests(holding_data) if holding_data and get_settings().compare_by_digests else {}
    with ExitStack() as undo:
        if log_dir is None:
            # the qemu-nbd logs belong to the job: recorded, and removed with it (by the reconciler after a kill)
            log_resource, log_dir = make_job_log_directory(job_id, "nbd-logs")
            undo.callback(quietly(JobLedger(catalog, job_id).remove_directory, log_resource, log_dir))
        # Taken before any port or qemu-nbd, so a copy waiting for vCenter holds nothing else meanwhile.
        if vcenter is not None:
            limit = vcenter_limit_name(vcenter.host, vcenter.port)
            undo.enter_context(holding(limit, get_settings().vcenter_snapshot_limit, logger))
        else:
            logger.warning("no vCenter block given: this copy does not count against a vCenter snapshot limit")
        # Unwound after every export is stopped: every lease of the job goes, on failure and on success, a lease
        # taken by a lease attempt whose answer was lost (the task retried) too.
        undo.callback(quietly(release_job_ports, catalog, job_id))
        # however long the copy runs, its leases never expire under it (the renewer stops before the release)
        undo.enter_context(renewing_leases(catalog, job_id, dt.timedelta(seconds=get_settings().port_lease_seconds)))
        ports = [lease_nbd_port(job_id, target) for target in targets]
        # Every qemu-nbd at once: each takes a moment to answer, and started one after the other they add up.
        starting = [
            start_nbd_export.submit(job_id, vm.vm_context_id, target, port, log_dir)
            for target, port in zip(targets, ports, strict=True)
        ]
        # the others may have started when one fails: each must be on the stack to be stopped
        started = all_results(starting, on_result=lambda export: undo.callback(quietly(stop_export, catalog, export)))
        exports = {target.device_key: export for target, export in zip(targets, started, strict=True)}
        agent_targets = []
        for target in targets:
            export = exports[target.device_key]
            url = export_url(export)
            logger.info("disk %s (catalog id %s) -> %s", target.disk_id, target.vm_disk_id, url)
            agent_targets.append(
                Target(
                    device_key=target.device_key,
                    nbd_url=url,
                    capacity_bytes=target.capacity_bytes,
                    previous_change_id=target.previous_change_id,
                    target_is_zero=target.target_is_zero,
                    block_digests=block_digests.get(target.device_key),
                )
            )
        request = JobRequest(
            job_id=job_id,
            vm=vm.instance_uuid,
            kind=kind,  # type: ignore[arg-type]
            quiesce=quiesce,
            targets=agent_targets,
            bandwidth_limit_bytes_per_second=bandwidth_limit_bytes_per_second,
            cbt_check=CbtCheckPolicy(
                sample_blocks=get_settings().cbt_check_sample_blocks,
                on_mismatch=get_settings().cbt_check_on_mismatch,
            ),
        )
        labels = {key: f"{vm.name} {t.disk_id}" for key, t in by_key.items()}

        def disk_done(key: int) -> None:
            assert on_disk_copied is not None
            # qemu-nbd locks its image: stopped (idempotent; the stack stops it again), the file is free to read.
            stop_export(catalog, exports[key])
            on_disk_copied(by_key[key])

        try:
            submit_agent_job(agent, request)
            status = follow_agent_job(
                agent, job_id, labels, timeout, on_disk_done=disk_done if on_disk_copied is not None else None
            )
        except AgentJobFailed as exc:
            alert_cbt_mismatches(vm, exc.status, labels)
            _stop_agent_job(agent, vcenter, vm, job_id)
            raise
        except BaseException:
            _stop_agent_job(agent, vcenter, vm, job_id)
            raise
        alert_cbt_mismatches(vm, status, labels)
        return status


def alert_cbt_mismatches(vm: RecordedVM, status: JobStatus, labels: dict[int, str]) -> None:
    """A wrong CBT answer is an operator's problem beyond this run: log it and emit a Prefect event that an
    automation can turn into a notification, naming the VM and the disk."""
    for disk in status.disks:
        report = disk.cbt_check
        if report is None or not report.mismatched_offsets:
            continue
        label = labels.get(disk.device_key, f"{vm.name} disk {disk.device_key}")
        claim = (
            "hold data, though CBT did not report them in use"
            if status.kind == "full"
            else "differ from the previous copy, though CBT called them unchanged"
        )
        log.error(
            "CBT of %s was wrong: blocks at %s %s (%s)",
            label,
            report.mismatched_offsets,
            claim,
            "point failed" if report.action == "failed" else "disk read whole instead",
        )
        emit_event(
            event="vmferry.cbt.mismatch",
            resource={
                "prefect.resource.id": disk_event_resource(vm.instance_uuid, disk.device_key),
                "prefect.resource.name": label,
            },
            payload={"vm": vm.name, "disk_key": disk.device_key, **report.model_dump()},
        )


@flow(
    name="copy-vm-disks",
    flow_run_name=names.COPY_RUN,
    on_running=ON_RUNNING,
    on_crashed=ON_CRASHED,
    on_cancellation=ON_CANCELLATION,
)
@one_job_per_vm("copy")
def copy_vm_disks(
    vm: str,
    targets: list[DiskTarget],
    agent: Agent | str,
    vcenter: VCenter | str | None = None,
    kind: str = "full",
    bandwidth_limit_bytes_per_second: int | None = None,
) -> JobStatus:
    """Copy every disk of a discovered VM into the given target files (qcow2 or raw), from one snapshot.

    Args:
        vm: The VM: its name in vCenter, its instance UUID or its moref (vm-123).
        targets: One target per disk of the VM: the file (qcow2 or raw) each disk is copied into.
        agent: Saved Agent block name (or an Agent block): the agent that reads the VM's disks.
        vcenter: Saved VCenter block name; with it the copy counts against the vCenter's snapshot limit and a
            snapshot left by a dead agent is removed.
        kind: full copies every byte; incremental only what changed since each target's previous_change_id.
        bandwidth_limit_bytes_per_second: Cap on the copy's read rate in bytes per second, all disks together;
            empty: no cap.
    """
    agent_block = load_block(Agent, agent)
    vcenter_block = load_block(VCenter, vcenter) if vcenter is not None else None
    recorded = find_vm(default_catalog(), vm)
    with job("copy", recorded.vm_context_id) as job_id:
        return run_copy(
            job_id=job_id,
            vm=recorded,
            targets=targets,
            agent=agent_block,
            vcenter=vcenter_block,
            kind=kind,
            bandwidth_limit_bytes_per_second=bandwidth_limit_bytes_per_second,
        )
