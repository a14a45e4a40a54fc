"""vSphere side effects the hub performs itself (the agent does the snapshotting in normal operation)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.vcenter import VCenter
from common.names import job_snapshot_name
from common.vsphere import VSphereClient, VSphereSnapshots
from vmferry.errors import retry_unless_permanent


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE, retry_condition_fn=retry_unless_permanent)
def remove_job_snapshots(vcenter: VCenter, vm_instance_uuid: str, job_id: str) -> list[str]:
    """The hub's own sweep of an agent job's snapshot, for when the agent died before removing it; returns the
    morefs removed."""
    with VSphereClient(vcenter.endpoint()) as client:
        return VSphereSnapshots(client, vm_instance_uuid).remove_snapshots_named(job_snapshot_name(job_id))
