"""Pruning restore points by a retention policy without ever breaking a chain."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks import load_block
from blocks.repository import BackupRepository
from catalog import default_catalog
from catalog.inventory import find_vm
from catalog.restore_points import PointView, committed_points, mark_point
from common import names
from orchestration.outcome import PUBLISH_OUTCOME
from orchestration.runs import one_job_per_vm
from vmferry.repository import Repository
from vmferry.retention import RetentionPolicy, points_to_keep


@task(retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE, task_run_name="prune-point-{point.id}")
def prune_point(repository: Repository, point: PointView) -> None:
    """Mark the point pruned first (no longer restorable), then remove its files: safe to retry."""
    mark_point(default_catalog(), point.id, "pruning")
    directory = repository.point_dir(point.vm_context_id, point.id)
    if directory.exists():
        repository.remove_point(point.vm_context_id, point.id)
    mark_point(default_catalog(), point.id, "pruned")


@flow(name="prune-restore-points", flow_run_name=names.PRUNE_RUN, **PUBLISH_OUTCOME)
@one_job_per_vm("prune")
def prune_restore_points(
    vm: str, repository: BackupRepository | str, policy: RetentionPolicy | None = None
) -> list[int]:
    """Apply ``policy`` to one VM's points in ``repository``; returns the ids of the pruned points.

    Args:
        vm: The VM: its name in vCenter, its instance UUID or its moref (vm-123).
        repository: Saved BackupRepository block name (or a BackupRepository block) holding the restore points.
        policy: How many points to keep: the last N, N daily, N weekly; a chain is never broken.
            Empty: the defaults.
    """
    repo = load_block(BackupRepository, repository).repository()
    rules = policy or RetentionPolicy()
    context = find_vm(default_catalog(), vm)
    points = committed_points(default_catalog(), context.vm_context_id, repo.name)
    keep = points_to_keep(points, rules)
    doomed = [p for p in points if p.id not in keep]
    for point in doomed:
        prune_point(repo, point)
    get_run_logger().info("kept points %s, pruned %s", sorted(keep), [p.id for p in doomed])
    return [p.id for p in doomed]
