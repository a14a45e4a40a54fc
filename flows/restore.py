"""Restores from any restore point of a chain: a whole VM or one disk to raw/qcow2 files, or single files.

Nothing half-written is presented as restored: every output is written under a temporary name and renamed
when complete. Destinations are what the operator names; nothing here builds a path from a VM or disk name.
Every restore is a job: its temporary outputs, work directories and qemu-nbd are in the catalog's ledger before
they exist, so a killed restore leaves nothing the reconciler does not remove.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

from prefect import flow
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel

from blocks import load_block
from blocks.repository import BackupRepository
from catalog import default_catalog
from catalog.inventory import get_vm
from catalog.restore_points import PointView, get_point
from common.names import artifact_key
from flows._job import job
from orchestration.hooks import ON_CANCELLATION, ON_CRASHED, ON_RUNNING
from orchestration.outcome import PUBLISH_OUTCOME
from tasks.restore import RestoredDisk, RestoreError, extract_disk_files, list_disk_files, restore_disk_file
from vmferry.filelevel import (
    FileEntry,
    FileRestoreError,
    PartitionInfo,
)
from vmferry.repository import Repository

T = TypeVar("T")


def _restorable_point(point_id: int, repository: Repository) -> PointView:
    point = get_point(default_catalog(), point_id)
    vm = get_vm(default_catalog(), point.vm_context_id).name
    if point.state != "committed":
        raise RestoreError(
            f"restore point {point_id} of VM {vm!r} is {point.state}, not committed: it cannot be restored; pick a "
            f"committed point (vmferry points {vm} lists them)"
        )
    if point.repository != repository.name:
        # Paths inside a repository repeat from one to the next: another repository may hold a different file there.
        raise RestoreError(
            f"restore point {point_id} of VM {vm!r} is in repository {point.repository!r}, not {repository.name!r}: "
            "pass the BackupRepository block of that repository"
        )
    return point


def writable_directory(directory: Path) -> Path:
    """``directory``, created if missing, once a file could be written in it: refused before any work, not
    after minutes of copying (a read-only mount or a permission passes ``os.access`` checks wrongly)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".vmferry-write-test-"):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise RestoreError(
            f"cannot write into {directory} ({reason}): restore into a directory this hub can write"
        ) from exc
    return directory


def _run_as_job(point_id: int, repository: Repository, work: Callable[[PointView, str], T]) -> T:
    """Open a restore job for a committed point of ``repository``, run ``work`` and close the job."""
    point = _restorable_point(point_id, repository)
    with job("restore", point.vm_context_id) as job_id:
        return work(point, job_id)


@flow(
    name="restore-disk",
    on_running=ON_RUNNING,
    on_crashed=ON_CRASHED,
    on_cancellation=ON_CANCELLATION,
    **PUBLISH_OUTCOME,
)
def restore_disk(
    point_id: int,
    disk: str,
    destination: str,
    repository: BackupRepository | str,
    image_format: Literal["raw", "qcow2"] = "raw",
    overwrite: bool = False,
) -> RestoredDisk:
    """One disk (``disk-2000`` style id or catalog id) of a restore point into the file ``destination``.

    Args:
        point_id: The restore point's id (`vmferry points VM` lists them).
        disk: The disk: its id in the point (disk-2000) or its catalog disk id.
        destination: The file to write the disk into, on the host the flow runs on.
        repository: Saved BackupRepository block name (or a BackupRepository block) holding the restore points.
        image_format: raw (any hypervisor) or qcow2 (sparse, smaller).
        overwrite: Replace files that exist at the destination; off: an existing file is refused and left alone.
    """
    repo = load_block(BackupRepository, repository).repository()

    def work(point: PointView, job_id: str) -> RestoredDisk:
        writable_directory(Path(destination).parent)
        return restore_disk_file(repo, point.disk(disk), Path(destination), image_format, overwrite, job_id)

    return _run_as_job(point_id, repo, work)


