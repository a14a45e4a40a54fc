"""File-level restore: reading a backed-up disk's filesystem through a private, read-only qemu-nbd.

Not retried: a listing fails the same way again, and an extraction that wrote some files would be refused on
them the second time (the operator runs it again with overwrite, or for the rest)."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from catalog import default_catalog
from catalog.restore_points import PointDiskView
from vmferry.filelevel import FileEntry, PartitionInfo, extract_file, list_files, list_partitions, open_image
from vmferry.ledger import JobLedger
from vmferry.repository import Repository


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
