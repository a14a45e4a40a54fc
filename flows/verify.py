"""Verifying restore points: every file passes ``qemu-img check`` and still reads as its stored checksum."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from blocks import load_block
from blocks.repository import BackupRepository
from catalog import default_catalog
from catalog.inventory import RecordedVM, get_vm
from catalog.restore_points import PointDiskView, get_point
from clients.qemu import QemuError, check_image, content_sha256
from vmferry.errors import VmferryError
from vmferry.outcome import PUBLISH_OUTCOME
from vmferry.repository import Repository
from vmferry.runs import artifact_key, one_job_per_vm, table_rows


class DiskVerdict(BaseModel):
    disk_id: str
    file_path: str
    ok: bool
    problem: str | None = None


class VerificationFailed(VmferryError):
    """A restore point does not read back as it was written."""


def point_vm(arguments: dict[str, Any]) -> RecordedVM:
    """The VM whose restore point ``point_id`` is: a verification holds that VM's one-job slot."""
    catalog = default_catalog()
    return get_vm(catalog, get_point(catalog, arguments["point_id"]).vm_context_id)


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


@flow(name="verify-restore-point", flow_run_name="verify-point-{point_id}", **PUBLISH_OUTCOME)
@one_job_per_vm("verify", point_vm)
def verify_restore_point(point_id: int, repository: BackupRepository | str) -> list[DiskVerdict]:
    """Raises VerificationFailed naming every bad disk; returns one verdict per disk when all are good.

    Args:
        point_id: The restore point's id (`vmferry points VM` lists them).
        repository: Saved BackupRepository block name (or a BackupRepository block) holding the restore points.
    """
    repo = load_block(BackupRepository, repository).repository()
    point = get_point(default_catalog(), point_id)
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
    return verdicts
