"""vSphere side effects the hub performs itself (the agent does the snapshotting in normal operation)."""

from __future__ import annotations

from blocks.vcenter import VCenter
from common.names import job_snapshot_name
from common.vsphere import VSphereClient, VSphereSnapshots


def remove_job_snapshots(vcenter: VCenter, vm_instance_uuid: str, job_id: str) -> list[str]:
    """The hub's own sweep of an agent job's snapshot, for when the agent died before removing it; returns the
    morefs removed. Plain, not a task: it runs in a copy's compensation, when the flow run may no longer be
    Running and Prefect would refuse to start a task."""
    with VSphereClient(vcenter.endpoint()) as client:
        return VSphereSnapshots(client, vm_instance_uuid).remove_snapshots_named(job_snapshot_name(job_id))
