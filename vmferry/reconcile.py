"""The reconciler's logic: compare the catalog with reality and clean what no running job owns. Prefect-free.

Every resource a job takes names the job: qemu-nbd exports and port leases (catalog rows), pending restore
points and their ``.partial`` directories, the agent's ``vmferry-<job id>`` snapshot. The reconciler decides
for each job whether its owner is still at work, and removes the resources of jobs that are not.

Whose is it - the rule (``OwnerJudge``):

- a job row ``succeeded``/``failed``/``cancelled`` is *finished*: whatever it still holds is an orphan;
- a job named by a resource but missing from the catalog is *absent*: its resources are orphans, except a
  snapshot ``vmferry-<unknown job>``, which may be another hub's (a name never proves ownership) and is kept;
- a job row ``running`` is *crashed* when its flow run (``jobs.flow_run_id``) is in a final state
  (Completed, Failed, Crashed, Cancelled) - a flow closes its job before its run ends, so a final run with a
  running job never closed it - or when the flow run's recorded hub process is gone. Every flow records its
  process as ``<host>:<pid>:<start ticks>`` in the flow run's ``infrastructure_pid`` (``orchestration.hooks``); the
  process is gone when no process of that pid with that start time exists on this host. SIGKILL, OOM or a
  reboot leave the flow run "Running" in Prefect for ever; this catches them;
- a job row ``running`` that cannot be checked - no flow run recorded, a flow run the Prefect API does not
  know, a process on another host, an identity some worker wrote - is *unverifiable* and treated as alive.

Resources of *running* and *unverifiable* jobs are never touched. The one exception is an expired port lease
nobody serves: an expired lease is abandoned by contract (``catalog/ports.py``) and any allocator may take it.
Every action is idempotent and conditional (a point is failed only while pending, a job only while running,
a lease released only for its own job), so racing a job that finishes meanwhile changes nothing of its outcome.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from catalog.db import Catalog
from catalog.errors import UnknownRecord
from catalog.exports import ExportView, live_exports, mark_export_stopped
from catalog.failovers import FailoverView, unfinished_failovers
from catalog.installation import existing_installation_id
from catalog.inventory import context_of_disk
from catalog.jobs import FINISHED_STATES, fail_running_job, get_job, running_jobs
from catalog.models import utcnow
from catalog.ports import held_leases, release_port
from catalog.replication import recorded_volume_contexts
from catalog.resources import ResourceView, live_resources, mark_resource_removed, mark_snapshot_removed
from catalog.restore_points import fail_pending_point, find_point, points_in_state
from clients.cloudstack import CloudStackClient
from clients.qemu import cmdline_of, is_our_qemu_nbd, stop_qemu_nbd
from common import names
from common.vsphere import VSphereClient, VSphereEndpoint, VSphereSnapshots
from vmferry.errors import describe
from vmferry.repository import Repository

# Prefect state types after which a flow run executes nothing more.
FINAL_STATE_TYPES = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})


# --- which process runs a flow -----------------------------------------------------------------------------


def process_start_ticks(pid: int) -> int | None:
    """The start time of a live process (clock ticks since boot), None when there is none or it is a zombie.

    A pid alone is reused; pid plus start time names one process for the life of the machine.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name may contain spaces and parentheses
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])  # field 22 of proc(5); fields[0] is field 3