@flow(
    name="restore-vm",
    on_running=ON_RUNNING,
    on_crashed=ON_CRASHED,
    on_cancellation=ON_CANCELLATION,
    **PUBLISH_OUTCOME,
)
def restore_vm(
    point_id: int,
    destination_dir: str,
    repository: BackupRepository | str,
    image_format: Literal["raw", "qcow2"] = "raw",
    overwrite: bool = False,
) -> list[RestoredDisk]:
    """Every disk of a restore point into ``destination_dir/<disk id>.<raw|qcow2>``.

    Args:
        point_id: The restore point's id (`vmferry points VM` lists them).
        destination_dir: The directory to write one file per disk into, on the host the flow runs on.
        repository: Saved BackupRepository block name (or a BackupRepository block) holding the restore points.
        image_format: raw (any hypervisor) or qcow2 (sparse, smaller).
        overwrite: Replace files that exist at the destination; off: an existing file is refused and left alone.
    """
    repo = load_block(BackupRepository, repository).repository()
    directory = Path(destination_dir)

    def work(point: PointView, job_id: str) -> list[RestoredDisk]:
        writable_directory(directory)  # refused before any copy, once the point is known to be readable here
        return [
            restore_disk_file(repo, d, directory / f"{d.disk_id}.{image_format}", image_format, overwrite, job_id)
            for d in point.disks
        ]

    restored = _run_as_job(point_id, repo, work)
    create_table_artifact(
        key=artifact_key(
            "restore", get_vm(default_catalog(), get_point(default_catalog(), point_id).vm_context_id).name
        ),
        table=[{"disk": r.disk_id, "catalog id": r.vm_disk_id, "file": str(r.path)} for r in restored],
        description=f"Disks of restore point {point_id} restored to {directory}",
    )
    return restored


class FileListing(BaseModel):
    partitions: list[PartitionInfo]
    entries: list[FileEntry]


@flow(
    name="list-backup-files",
    on_running=ON_RUNNING,
    on_crashed=ON_CRASHED,
    on_cancellation=ON_CANCELLATION,
    **PUBLISH_OUTCOME,
)
def list_backup_files(
    point_id: int, disk: str, repository: BackupRepository | str, partition: int | None = None, path: str = "/"
) -> FileListing:
    """Partitions of a backed-up disk, and the entries of ``path`` in one of them.

    Args:
        point_id: The restore point's id (`vmferry points VM` lists them).
        disk: The disk: its id in the point (disk-2000) or its catalog disk id.
        repository: Saved BackupRepository block name (or a BackupRepository block) holding the restore points.
        partition: The partition number to list files of; empty: list the partitions only.
        path: The directory to list inside the partition.
    """
    repo = load_block(BackupRepository, repository).repository()

    def work(point: PointView, job_id: str) -> FileListing:
        partitions, entries = list_disk_files(repo, point.disk(disk), partition, path, job_id)
        return FileListing(partitions=partitions, entries=entries)

    return _run_as_job(point_id, repo, work)


@flow(
    name="restore-files",
    on_running=ON_RUNNING,
    on_crashed=ON_CRASHED,
    on_cancellation=ON_CANCELLATION,
    **PUBLISH_OUTCOME,
)
def restore_files(
    point_id: int,
    disk: str,
    partition: int,
    paths: list[str],
    destination_dir: str,
    repository: BackupRepository | str,
    overwrite: bool = False,
) -> list[Path]:
    """Single files out of a backed-up disk's filesystem (ext or FAT): no root, no kernel NBD device.

    Args:
        point_id: The restore point's id (`vmferry points VM` lists them).
        disk: The disk: its id in the point (disk-2000) or its catalog disk id.
        partition: The partition number holding the files (list-backup-files shows them).
        paths: Absolute paths of the files inside that filesystem.
        destination_dir: The directory to write the files into, on the host the flow runs on.
        repository: Saved BackupRepository block name (or a BackupRepository block) holding the restore points.
        overwrite: Replace files that exist at the destination; off: an existing file is refused and left alone.
    """
    repo = load_block(BackupRepository, repository).repository()
    destination = Path(destination_dir)

    def work(point: PointView, job_id: str) -> list[Path]:
        writable_directory(destination)  # refused before any extraction, once the point is known to be readable here
        entry = point.disk(disk)
        try:
            return extract_disk_files(repo, entry, partition, paths, destination, overwrite, job_id)
        except FileRestoreError as exc:
            raise type(exc)(f"restore point {point_id} disk {entry.disk_id} partition {partition}: {exc}") from exc

    return _run_as_job(point_id, repo, work)
