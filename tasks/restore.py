"""Restore tasks: a backed-up disk into a file; file-level restore, reading a disk's filesystem through a private,
read-only qemu-nbd.

Not retried: a disk's conversion or a listing fails the same way again, and an extraction that wrote some files
would be refused on them the second time (the operator runs it again with overwrite, or for the rest)."""

from __future__ import annotations

import os
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from catalog import default_catalog
from catalog.restore_points import PointDiskView
from clients.qemu import convert_image
from vmferry.errors import Refused
from vmferry.filelevel import FileEntry, PartitionInfo, extract_file, list_files, list_partitions, open_image
from vmferry.ledger import JobLedger
from vmferry.repository import Repository


class RestoreError(Refused):
    """A restore was refused; the message names the point, the disk and the reason."""


class RestoredDisk(BaseModel):
    disk_id: str
    vm_disk_id: int
    path: Path


def _create_exclusively(path: Path) -> None:
    """Create ``path`` empty, failing when anything (a file, a link) is there: only then is it ours to write."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
    except FileExistsError as exc:
        raise RestoreError(
            f"{path} already exists (a link or file this restore did not create); nothing was written: remove it, "
            "or run the reconciler if an interrupted restore left it"
        ) from exc


@task(cache_policy=NO_CACHE, task_run_name="restore-{disk.disk_id}")
def restore_disk_file(
    repository: Repository, disk: PointDiskView, destination: Path, image_format: str, overwrite: bool, job_id: str
) -> RestoredDisk:
    if destination.exists() and not overwrite:
        raise RestoreError(f"{destination} exists; pass overwrite=True to replace it")
    ledger = JobLedger(default_catalog(), job_id)
    partial = destination.with_name(destination.name + ".partial")
    resource = ledger.planned_file(partial)
    _create_exclusively(partial)
    try:
        convert_image(repository.absolute(disk.file_path), partial, output_format=image_format)
        os.chmod(partial, 0o600)
        os.replace(partial, destination)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        if not partial.exists():
            ledger.removed(resource)
    return RestoredDisk(disk_id=disk.disk_id, vm_disk_id=disk.vm_disk_id, path=destination)


@task(cache_policy=NO_CACHE, task_run_name="list-files-{disk.disk_id}")
def list_disk_files(
    repository: Repository, disk: PointDiskView, partition: int | None, path: str, job_id: str
) -> tuple[list[PartitionInfo], list[FileEntry]]:
    """The disk's partitions, and the entries of ``path`` in ``partition`` (none when no partition is given)."""
    ledger = JobLedger(default_catalog(), job_id)
    with open_image(repository.absolute(disk.file_path), ledger=ledger) as image:
        partitions = list_partitions(image)
        entries = list_files(image, partition, path) if partition is not None else []
    return partitions, entries


@task(cache_policy=NO_CACHE, task_run_name="extract-files-{disk.disk_id}")
def extract_disk_files(
    repository: Repository,
    disk: PointDiskView,
    partition: int,
    paths: list[str],
    destination: Path,
    overwrite: bool,
    job_id: str,
) -> list[Path]:
    """Each of ``paths`` of the disk's filesystem in ``partition`` into ``destination``; the files written."""
    ledger = JobLedger(default_catalog(), job_id)
    with open_image(repository.absolute(disk.file_path), ledger=ledger) as image:
        return [extract_file(image, partition, path, destination, overwrite=overwrite, ledger=ledger) for path in paths]
