"""Prefect's own objects a flow changes: the schedules of a VM's deployments."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName

from catalog.inventory import RecordedVM


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def pause_replication_schedules(recorded: RecordedVM) -> list[str]:
    """Pause the deployments of replicate-vm that name this VM alone: its schedules must not fire any more.

    A deployment for several VMs is left alone; replication refuses a migrated VM anyway. Safe to retry: a
    paused deployment is not paused again (a retry reports only what it paused itself)."""
    handles = {recorded.name, recorded.instance_uuid, recorded.moref}
    paused = []
    with get_client(sync_client=True) as client:
        deployments = client.read_deployments(flow_filter=FlowFilter(name=FlowFilterName(any_=["replicate-vm"])))
        for deployment in deployments:
            if (deployment.parameters or {}).get("vm") in handles and not deployment.paused:
                client.pause_deployment(deployment.id)
                paused.append(f"replicate-vm/{deployment.name}")
    return paused
