"""Pruning restore points by a retention policy without ever breaking a chain."""

from __future__ import annotations

from prefect import flow, get_run_logger

from blocks import load_block
from blocks.repository import BackupRepository
from catalog import default_catalog
from catalog.inventory import find_vm
from catalog.restore_points import committed_points
from common import names
from orchestration.outcome import PUBLISH_OUTCOME
from orchestration.runs import one_job_per_vm
from tasks.retention import prune_point
from vmferry.retention import RetentionPolicy, points_to_keep


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
