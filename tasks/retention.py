"""Pruning one restore point: the catalog says so first, then its files go."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from catalog import default_catalog
from catalog.restore_points import PointView, mark_point
from vmferry.repository import Repository


@task(retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE, task_run_name="prune-point-{point.id}")
def prune_point(repository: Repository, point: PointView) -> None:
    """Mark the point pruned first (no longer restorable), then remove its files: safe to retry."""
    mark_point(default_catalog(), point.id, "pruning")
    directory = repository.point_dir(point.vm_context_id, point.id)
    if directory.exists():
        repository.remove_point(point.vm_context_id, point.id)
    mark_point(default_catalog(), point.id, "pruned")
