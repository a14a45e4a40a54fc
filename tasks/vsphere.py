"""vSphere side effects the hub performs itself (the agent does the snapshotting in normal operation)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.vcenter import VCenter
from clients.vsphere import VSphereClient, VSphereSnapshots
from vmferry.errors import retry_unless_permanent


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE, retry_condition_fn=retry_unless_permanent)
def remove_job_snapshots(vcenter: VCenter, vm_instance_uuid: str, snapshot_name: str) -> list[str]:
    """The hub's own sweep of an agent job's snapshot, for when the agent died before removing it."""
    return remove_snapshots_named(vcenter, vm_instance_uuid, snapshot_name)


def remove_snapshots_named(vcenter: VCenter, vm_instance_uuid: str, snapshot_name: str) -> list[str]:
    """Remove the VM's snapshots called ``snapshot_name``; their names. Plain, for a copy's compensation."""
    with VSphereClient(vcenter.endpoint()) as client:
        vm = VSphereSnapshots(client, vm_instance_uuid)
        removed = []
        for info in vm.snapshots():
            if info.name == snapshot_name:
                vm.remove_snapshot(info.moref)
                removed.append(info.name)
        return removed
