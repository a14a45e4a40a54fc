"""The reconciler: compare the catalog with reality and clean what no running job owns.

Run it on the hub (it stops the hub's qemu-nbd and removes repository files), on a schedule and after a
crash. What it sweeps, and how it decides a job's owner is gone, is in vmferry/reconcile.py. A running job's
resources are never touched; every action is idempotent, so running it twice changes nothing more.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from blocks import load_block
from blocks.cloudstack import CloudStack
from blocks.repository import BackupRepository
from blocks.vcenter import VCenter
from catalog import default_catalog
from flows._job import job
from orchestration.hooks import ON_CANCELLATION, ON_CRASHED, ON_RUNNING
from orchestration.outcome import PUBLISH_OUTCOME
from tasks.reconcile import (
    read_flow_run_facts,
    sweep_crashed_jobs,
    sweep_failovers,
    sweep_hub_volumes,
    sweep_job_resources,
    sweep_nbd_exports,
    sweep_port_leases,
    sweep_restore_points,
    sweep_snapshots,
)
from vmferry.errors import VmferryError, describe
from vmferry.reconcile import Finding, FindingKind, OwnerJudge, Reconciler, ReconcileReport


class ReconcileIncomplete(VmferryError):
    """Some orphan could not be cleaned; ``report`` says which and why. Running again retries them."""

    def __init__(self, report: ReconcileReport) -> None:
        self.report = report
        problems = "; ".join(f"{f.kind} {f.subject}: {f.error}" for f in report.errors)
        super().__init__(f"reconciliation left {len(report.errors)} problem(s): {problems}")


def _job_error(exc: BaseException) -> str:
    """The reconciler's job row counts what it could not clean; the report names them."""
    if isinstance(exc, ReconcileIncomplete):
        return f"{len(exc.report.errors)} orphan(s) could not be cleaned"
    return describe(exc)


@flow(
    name="reconcile",
    on_running=ON_RUNNING,
    on_crashed=ON_CRASHED,
    on_cancellation=ON_CANCELLATION,
    **PUBLISH_OUTCOME,
)
def reconcile(
    repository: BackupRepository | str | None = None,
    vcenter: VCenter | str | None = None,
    cloudstack: CloudStack | str | None = None,
    dry_run: bool = False,
) -> ReconcileReport:
    """Stop orphaned qemu-nbd, release leases, remove partial points, restore outputs and agent snapshots, roll
    back failovers whose process died, detach foreign volumes from the hub and mark crashed jobs failed. Only the
    parts whose block is given are swept (exports, leases, restore outputs, pending points and jobs always).
    ``dry_run`` reports and changes nothing.

    Args:
        repository: Saved BackupRepository block name whose partial restore points to remove; empty: not swept.
        vcenter: Saved VCenter block name whose leftover vmferry snapshots to remove; empty: not swept.
        cloudstack: Saved CloudStack block name whose hub to sweep for volumes that are not ours and whose
            interrupted failovers to roll back; empty: not swept.
        dry_run: Only report what would be cleaned; change nothing.
    """
    logger = get_run_logger()
    repo = load_block(BackupRepository, repository).repository() if repository is not None else None
    vcenter_block = load_block(VCenter, vcenter) if vcenter is not None else None
    cloud = load_block(CloudStack, cloudstack) if cloudstack is not None else None
    catalog = default_catalog()
    report = ReconcileReport(dry_run=dry_run)
    # A dry run changes nothing, not even the job ledger.
    with nullcontext() if dry_run else job("reconcile", error_text=_job_error):
        judge = OwnerJudge(catalog, read_flow_run_facts)
        judge.prefetch()
        reconciler = Reconciler(catalog, judge, dry_run=dry_run)

        def sweep(kind: FindingKind, call: Callable[[], list[Finding]]) -> None:
            try:
                report.findings.extend(call())
            except Exception as exc:
                # one unreachable system must not stop the other sweeps
                logger.exception("the %s sweep failed", kind)
                error = describe(exc)
                report.findings.append(Finding(kind=kind, subject="(the whole sweep)", action="failed", error=error))

        # Processes first, then the ports they held, then files, then the job rows that owned it all, so an
        # interrupted pass leaves the jobs still marked running for the next one.
        sweep("nbd-export", lambda: sweep_nbd_exports(reconciler))
        sweep("port-lease", lambda: sweep_port_leases(reconciler))
        sweep("job-resource", lambda: sweep_job_resources(reconciler))
        sweep("restore-point", lambda: sweep_restore_points(reconciler, repo))
        if vcenter_block is not None:
            sweep("snapshot", lambda: sweep_snapshots(reconciler, vcenter_block))
        if cloud is not None:
            # failovers first: their volumes go back on the hub, where the hub-volume sweep then finds them ours
            sweep("failover", lambda: sweep_failovers(reconciler, cloud))
            sweep("hub-volume", lambda: sweep_hub_volumes(reconciler, cloud))
        sweep("job", lambda: sweep_crashed_jobs(reconciler))
        for finding in report.findings:
            if finding.action != "kept":
                logger.info("%s %s: %s (owner %s)", finding.kind, finding.subject, finding.action, finding.owner)
        logger.info("reconciliation: %s", report.summary())
        create_table_artifact(
            key="reconcile",
            table=report.table()
            or [{"kind": "", "subject": "nothing found", "job": "", "owner": "", "action": "", "error": ""}],
            description=f"Reconciliation{' (dry run)' if dry_run else ''}: {report.summary()}",
        )
        if report.errors:
            raise ReconcileIncomplete(report)
    return report