def process_identity(pid: int | None = None) -> str:
    """``<host>:<pid>:<start ticks>`` of this (or another local) process, as flows record it."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{process_start_ticks(pid)}"


def parse_process_identity(value: str | None) -> tuple[str, int, int] | None:
    """(host, pid, start ticks) of an identity we wrote; None for anything else (a worker's pid, a container)."""
    if not value:
        return None
    parts = value.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    return parts[0], int(parts[1]), int(parts[2])


# --- whose is it -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlowRunFacts:
    """What the Prefect API says about a job's flow run."""

    state_type: str | None  # "RUNNING", "CRASHED", ...
    state_name: str | None
    infrastructure_pid: str | None


FlowRunLookup = Callable[[Sequence[str]], Mapping[str, FlowRunFacts]]
OwnerStatus = Literal["running", "unverifiable", "finished", "crashed", "absent"]


@dataclass(frozen=True)
class Owner:
    job_id: str
    status: OwnerStatus
    reason: str

    @property
    def alive(self) -> bool:
        """Running or unverifiable: its resources are not ours to touch."""
        return self.status in ("running", "unverifiable")

    def describe(self) -> str:
        return f"{self.status}: {self.reason}"


class OwnerJudge:
    """Decides, once per job and reconciler run, whether a job's owner is still at work (see the module doc)."""

    def __init__(self, catalog: Catalog, lookup: FlowRunLookup, *, hostname: str | None = None) -> None:
        self.catalog = catalog
        self.lookup = lookup
        self.hostname = hostname or socket.gethostname()
        self._facts: dict[str, FlowRunFacts | None] = {}
        self._owners: dict[str, Owner] = {}

    def prefetch(self) -> None:
        """Ask Prefect about every running job's flow run in one call instead of one per job."""
        wanted = sorted({j.flow_run_id for j in running_jobs(self.catalog) if j.flow_run_id} - set(self._facts))
        if wanted:
            found = self.lookup(wanted)
            self._facts.update({run_id: found.get(run_id) for run_id in wanted})

    def _flow_run(self, flow_run_id: str) -> FlowRunFacts | None:
        if flow_run_id not in self._facts:
            self._facts[flow_run_id] = self.lookup([flow_run_id]).get(flow_run_id)
        return self._facts[flow_run_id]

    def owner(self, job_id: str) -> Owner:
        if job_id not in self._owners:
            self._owners[job_id] = self._judge(job_id)
        return self._owners[job_id]

    def running_jobs_alive(self) -> list[Owner]:
        return [owner for owner in map(self.owner, (j.id for j in running_jobs(self.catalog))) if owner.alive]

    def _judge(self, job_id: str) -> Owner:
        try:
            job = get_job(self.catalog, job_id)
        except UnknownRecord:
            return Owner(job_id, "absent", "no such job in the catalog")
        if job.state in FINISHED_STATES:
            return Owner(job_id, "finished", f"job {job.state}")
        if job.state != "running":
            return Owner(job_id, "unverifiable", f"job is {job.state}")
        if not job.flow_run_id:
            return Owner(job_id, "unverifiable", "job records no flow run")
        facts = self._flow_run(job.flow_run_id)
        # Read the row again after the flow run: a flow closes its job before its run ends, so a job still
        # running after its run was seen final really was abandoned (not closed a moment ago).
        job = get_job(self.catalog, job_id)
        if job.state in FINISHED_STATES:
            return Owner(job_id, "finished", f"job {job.state}")
        run = f"flow run {job.flow_run_id}"
        if facts is None:
            return Owner(job_id, "unverifiable", f"{run} is unknown to the Prefect API")
        if facts.state_type in FINAL_STATE_TYPES:
            return Owner(job_id, "crashed", f"{run} is {facts.state_name} but never closed its job")
        identity = parse_process_identity(facts.infrastructure_pid)
        if identity is None:
            return Owner(job_id, "unverifiable", f"{run} is {facts.state_name}; no hub process recorded")
        host, pid, ticks = identity
        if host != self.hostname:
            return Owner(job_id, "unverifiable", f"{run} runs on {host}; reconcile there")
        if process_start_ticks(pid) != ticks:
            return Owner(job_id, "crashed", f"{run} is {facts.state_name} but its process {pid} on {host} is gone")
        return Owner(job_id, "running", f"{run} is {facts.state_name}, process {pid} alive")


# --- the report --------------------------------------------------------------------------------------------

FindingKind = Literal[
    "nbd-export",
    "port-lease",
    "partial-directory",
    "restore-point",
    "point-directory",
    "snapshot",
    "hub-volume",
    "job",
    "job-resource",
    "failover",
]


class Finding(BaseModel):
    """One resource the reconciler looked at, whose it is, and what was done with it."""

    kind: FindingKind
    subject: str
    job_id: str | None = None
    owner: str = ""
    action: str  # past tense when done, "would ..." in a dry run, "kept" for live owners, "failed to ..."
    error: str | None = None


class ReconcileReport(BaseModel):
    dry_run: bool
    findings: list[Finding] = []

    def of(self, kind: FindingKind) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.error]

    def table(self) -> list[dict[str, str]]:
        return [
            {
                "kind": f.kind,
                "subject": f.subject,
                "job": f.job_id or "",
                "owner": f.owner,
                "action": f.action,
                "error": f.error or "",
            }
            for f in self.findings
        ]

    def summary(self) -> str:
        done = [f for f in self.findings if f.action not in ("kept",) and not f.error]
        kept = [f for f in self.findings if f.action == "kept"]
        verb = "would clean" if self.dry_run else "cleaned"
        return f"{verb} {len(done)}, kept {len(kept)} of running jobs, {len(self.errors)} error(s)"


