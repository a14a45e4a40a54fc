"""Rolling a test failover back: test VM gone, every volume back on the hub in order, context ready again.

Idempotent by construction: every step looks at what CloudStack has now, so running it twice, or after a
failover that died halfway (its VM found by the id the catalog recorded when CloudStack allocated it), ends in
the same clean state. A live failover that never finished is rolled back too; one that finished is production.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel

from blocks import load_block
from blocks.cloudstack import CloudStack
from catalog import default_catalog
from catalog.failovers import context_after_rollback, failovers_of, finish_failover, set_context_state
from catalog.inventory import find_vm
from catalog.replication import volumes_of_vm
from tasks.failover import remove_destination_vm, return_volumes_to_hub
from tasks.jobs import close_job, open_job
from vmferry.hooks import ON_CANCELLATION, ON_CRASHED, ON_RUNNING


class CleanupResult(BaseModel):
    removed_vms: list[str]
    volumes_on_hub: list[str]


class CleanupRefused(Exception):
    """Cleanup would undo something it must not (a live failover in production)."""


@flow(name="cleanup-failover", on_running=ON_RUNNING, on_crashed=ON_CRASHED, on_cancellation=ON_CANCELLATION)
def cleanup_failover(vm: str, cloudstack: CloudStack | str) -> CleanupResult:
    logger = get_run_logger()
    cloud = load_block(CloudStack, cloudstack)
    catalog = default_catalog()
    recorded = find_vm(catalog, vm)
    history = failovers_of(catalog, recorded.vm_context_id)
    if any(f.mode == "live" and f.state == "active" for f in history):
        raise CleanupRefused(
            f"VM {recorded.name!r} was failed over live: its CloudStack VM is production now; cleanup only rolls back "
            "test failovers"
        )
    job_id = open_job("cleanup", recorded.vm_context_id)
    try:
        volumes = {v.vm_disk_id: v for v in volumes_of_vm(catalog, recorded.vm_context_id)}
        ours = [v.volume_id for v in volumes.values()]
        # A test failover's VM, and that of a failover of either mode that never finished (its process killed):
        # by the id recorded the moment CloudStack allocated it, never by its name.
        unfinished = [f for f in history if f.state == "in-progress"]
        candidates = {
            f.destination_vm_id for f in history if (f.mode == "test" or f in unfinished) and f.destination_vm_id
        }
        removed = []
        for vm_id in sorted(candidates):
            remove_destination_vm(cloud, vm_id, ours)
            removed.append(vm_id)
        on_hub = return_volumes_to_hub(cloud, recorded, volumes)
        # a live failover that powered the source off and never finished leaves the VM running nowhere
        after = context_after_rollback(catalog, recorded.vm_context_id)
        for failover in history:
            if failover.state == "in-progress" or (
                failover.mode == "test" and failover.state in ("active", "rolled-back")
            ):
                finish_failover(catalog, failover.id, "cleaned-up", after)
        set_context_state(catalog, recorded.vm_context_id, after)
    except BaseException as exc:
        close_job(job_id, "failed", f"{type(exc).__name__}: {exc}")
        raise
    close_job(job_id, "succeeded")
    logger.info("removed test VM(s) %s; %d volumes back on the hub", removed, len(on_hub))
    by_volume = {v.volume_id: i for i, v in volumes.items()}
    create_table_artifact(
        key=f"cleanup-vm-{recorded.vm_context_id}",
        table=[{"volume": v, "catalog disk id": by_volume[v], "on hub": "yes"} for v in on_hub],
        description=f"Test failover of {recorded.name} rolled back",
    )
    return CleanupResult(removed_vms=removed, volumes_on_hub=on_hub)
