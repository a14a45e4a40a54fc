"""Verifying restore points: every file passes ``qemu-img check`` and still reads as its stored checksum; with
``boot``, the point is also booted in qemu (flows/verify_boot.py)."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from blocks import load_block
from blocks.repository import BackupRepository
from catalog import default_catalog
from catalog.inventory import RecordedVM, find_vm, get_vm
from catalog.restore_points import PointDiskView, PointView, committed_points, get_point
from clients.qemu import QemuError, check_image, content_sha256
from common import names
from common.names import artifact_key
from flows.verify_boot import DEFAULT_BOOT_MARKER, DEFAULT_BOOT_TIMEOUT_S, boot_point, record_boot_verdict
from orchestration.outcome import PUBLISH_OUTCOME
from orchestration.runs import one_job_per_vm, table_rows
from vmferry.errors import VmferryError
from vmferry.repository import Repository


class DiskVerdict(BaseModel):
    disk_id: str
    file_path: str
    ok: bool
    problem: str | None = None


class VerificationFailed(VmferryError):
    """A restore point does not read back as it was written."""


def point_vm(arguments: dict[str, Any]) -> RecordedVM:
    """The VM whose restore point is verified (``point_id``, else ``vm``): a verification holds its one-job slot."""
    catalog = default_catalog()
    if arguments.get("point_id") is None and arguments.get("vm"):
        return find_vm(catalog, arguments["vm"])
    return get_vm(catalog, get_point(catalog, arguments["point_id"]).vm_context_id)


def verify_run_name() -> str:
    from prefect.runtime import flow_run

    parameters = flow_run.parameters
    return names.verify_run_name(parameters.get("point_id"), parameters.get("vm"), bool(parameters.get("boot")))


@task(cache_policy=NO_CACHE, task_run_name="verify-{disk.disk_id}")
def verify_point_disk(repository: Repository, disk: PointDiskView) -> DiskVerdict:
    path = repository.absolute(disk.file_path)
    if not path.is_file():
        return DiskVerdict(disk_id=disk.disk_id, file_path=disk.file_path, ok=False, problem="file is missing")
    try:
        check_image(path)
        actual = content_sha256(path)
    except QemuError as exc:
        return DiskVerdict(disk_id=disk.disk_id, file_path=disk.file_path, ok=False, problem=str(exc))
    if actual != disk.checksum:
        return DiskVerdict(
            disk_id=disk.disk_id,
            file_path=disk.file_path,
            ok=False,
            problem=f"content sha256 {actual} differs from the recorded {disk.checksum}",
        )
    return DiskVerdict(disk_id=disk.disk_id, file_path=disk.file_path, ok=True)


@flow(name="verify-restore-point", flow_run_name=verify_run_name, **PUBLISH_OUTCOME)
@one_job_per_vm("verify", point_vm)
def verify_restore_point(
    point_id: int | None,
    repository: BackupRepository | str,
    vm: str | None = None,
    boot: bool = False,
    boot_marker: str | None = DEFAULT_BOOT_MARKER,
    boot_timeout_s: float = DEFAULT_BOOT_TIMEOUT_S,
) -> list[DiskVerdict]:
    """Raises VerificationFailed naming every bad disk; returns one verdict per disk when all are good.

    Args:
        point_id: The restore point's id (`vmferry points VM` lists them); empty: the newest point of ``vm``.
        repository: Saved BackupRepository block name (or a BackupRepository block) holding the restore points.
        vm: Instead of point_id: the VM whose newest committed point in this repository is verified (schedules).
        boot: Also boot the point read-only in qemu (a throw-away overlay, no network) and check that it starts.
        boot_marker: Text the guest's serial console must show to pass the boot check; empty: pass when the
            firmware handed over to a boot loader and the guest still runs at the timeout.
        boot_timeout_s: Seconds the boot check waits for the marker.
    """
    repo = load_block(BackupRepository, repository).repository()
    point = _point_to_verify(point_id, vm, repo.name)
    point_id = point.id
    if point.state != "committed":
        raise VerificationFailed(f"restore point {point_id} is {point.state}, not committed")
    if point.repository != repo.name:
        raise VerificationFailed(
            f"restore point {point_id} is in repository {point.repository!r}, not {repo.name!r}: "
            "pass the BackupRepository block of that repository"
        )
    verdicts = [verify_point_disk(repo, disk) for disk in point.disks]
    create_table_artifact(
        key=artifact_key("verify", get_vm(default_catalog(), point.vm_context_id).name),
        table=table_rows(verdicts, {"ok": "good"}),
        description=f"Verification of restore point {point_id}",
    )
    bad = [v for v in verdicts if not v.ok]
    if bad:
        raise VerificationFailed(
            f"restore point {point_id}: " + "; ".join(f"{v.disk_id} ({v.file_path}): {v.problem}" for v in bad)
        )
    if boot:
        recorded = get_vm(default_catalog(), point.vm_context_id)
        verdict = boot_point(repo, point, recorded, boot_marker or None, boot_timeout_s)
        record_boot_verdict(verdict)
        if not verdict.booted:
            where = f"; screenshot {verdict.screenshot}" if verdict.screenshot else ""
            raise VerificationFailed(
                f"restore point {point_id} of {recorded.name} does not boot: {verdict.reason}{where}"
            )
    return verdicts


def _point_to_verify(point_id: int | None, vm: str | None, repository: str) -> PointView:
    catalog = default_catalog()
    if point_id is not None:
        return get_point(catalog, point_id)
    if vm is None:
        raise ValueError("name a restore point (point_id) or a VM whose newest point to verify (vm)")
    recorded = find_vm(catalog, vm)
    points = committed_points(catalog, recorded.vm_context_id, repository)
    if not points:
        raise VerificationFailed(f"VM {recorded.name!r} has no committed restore point in repository {repository!r}")
    return points[-1]
