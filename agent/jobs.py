"""Agent jobs: validate, take ONE VM snapshot, copy every disk to its own target, remove the snapshot."""

from __future__ import annotations

import concurrent.futures
import random
import threading
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field

from agent.cbt_check import CbtMismatch, check_unchanged_sample, unchanged_sample
from agent.config import AgentConfig
from agent.dataplane.copy import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_ZERO_GRANULARITY,
    CopyCancelled,
    CopyJob,
    CopyResult,
    DiskCopyError,
    copy_disks,
)
from agent.dataplane.sources import (
    HTTPRangeSource,
    Source,
    SourceError,
    open_vmdk_chain,
)
from agent.throttle import ThrottledSource, TokenBucket
from agent.vddk import VddkDisk, open_vddk_source
from common import digests
from common.contract import CbtCheckReport, DiskProgress, JobRequest, JobStatus, Target
from common.names import job_snapshot_description, job_snapshot_name
from common.nbd import NBDClient, NBDError
from common.vsphere import (
    ALLOCATED_AREAS,
    CbtUnavailable,
    SnapshotDisk,
    VSphereClient,
    VSphereError,
    VSphereSnapshots,
    datastore_file_url,
    observed_disks,
    session_cookie,
)


class JobRejected(Exception):
    """The request cannot run; nothing was snapshotted or written. ``status`` is the HTTP code to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class JobNotFound(Exception):
    pass


@dataclass
class _Job:
    request: JobRequest
    status: JobStatus
    cancel: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    target_sizes: dict[int, int] = field(default_factory=dict)


class JobManager:
    """Runs agent jobs in threads. One running job per VM; jobs are idempotent on job_id."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        # Built once, at start-up: a missing or unreadable CA or key stops the agent, not a job.
        self.nbd_tls = config.nbd_tls.ssl_context() if config.nbd_tls is not None else None
        self._lock = threading.Lock()
        # Notified on every status change, so a status request may wait for the job to finish (long poll).
        self._changed = threading.Condition(self._lock)
        self._jobs: dict[str, _Job] = {}

    # -- API -------------------------------------------------------------------------------------------------

    def submit(self, request: JobRequest) -> JobStatus:
        with self._lock:
            existing = self._jobs.get(request.job_id)
            if existing is not None:
                if existing.request != request:
                    raise JobRejected(409, f"job {request.job_id} exists with a different request")
                return existing.status.model_copy(deep=True)
            for other in self._jobs.values():
                if other.request.vm == request.vm and not other.status.finished:
                    raise JobRejected(409, f"VM {request.vm} already has a running job {other.request.job_id}")
            # Reserve the VM while validating, so two requests cannot both pass the check.
            job = _Job(request, JobStatus(job_id=request.job_id, vm=request.vm, kind=request.kind, state="queued"))
            self._jobs[request.job_id] = job
        try:
            job.target_sizes = self._preflight(request)
        except BaseException:
            with self._lock:
                self._jobs.pop(request.job_id, None)
            raise
        job.status.disks = [
            DiskProgress(device_key=t.device_key, bytes_total=t.capacity_bytes) for t in request.targets
        ]
        job.thread = threading.Thread(target=self._run, args=(job,), name=f"job-{request.job_id}", daemon=True)
        job.thread.start()
        return self.status(request.job_id)

    def status(self, job_id: str, wait: float = 0.0) -> JobStatus:
        """The job's status; with `wait`, once it has finished or after `wait` seconds, whichever comes first."""
        with self._changed:
            job = self._jobs.get(job_id)
            if job is None:
                raise JobNotFound(job_id)
            if wait > 0:
                # Also answered when a disk finishes, so the hub can start on that disk's target at once.
                done = self._disks_done(job.status)
                self._changed.wait_for(
                    lambda: job.status.finished or self._disks_done(job.status) != done, timeout=wait
                )
            return job.status.model_copy(deep=True)

    @staticmethod
    def _disks_done(status: JobStatus) -> int:
        return sum(disk.state == "done" for disk in status.disks)

    def cancel(self, job_id: str) -> JobStatus:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise JobNotFound(job_id)
            job.cancel.set()
        return self.status(job_id)

    def active_job_ids(self) -> set[str]:
        with self._lock:
            return {job_id for job_id, job in self._jobs.items() if not job.status.finished}

    def wait_idle(self, timeout: float) -> None:
        """For shutdown: let running jobs notice cancellation and remove their snapshots."""
        with self._lock:
            threads = [job.thread for job in self._jobs.values() if job.thread is not None]
            for job in self._jobs.values():
                job.cancel.set()
        for thread in threads:
            thread.join(timeout)

    # -- validation before anything is touched ---------------------------------------------------------------

    def _preflight(self, request: JobRequest) -> dict[int, int]:
        """Refuse what cannot run; return every target's size as its NBD server reports it."""
        if self.config.nbd_tls is not None and self.config.nbd_tls.required:
            plain_targets = [t.nbd_url for t in request.targets if not t.requires_tls]
            if plain_targets:
                raise JobRejected(
                    422,
                    f"target(s) {', '.join(plain_targets)} are plain NBD, but this agent's nbd_tls section says "
                    "required: give the hub VMFERRY_NBD_TLS_DIR so its exports are nbds://; nothing was "
                    "snapshotted or written",
                )
        if self.nbd_tls is None:
            tls_targets = [t.nbd_url for t in request.targets if t.requires_tls]
            if tls_targets:
                raise JobRejected(
                    422,
                    f"target(s) {', '.join(tls_targets)} require TLS, but this agent has no nbd_tls section in its "
                    "config (ca_file of the hub's NBD CA, cert_file and key_file of the agent's client "
                    "certificate); nothing was snapshotted or written",
                )
        try:
            with VSphereClient(self.config.vcenter.endpoint()) as client:
                vm = VSphereSnapshots(client, request.vm)
                devices = list(vm.vm.config.hardware.device)
                disks = {disk.device_key: disk for disk in observed_disks(devices, vm.name)}
                vm_name = vm.name
        except VSphereError as exc:
            raise JobRejected(422, f"VM {request.vm}: {exc}") from exc
        check_targets(vm_name, disks, request.targets)
        sizes = {}
        for target in request.targets:
            size = sizes[target.device_key] = self._target_size(vm_name, target)
            if size < disks[target.device_key].capacity_bytes:
                raise JobRejected(
                    422,
                    f"VM {vm_name!r} disk {target.device_key}: target {target.nbd_url} holds {size} bytes, "
                    f"smaller than the disk's {disks[target.device_key].capacity_bytes}; nothing was written",
                )
            try:
                self._target_digests(target, size)
            except digests.DigestError as exc:
                raise JobRejected(
                    422, f"VM {vm_name!r} disk {target.device_key}: block_digests of {target.nbd_url}: {exc}"
                ) from exc
        return sizes

    @staticmethod
    def _target_digests(target: Target, size: int) -> digests.TargetDigests | None:
        if target.block_digests is None:
            return None
        return digests.decode(target.block_digests.digests, size, target.block_digests.block_size)

    def _target_size(self, vm_name: str, target: Target) -> int:
        try:
            client = NBDClient(
                target.nbd_url, connect_timeout=self.config.nbd_connect_timeout, timeout=30, tls=self.nbd_tls
            )
        except (NBDError, OSError) as exc:
            raise JobRejected(
                422, f"VM {vm_name!r} disk {target.device_key}: target {target.nbd_url} is unreachable: {exc}"
            ) from exc
        try:
            if client.read_only:
                raise JobRejected(422, f"VM {vm_name!r} disk {target.device_key}: target {target.nbd_url} is read-only")
            return client.size
        finally:
            client.close()

    # -- the job itself ------------------------------------------------------------------------------------

    def _update(self, job: _Job, change: Callable[[JobStatus], None]) -> None:
        with self._changed:
            change(job.status)
            self._changed.notify_all()

    def _run(self, job: _Job) -> None:
        request = job.request
        self._update(job, lambda s: setattr(s, "state", "running"))
        try:
            with VSphereClient(self.config.vcenter.endpoint()) as client:
                vm = VSphereSnapshots(client, request.vm)
                # Another job's snapshot (a second agent on this VM, or a crashed one) is never ours to remove:
                # each job removes only the snapshot it created, by moref; the hub's reconciler removes those of
                # jobs its catalog knows are dead.
                name = job_snapshot_name(request.job_id)
                description = job_snapshot_description(request.job_id)
                moref = vm.create_snapshot(name, description, quiesce=request.quiesce)
                self._update(job, lambda s: s.__dict__.update(snapshot_name=name, snapshot_moref=moref))
                try:
                    self._copy_from_snapshot(job, client, vm, moref)
                finally:
                    self._remove_snapshot(job, vm, moref)
        except CopyCancelled:
            self._finish(job, "cancelled", "cancelled by the hub")
        except DiskCopyError as exc:
            self._finish(job, "cancelled" if job.cancel.is_set() else "failed", str(exc))
        except Exception as exc:  # every failure must end the job with a readable reason
            reason = str(exc) or f"unexpected {type(exc).__name__} without a message"  # words, not a class name
            self._finish(job, "cancelled" if job.cancel.is_set() else "failed", reason)
        else:
            self._finish(job, "succeeded", None)

    def _finish(self, job: _Job, state: str, error: str | None) -> None:
        def change(status: JobStatus) -> None:
            status.state = state  # type: ignore[assignment]
            status.error = error
            for disk in status.disks:
                if disk.state in ("pending", "copying"):
                    disk.state = "cancelled" if state == "cancelled" else "failed"

        self._update(job, change)

    def _remove_snapshot(self, job: _Job, vm: VSphereSnapshots, moref: str) -> None:
        last: Exception | None = None
        for _ in range(3):
            try:
                vm.remove_snapshot(moref)
                self._update(job, lambda s: setattr(s, "snapshot_removed", True))
                return
            except VSphereError as exc:
                last = exc
        name = job_snapshot_name(job.request.job_id)
        raise VSphereError(f"snapshot {name} of VM {vm.name!r} was not removed: {last}")

    def _copy_from_snapshot(self, job: _Job, client: VSphereClient, vm: VSphereSnapshots, moref: str) -> None:
        request = job.request
        frozen = {disk.device_key: disk for disk in vm.snapshot_disks(moref)}
        targets = {t.device_key: t for t in request.targets}
        if set(frozen) != set(targets):
            raise VSphereError(
                f"VM {vm.name!r} changed disks between validation and snapshot: the snapshot has "
                f"{sorted(frozen)}, the targets name {sorted(targets)}"
            )
        datacenter = vm.datacenter_path()
        cookie = session_cookie(client)
        bucket = (
            TokenBucket(request.bandwidth_limit_bytes_per_second) if request.bandwidth_limit_bytes_per_second else None
        )
        with ExitStack() as closing:
            sources: dict[int, Source] = {}
            for key in targets:
                disk = frozen[key]
                source = (
                    self._open_vddk_disk(client, vm, moref, disk)
                    if self.config.reader == "vddk"
                    else self._open_disk(client, datacenter, cookie, vm.name, disk)
                )
                closing.callback(source.close)
                sources[key] = ThrottledSource(source, bucket) if bucket is not None else source
            # Every disk planned at once: a plan is a few vSphere calls and the sampled check's round trips to
            # the source and the target (64 per disk), which one after the other made most of a job that had
            # nothing to copy.
            with concurrent.futures.ThreadPoolExecutor(max_workers=len(targets), thread_name_prefix="plan") as pool:
                planning = {
                    key: pool.submit(self._plan, job, vm, moref, frozen[key], target, sources[key])
                    for key, target in targets.items()
                }
            plans = {key: future.result() for key, future in planning.items()}
            copy_jobs = []
            for key, target in targets.items():
                disk, source = frozen[key], sources[key]
                mode, areas = plans[key]
                self._update(job, lambda s, k=key, m=mode: setattr(self._disk_in(s, k), "mode", m))
                copy_jobs.append(
                    CopyJob(
                        source=source,
                        target_url=target.nbd_url,
                        key=str(key),
                        mode="compare" if mode in ("compare", "digest-compare") else "full",
                        changed_areas=areas,
                        target_is_zero=target.target_is_zero if mode in ("full", "allocated-areas") else False,
                        progress=self._progress(job, key),
                        target_digests=(
                            self._target_digests(target, job.target_sizes[key]) if mode == "digest-compare" else None
                        ),
                        on_done=lambda result, k=key, c=disk.change_id: self._disk_done(job, k, c, result),
                    )
                )
            results = copy_disks(
                copy_jobs,
                max_parallel=self.config.max_parallel_disks,
                cancel=job.cancel,
                connections=self.config.connections_per_disk,
                block_size=self._block_size(request, len(copy_jobs)),
                tls=self.nbd_tls,
            )
        for copy_job, result in zip(copy_jobs, results, strict=True):
            self._disk_done(job, int(copy_job.key or 0), frozen[int(copy_job.key or 0)].change_id, result)

    def _disk_done(self, job: _Job, key: int, change_id: str | None, result: CopyResult) -> None:
        """Mark one disk done (idempotent): reported the moment its copy ends, so the hub can check that disk's
        target while the others are still copying."""

        def done(status: JobStatus) -> None:
            disk = self._disk_in(status, key)
            disk.state = "done"
            disk.bytes_done = disk.bytes_total
            disk.bytes_written = result.bytes_written
            disk.bytes_read = result.bytes_read + (disk.cbt_check.bytes_read if disk.cbt_check else 0)
            disk.target_bytes_read = result.target_bytes_read
            disk.change_id = change_id

        self._update(job, done)

    def _block_size(self, request: JobRequest, disks: int) -> int:
        """Whole 8 MiB blocks normally; under a bandwidth limit, blocks small enough that every reader finishes
        one in about a second, so a cancel or a failure is noticed promptly instead of after a long sleep."""
        if not request.bandwidth_limit_bytes_per_second:
            return DEFAULT_BLOCK_SIZE
        readers = max(1, min(disks, self.config.max_parallel_disks) * self.config.connections_per_disk)
        share = request.bandwidth_limit_bytes_per_second // readers
        granule = DEFAULT_ZERO_GRANULARITY
        return max(4 * granule, min(DEFAULT_BLOCK_SIZE, share // granule * granule))

    @staticmethod
    def _disk_in(status: JobStatus, key: int) -> DiskProgress:
        return next(d for d in status.disks if d.device_key == key)

    def _progress(self, job: _Job, key: int) -> Callable[[int, int], None]:
        def report(done: int, total: int) -> None:
            def change(status: JobStatus) -> None:
                disk = self._disk_in(status, key)
                disk.state = "copying"
                disk.bytes_done = done
                disk.bytes_total = total

            self._update(job, change)

        return report

    def _plan(
        self, job: _Job, vm: VSphereSnapshots, moref: str, disk: SnapshotDisk, target: Target, source: Source
    ) -> tuple[str, list[tuple[int, int]] | None]:
        """full, changed-areas (CBT from the previous change id, sample-checked) or compare (no usable CBT): by the
        target's digests when the hub sent them, else by reading the target back."""
        compare = "digest-compare" if target.block_digests is not None else "compare"
        if job.request.kind == "full":
            # Digests say what the target holds now: comparing against them writes what a full copy would.
            if target.block_digests is not None:
                return "digest-compare", None
            if target.target_is_zero and disk.change_id:
                return self._plan_allocated(job, vm, moref, disk, target, source)
            return "full", None
        if target.previous_change_id and disk.change_id:
            try:
                areas = vm.changed_areas(moref, disk.device_key, target.previous_change_id, disk.capacity_bytes)
            except CbtUnavailable:
                return compare, None  # a new CBT epoch or no CBT at all: read everything, write what differs
            if self._cbt_sample_agrees(job, vm.name, disk, target, source, areas, since=target.previous_change_id):
                return "changed-areas", areas
        return compare, None

    def _plan_allocated(
        self, job: _Job, vm: VSphereSnapshots, moref: str, disk: SnapshotDisk, target: Target, source: Source
    ) -> tuple[str, list[tuple[int, int]] | None]:
        """A full copy into a target that reads as zeros needs only the areas vSphere reports in use (change id
        "*"): the rest of the source reads as zeros too. Sample-checked like changed areas; where vSphere cannot
        tell (not VMFS, CBT unusable) or the sample disagrees, the whole disk is read."""
        try:
            areas = vm.changed_areas(moref, disk.device_key, ALLOCATED_AREAS, disk.capacity_bytes)
        except CbtUnavailable:
            return "full", None
        if self._cbt_sample_agrees(job, vm.name, disk, target, source, areas, since=ALLOCATED_AREAS):
            return "allocated-areas", areas
        return "full", None

    def _cbt_sample_agrees(
        self,
        job: _Job,
        vm_name: str,
        disk: SnapshotDisk,
        target: Target,
        source: Source,
        areas: list[tuple[int, int]],
        since: str,
    ) -> bool:
        """The sampled CBT check of ``areas``, vSphere's answer for change id ``since``; False means: read the
        whole disk (policy "full"). Raises under policy "fail"."""
        policy = job.request.cbt_check
        if policy.sample_blocks == 0:
            return True
        sample = unchanged_sample(
            areas, disk.capacity_bytes, policy.block_size, policy.sample_blocks, random.SystemRandom()
        )
        client = NBDClient(target.nbd_url, connect_timeout=self.config.nbd_connect_timeout, tls=self.nbd_tls)
        try:
            verdict = check_unchanged_sample(source, client, sample)
        finally:
            client.close()
        action = "none" if not verdict.mismatched else ("failed" if policy.on_mismatch == "fail" else "read-whole-disk")
        report = CbtCheckReport(
            blocks_checked=verdict.blocks_checked,
            bytes_read=verdict.bytes_read,
            mismatched_offsets=[offset for offset, _ in verdict.mismatched],
            action=action,
        )
        self._update(job, lambda s: setattr(self._disk_in(s, disk.device_key), "cbt_check", report))
        if not verdict.mismatched:
            return True
        if policy.on_mismatch == "fail":
            claim = (
                "not in use, but they hold data"
                if since == ALLOCATED_AREAS
                else f"unchanged since change id {since!r}, but they differ from the previous copy"
            )
            raise CbtMismatch(
                f"VM {vm_name!r} disk {disk.device_key} ({disk.file_name}): CBT calls the blocks at offsets "
                f"{report.mismatched_offsets} {claim}; CBT cannot be trusted for this disk. Nothing was written. "
                "Reset CBT on the VM (disable, snapshot create/remove, enable) and take a full backup, or set the CBT "
                "check policy to 'full' to read such disks whole"
            )
        return False

    def _open_vddk_disk(
        self, client: VSphereClient, vm: VSphereSnapshots, snapshot_moref: str, disk: SnapshotDisk
    ) -> Source:
        endpoint = client.endpoint
        if not endpoint.thumbprint:
            raise SourceError("the vddk reader needs the vCenter's certificate thumbprint in the agent config")
        return open_vddk_source(
            VddkDisk(
                server=endpoint.host,
                user=endpoint.username,
                thumbprint=endpoint.thumbprint,
                vm_moref=vm.vm._moId,
                snapshot_moref=snapshot_moref,
                file_name=disk.file_name,
            ),
            endpoint.password,
        )

    def _open_disk(
        self, client: VSphereClient, datacenter: str, cookie: str, vm_name: str, disk: SnapshotDisk
    ) -> Source:
        endpoint = client.endpoint
        name, _, value = cookie.partition("=")
        http = {
            "cookies": {name: value} if value else {},
            "thumbprint": endpoint.thumbprint,
            "verify": endpoint.ca_file or endpoint.verify_tls,
        }

        def url(path: str) -> str:
            return datastore_file_url(endpoint.host, endpoint.port, datacenter, path)

        def read_descriptor(path: str) -> bytes:
            with HTTPRangeSource(url(path), **http) as descriptor:
                if descriptor.size > 1 << 20:
                    raise SourceError(f"{path} is not a text descriptor ({descriptor.size} bytes)")
                return descriptor.read(0, descriptor.size)

        try:
            # A VM with snapshots of its own: the chain of vmfsSparse deltas down to the flat base disk.
            source = open_vmdk_chain(disk.file_name, read_descriptor, lambda path: HTTPRangeSource(url(path), **http))
        except (SourceError, ValueError) as exc:
            raise SourceError(f"VM {vm_name!r} disk {disk.device_key} ({disk.file_name}): {exc}") from exc
        if source.size != disk.capacity_bytes:
            source.close()
            raise SourceError(
                f"VM {vm_name!r} disk {disk.device_key}: its flat extent holds {source.size} bytes, "
                f"but the disk is {disk.capacity_bytes}"
            )
        return source


def check_targets(vm_name: str, disks: dict[int, object], targets: list[Target]) -> None:
    """Every disk of the VM has exactly one target, and every target names a disk of the VM."""
    keys = [t.device_key for t in targets]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise JobRejected(422, f"VM {vm_name!r}: disk key(s) {twice} have more than one target")
    unknown = sorted(set(keys) - set(disks))
    if unknown:
        raise JobRejected(422, f"VM {vm_name!r} has no disk(s) {unknown}; its disks are {sorted(disks)}")
    missing = sorted(set(disks) - set(keys))
    if missing:
        raise JobRejected(422, f"VM {vm_name!r}: disk(s) {missing} have no target; every disk of the VM must be copied")
