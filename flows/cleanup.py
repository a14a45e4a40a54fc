"""Rolling a test failover back: test VM gone, every volume detached (as between syncs), context ready again.

Idempotent by construction: every step looks at what CloudStack has now, so running it twice, or after a
failover that died halfway (its VM found by the id the catalog recorded when CloudStack allocated it), ends in
the same clean state. A live failover that never finished is rolled back too; one that finished is production.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel, computed_field

from blocks import load_block
from blocks.cloudstack import CloudStack
from catalog import default_catalog
from catalog.failovers import failovers_of
from catalog.inventory import find_vm
from catalog.replication import volumes_of_vm
from common import names
from common.names import artifact_key
from flows._job import job
from orchestration.hooks import ON_CANCELLATION, ON_CRASHED, ON_RUNNING
from orchestration.outcome import PUBLISH_OUTCOME
from orchestration.runs import one_job_per_vm
from tasks.failover import (
    destroy_destination_vm,
    detach_vm_volumes,
    find_volumes_held_elsewhere,
)
from tasks.records import record_cleanup
from vmferry.errors import Refused


class CleanupResult(BaseModel):
    removed_vms: list[str]  # test VMs this run destroyed
    volumes_returned: list[str]  # volumes this run took off a test VM (left detached)
    volumes_detached: list[str]  # every volume of the VM, detached now (as they rest between syncs)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def did_anything(self) -> bool:
        return bool(self.removed_vms or self.volumes_returned)


class CleanupRefused(Refused):
    """Cleanup would undo something it must not (a live failover in production)."""


@flow(
    name="cleanup-failover",
    flow_run_name=names.CLEANUP_RUN,
    on_running=ON_RUNNING,
    on_crashed=ON_CRASHED,
    on_cancellation=ON_CANCELLATION,
    **PUBLISH_OUTCOME,
)
@one_job_per_vm("cleanup")
def cleanup_failover(vm: str, cloudstack: CloudStack | str) -> CleanupResult:
    """Roll a test failover of ``vm`` back (the test VM removed, the volumes left detached).

    Args:
        vm: The VM: its name in vCenter, its instance UUID or its moref (vm-123).
        cloudstack: Saved CloudStack block name (or a CloudStack block) of the destination zone and its hub VM.
    """
    logger = get_run_logger()
    cloud = load_block(CloudStack, cloudstack)
    catalog = default_catalog()
    recorded = find_vm(catalog, vm)
    history = failovers_of(catalog, recorded.vm_context_id)
    for live in (f for f in history if f.mode == "live" and f.state in ("active", "committed")):
        fix = "it was committed" if live.state == "committed" else f"commit or revert it (`vmferry revert {vm} --yes`)"
        raise CleanupRefused(
            f"VM {recorded.name!r} was failed over live (failover {live.id}): its CloudStack VM "
            f"{live.destination_vm_id} is production now and cleanup only rolls back test failovers; {fix}"
        )
    with job("cleanup", recorded.vm_context_id):
        volumes = {v.vm_disk_id: v for v in volumes_of_vm(catalog, recorded.vm_context_id)}
        ours = [v.volume_id for v in volumes.values()]
        # A test failover's VM, and that of a failover of either mode that never finished (its process killed):
        # by the id recorded the moment CloudStack allocated it, never by its name.
        unfinished = [f for f in history if f.state == "in-progress"]
        candidates = {
            f.destination_vm_id for f in history if (f.mode == "test" or f in unfinished) and f.destination_vm_id
        }
        held = find_volumes_held_elsewhere(cloud, ours)  # before the test VM goes: removing it takes them off too
        removed = [vm_id for vm_id in sorted(candidates) if destroy_destination_vm(cloud, vm_id, ours)]
        detached, moved = detach_vm_volumes(cloud, volumes)
        returned = sorted(set(held) | set(moved))
        record_cleanup(
            recorded.vm_context_id,
            [
                f.id
                for f in history
                if f.state == "in-progress" or (f.mode == "test" and f.state in ("active", "rolled-back"))
            ],
        )
    result = CleanupResult(removed_vms=removed, volumes_returned=returned, volumes_detached=detached)
    if not result.did_anything:
        logger.info("%s: nothing to clean up (no test VM, every volume detached)", recorded.name)
        return result
    logger.info("removed test VM(s) %s; took %d volume(s) off the test VM", removed, len(returned))
    create_table_artifact(
        key=artifact_key("cleanup", recorded.name),
        table=[{"removed": "test VM", "id": vm_id} for vm_id in removed]
        + [{"removed": "volume taken off the test VM (left detached)", "id": v} for v in returned],
        description=f"Test failover of {recorded.name} rolled back",
    )
    return result
