"""Rolling a test failover back: test VM gone, every volume detached (as between syncs), context ready again.

Idempotent by construction: every step looks at what CloudStack has now, so running it twice, or after a
failover that died halfway (its VM found by id in the catalog or by its deterministic name), ends in the
same clean state.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel

from blocks import load_block
from blocks.cloudstack import CloudStack
from catalog import default_catalog
from catalog.failovers import READY_FOR_FAILOVER, failovers_of, finish_failover, set_context_state
from catalog.inventory import find_vm
from catalog.replication import record_attachment, volumes_of_vm
from tasks.failover import destination_name, leave_volume_detached, remove_destination_vm
from tasks.jobs import close_job, open_job
from vmferry.hooks import ON_CANCELLATION, ON_CRASHED, ON_RUNNING


class CleanupResult(BaseModel):
    removed_vms: list[str]
    volumes_detached: list[str]


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
        candidates = {f.destination_vm_id for f in history if f.mode == "test" and f.destination_vm_id}
        with cloud.client() as client:
            name = destination_name(recorded, "test")
            candidates |= {v.id for v in client.list_vms(name=name) if v.name == name}
        removed = []
        for vm_id in sorted(candidates):
            remove_destination_vm(cloud, vm_id, ours)
            removed.append(vm_id)
        order = sorted(volumes)
        for vm_disk_id in order:
            volume = volumes[vm_disk_id]
            leave_volume_detached(cloud, volume.volume_id)
            record_attachment(catalog, volume.volume_id, vm_id=None, device_id=None, device_path=None, state="detached")
        for failover in history:
            if failover.mode == "test" and failover.state in ("in-progress", "active", "rolled-back"):
                finish_failover(catalog, failover.id, "cleaned-up", READY_FOR_FAILOVER)
        set_context_state(catalog, recorded.vm_context_id, READY_FOR_FAILOVER)
    except BaseException as exc:
        close_job(job_id, "failed", f"{type(exc).__name__}: {exc}")
        raise
    close_job(job_id, "succeeded")
    logger.info("removed test VM(s) %s; %d volumes left detached", removed, len(order))
    create_table_artifact(
        key=f"cleanup-vm-{recorded.vm_context_id}",
        table=[{"volume": volumes[i].volume_id, "catalog disk id": i, "attached": "no"} for i in order],
        description=f"Test failover of {recorded.name} rolled back",
    )
    return CleanupResult(removed_vms=removed, volumes_detached=[volumes[i].volume_id for i in order])
