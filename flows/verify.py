"""Verifying restore points: every file passes ``qemu-img check`` and still reads as its stored checksum."""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from blocks import load_block
from blocks.repository import BackupRepository
from catalog import default_catalog
from catalog.restore_points import PointDiskView, get_point
from clients.qemu import QemuError, check_image, content_sha256
from vmferry.errors import VmferryError
from vmferry.outcome import PUBLISH_OUTCOME
from vmferry.repository import Repository


class DiskVerdict(BaseModel):
    disk_id: str
    file_path: str
    ok: bool
    problem: str | None = None


class VerificationFailed(VmferryError):
    """A restore point does not read back as it was written."""


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


@flow(name="verify-restore-point", **PUBLISH_OUTCOME)
def verify_restore_point(point_id: int, repository: BackupRepository | str) -> list[DiskVerdict]:
    """Raises VerificationFailed naming every bad disk; returns one verdict per disk when all are good."""
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
        key=f"verify-point-{point_id}",
        table=[v.model_dump() for v in verdicts],
        description=f"Verification of restore point {point_id}",
    )
    bad = [v for v in verdicts if not v.ok]
    if bad:
        raise VerificationFailed(
            f"restore point {point_id}: " + "; ".join(f"{v.disk_id} ({v.file_path}): {v.problem}" for v in bad)
        )
    return verdicts