# --- the sweeps --------------------------------------------------------------------------------------------


class Reconciler:
    """One reconciliation pass. Each sweep returns its findings and never raises for one resource's failure."""

    def __init__(self, catalog: Catalog, judge: OwnerJudge, *, dry_run: bool = False) -> None:
        self.catalog = catalog
        self.judge = judge
        self.dry_run = dry_run

    def _act(self, finding: Finding, verb: str, done: str, action: Callable[[], object]) -> Finding:
        """Do (or, in a dry run, only name) one action; a failure is recorded on the finding, not raised."""
        if self.dry_run:
            return finding.model_copy(update={"action": f"would {verb}"})
        try:
            changed = action()
        except Exception as exc:
            return finding.model_copy(update={"action": f"failed to {verb}", "error": describe(exc)})
        if changed is False:
            # the conditional update found nothing to change: the owner closed it between our read and now
            return finding.model_copy(update={"action": "unchanged (already handled)"})
        return finding.model_copy(update={"action": done})

    # qemu-nbd processes --------------------------------------------------------------------------------

    def sweep_exports(self) -> list[Finding]:
        findings = []
        for export in live_exports(self.catalog):
            owner = self.judge.owner(export.job_id)
            subject = (
                f"{export.export_name} pid {export.pid} serving {export.file_path} on "
                f"{export.bind_address}:{export.port}"
            )
            finding = Finding(
                kind="nbd-export", subject=subject, job_id=export.job_id, owner=owner.describe(), action=""
            )
            if owner.alive:
                findings.append(finding.model_copy(update={"action": "kept"}))
                continue
            pid = export.pid if export.pid is not None else _unrecorded_qemu_nbd(export)
            if pid is not None and is_our_qemu_nbd(pid, export.file_path, export.port):
                findings.append(
                    self._act(finding, "stop qemu-nbd", "stopped qemu-nbd", lambda e=export, p=pid: self._stop(e, p))
                )
            else:
                findings.append(
                    self._act(
                        finding,
                        "mark stopped (no such process)",
                        "marked stopped (no such process)",
                        lambda e=export: mark_export_stopped(self.catalog, e.id),
                    )
                )
        return findings

    def _stop(self, export: ExportView, pid: int) -> None:
        stop_qemu_nbd(pid, export.file_path)  # checks pid and command line again right before signalling
        mark_export_stopped(self.catalog, export.id)

    # what jobs recorded in the ledger: qemu-nbd on private sockets, temporary outputs, work directories ----

    def sweep_job_resources(self) -> list[Finding]:
        findings = []
        # processes first: a directory goes only once nothing serves from it
        resources = sorted(live_resources(self.catalog), key=lambda r: r.kind != "qemu-nbd")
        for resource in resources:
            if resource.kind == "snapshot":
                continue  # sweep_snapshots, which can reach vCenter
            owner = self.judge.owner(resource.job_id)
            finding = Finding(
                kind="job-resource",
                subject=f"{resource.kind} {resource.path}" + (f" serving {resource.ref}" if resource.ref else ""),
                job_id=resource.job_id,
                owner=owner.describe(),
                action="",
            )
            if owner.alive:
                findings.append(finding.model_copy(update={"action": "kept"}))
                continue
            verb = f"remove {resource.kind}"
            findings.append(self._act(finding, verb, f"removed {resource.kind}", partial(self._remove, resource)))
        return findings

    def _remove(self, resource: ResourceView) -> None:
        if resource.kind == "qemu-nbd" and resource.ref:
            pid = resource.pid if resource.pid is not None else _qemu_nbd_on_socket(resource)
            if pid is not None and is_our_qemu_nbd(pid, resource.ref) and resource.path in (cmdline_of(pid) or []):
                stop_qemu_nbd(pid, resource.ref)
        elif resource.kind == "file" and resource.path:
            # only a regular file: what was recorded but never created by us may be somebody's link by now
            path = Path(resource.path)
            if path.is_file() and not path.is_symlink():
                path.unlink()
        elif resource.kind == "directory" and resource.path:
            path = Path(resource.path)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
        mark_resource_removed(self.catalog, resource.id)

    # port leases ---------------------------------------------------------------------------------------

    def sweep_leases(self) -> list[Finding]:
        findings = []
        now = utcnow()
        served = {e.port for e in live_exports(self.catalog) if self.judge.owner(e.job_id).alive}
        for lease in held_leases(self.catalog):
            owner = self.judge.owner(lease.job_id)
            expired = lease.expires_at <= now
            subject = (
                f"port {lease.port} ({lease.purpose or 'no purpose'}), expires {lease.expires_at:%Y-%m-%d %H:%M:%S}"
            )
            finding = Finding(
                kind="port-lease", subject=subject, job_id=lease.job_id, owner=owner.describe(), action=""
            )
            if owner.alive and not (expired and lease.port not in served):
                findings.append(finding.model_copy(update={"action": "kept"}))
                continue
            # an alive owner's lease is released only when it expired and nothing serves the port
            verb, done = (
                ("release", "released") if not owner.alive else ("release expired lease", "released expired lease")
            )
            findings.append(
                self._act(finding, verb, done, lambda le=lease: release_port(self.catalog, le.port, le.job_id))
            )
        return findings

    # restore points and the repository -----------------------------------------------------------------

    def sweep_restore_points(self, repository: Repository | None) -> list[Finding]:
        findings = []
        if repository is not None:
            findings += self._sweep_partial_dirs(repository)
        for point in points_in_state(self.catalog, "pending"):
            owner = self.judge.owner(point.job_id)
            finding = Finding(
                kind="restore-point",
                subject=f"pending point {point.id} of vm_context {point.vm_context_id} in {point.repository}",
                job_id=point.job_id,
                owner=owner.describe(),
                action="",
            )
            if owner.alive:
                findings.append(finding.model_copy(update={"action": "kept"}))
                continue
            findings.append(
                self._act(
                    finding, "mark failed", "marked failed", lambda p=point.id: fail_pending_point(self.catalog, p)
                )
            )
            # A crash between the directory rename and the commit leaves complete files of a point that can
            # never be committed (its outcomes died with the flow): remove them too.
            if repository is not None and point.repository == repository.name:
                final = repository.point_dir(point.vm_context_id, point.id)
                if final.is_dir():
                    findings.append(
                        self._act(
                            finding.model_copy(update={"kind": "point-directory", "subject": str(final)}),
                            "remove",
                            "removed",
                            lambda d=final: shutil.rmtree(d),
                        )
                    )
        return findings

    def _sweep_partial_dirs(self, repository: Repository) -> list[Finding]:
        findings = []
        for directory in repository.partial_dirs():
            parsed, vm_context_id = names.parse_point_dir(directory.name), names.parse_vm_dir(directory.parent.name)
            if parsed is None or not parsed[1] or vm_context_id is None:
                continue  # not a name the repository makes
            point = find_point(self.catalog, parsed[0])
            if point is None or point.vm_context_id != vm_context_id:
                owner_text = "absent: no such restore point in the catalog"
                job_id = None
                alive = False
            else:
                owner = self.judge.owner(point.job_id)
                owner_text, job_id = owner.describe(), point.job_id
                alive = owner.alive and point.state == "pending"
                if not alive and point.state != "pending":
                    owner_text = f"point {point.state}; {owner_text}"
            finding = Finding(
                kind="partial-directory", subject=str(directory), job_id=job_id, owner=owner_text, action=""
            )
            if alive:
                findings.append(finding.model_copy(update={"action": "kept"}))
                continue
            # The directory goes first: a point marked failed whose files remain would look finished to nobody.
            findings.append(self._act(finding, "remove", "removed", lambda d=directory: shutil.rmtree(d)))
        return findings

    # vSphere snapshots ---------------------------------------------------------------------------------

    def sweep_snapshots(self, endpoint: VSphereEndpoint) -> list[Finding]:
        findings = []
        recorded = {r.ref: r.job_id for r in live_resources(self.catalog, "snapshot") if r.ref}
        seen: set[str] = set()
        with VSphereClient(endpoint) as client:
            for vm in client.list_vms():
                try:
                    handle = VSphereSnapshots(client, vm.moref)
                    snapshots = handle.snapshots()
                except Exception as exc:
                    # one VM we cannot read (gone meanwhile, no permission) must not hide the others' snapshots
                    error = describe(exc)
                    subject = f"VM {vm.name} ({vm.moref})"
                    findings.append(Finding(kind="snapshot", subject=subject, action="failed to list", error=error))
                    continue
                for snapshot in snapshots:
                    # the ledger names the job of a snapshot the agent reported; else its name does, but only
                    # of a job this catalog has: a snapshot of an unknown job may be another hub's, still in use
                    job_id = recorded.get(snapshot.moref) or names.job_of_snapshot(snapshot.name)
                    if job_id is None:
                        continue  # somebody else's snapshot
                    owner = self.judge.owner(job_id)
                    finding = Finding(
                        kind="snapshot",
                        subject=f"{snapshot.name} ({snapshot.moref}) of VM {vm.name} ({vm.moref})",
                        job_id=job_id,
                        owner=owner.describe(),
                        action="",
                    )
                    if owner.alive or owner.status == "absent":
                        findings.append(finding.model_copy(update={"action": "kept"}))
                        continue
                    findings.append(
                        self._act(finding, "remove", "removed", partial(self._remove_snapshot, handle, snapshot.moref))
                    )
                seen |= {snapshot.moref for snapshot in snapshots}
        if not any(f.error for f in findings):  # every VM was read: a recorded snapshot not seen is gone
            findings += self._forget_gone_snapshots(recorded, seen)
        return findings

    def _forget_gone_snapshots(self, recorded: dict[str, str], seen: set[str]) -> list[Finding]:
        """Ledger rows of snapshots that no longer exist (their agent removed them while the catalog was away)."""
        findings = []
        for moref, job_id in recorded.items():
            owner = self.judge.owner(job_id)
            if moref in seen or owner.alive:
                continue
            finding = Finding(
                kind="snapshot", subject=f"snapshot {moref} (no longer in vCenter)", job_id=job_id,
                owner=owner.describe(), action="",
            )  # fmt: skip
            verb = "record as removed"
            findings.append(
                self._act(finding, verb, "recorded as removed", partial(mark_snapshot_removed, self.catalog, moref))
            )
        return findings

    def _remove_snapshot(self, handle: VSphereSnapshots, moref: str) -> None:
        handle.remove_snapshot(moref)
        mark_snapshot_removed(self.catalog, moref)

    # CloudStack hub volumes ----------------------------------------------------------------------------

    def sweep_hub_volumes(self, client: CloudStackClient, hub_vm_id: str) -> list[Finding]:
        findings = []
        owned = recorded_volume_contexts(self.catalog)
        installation = existing_installation_id(self.catalog)  # none yet: no volume can be tagged ours
        busy_contexts: dict[int, str] = {}
        for owner in self.judge.running_jobs_alive():
            job = get_job(self.catalog, owner.job_id)
            if job.vm_context_id is not None:
                busy_contexts[job.vm_context_id] = job.id
        for volume in client.list_volumes(virtual_machine_id=hub_vm_id):
            if volume.type == "ROOT" or owned.get(volume.id, -1) in busy_contexts:
                continue  # the hub's own system disk, or a volume a running sync is writing
            subject = f"volume {volume.id} ({volume.name}, {volume.type}, device {volume.device_id}) on hub {hub_vm_id}"
            if volume.id in owned:
                # a sync that died left it attached: volumes rest detached, and it holds one of the hub's slots
                finding = Finding(kind="hub-volume", subject=subject, owner="no running sync of its VM", action="")
                findings.append(self._act(finding, "detach", "detached", lambda v=volume.id: client.detach_volume(v)))
                continue
            finding = Finding(kind="hub-volume", subject=subject, owner="no vm context owns it", action="")
            # A running replication may have created (and tagged) it but not recorded it yet. Its owner tags,
            # naming this installation and a disk of a VM with a running job, say so; its name proves nothing.
            claimed = names.tagged_disk(volume.tag_map, installation) if installation else None
            context = context_of_disk(self.catalog, claimed) if claimed is not None else None
            if context is not None and context in busy_contexts:
                job_id = busy_contexts[context]
                findings.append(
                    finding.model_copy(update={"job_id": job_id, "owner": "running job of its VM", "action": "kept"})
                )
                continue
            findings.append(self._act(finding, "detach", "detached", lambda v=volume.id: client.detach_volume(v)))
        return findings

    # failovers that never finished ---------------------------------------------------------------------

    def sweep_failovers(self, roll_back: Callable[[FailoverView], object]) -> list[Finding]:
        """``roll_back`` removes the failover's recorded destination VM and puts its volumes back on the hub."""
        findings = []
        for failover in unfinished_failovers(self.catalog):
            owner = self.judge.owner(failover.job_id)
            destination = failover.destination_vm_id or "none recorded"
            finding = Finding(
                kind="failover",
                subject=f"{failover.mode} failover {failover.id} of vm_context {failover.vm_context_id} "
                f"(destination VM {destination})",
                job_id=failover.job_id,
                owner=owner.describe(),
                action="",
            )
            if owner.alive:
                findings.append(finding.model_copy(update={"action": "kept"}))
                continue
            findings.append(self._act(finding, "roll back", "rolled back", partial(roll_back, failover)))
        return findings

    # job rows ------------------------------------------------------------------------------------------

    def sweep_jobs(self) -> list[Finding]:
        findings = []
        for job in running_jobs(self.catalog):
            owner = self.judge.owner(job.id)
            if owner.status != "crashed":
                continue
            finding = Finding(
                kind="job",
                subject=f"{job.kind} job {job.id} (flow run {job.flow_run_id})",
                job_id=job.id,
                owner=owner.describe(),
                action="",
            )
            error = f"crashed: {owner.reason} (found by the reconciler)"
            findings.append(
                self._act(
                    finding,
                    "mark failed",
                    "marked failed",
                    lambda j=job.id, e=error: fail_running_job(self.catalog, j, e),
                )
            )
        return findings


def _unrecorded_qemu_nbd(export: ExportView) -> int | None:
    """A qemu-nbd started for an export whose pid was never recorded (the flow died right after starting it).

    Matched on the export's exact identity - this file, this port, this export name - never on a name alone.
    """
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = [a.decode(errors="replace") for a in (proc / "cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            continue
        if not argv or Path(argv[0]).name != "qemu-nbd" or export.file_path not in argv:
            continue
        if _option(argv, "--port") == str(export.port) and _option(argv, "--export-name") == export.export_name:
            return int(proc.name)
    return None


def _qemu_nbd_on_socket(resource: ResourceView) -> int | None:
    """A qemu-nbd a job started on its private socket but whose pid it never recorded (killed right after)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        argv = cmdline_of(int(proc.name))
        if argv and Path(argv[0]).name == "qemu-nbd" and resource.path in argv and resource.ref in argv:
            return int(proc.name)
    return None


def _option(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv[:-1]):
        if arg == name:
            return argv[i + 1]
        if arg == "--":
            break
    return None
