"""Reconciler tasks: one sweep each (vmferry/reconcile.py does the work), plus the Prefect facts it judges by."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from uuid import UUID

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.sorting import FlowRunSort

from blocks.cloudstack import CloudStack
from blocks.vcenter import VCenter
from tasks.failover import roll_back_interrupted_failover
from vmferry.reconcile import Finding, FlowRunFacts, Reconciler
from vmferry.repository import Repository


def read_flow_run_facts(flow_run_ids: Sequence[str]) -> Mapping[str, FlowRunFacts]:
    """State and recorded process of each flow run the Prefect API knows; unknown ids are simply absent."""
    wanted = []
    for run_id in flow_run_ids:
        try:
            wanted.append(UUID(run_id))
        except ValueError:
            continue  # not a Prefect id: unknown, hence unverifiable
    facts: dict[str, FlowRunFacts] = {}
    if not wanted:
        return facts
    with get_client(sync_client=True) as client:
        for start in range(0, len(wanted), 200):  # the API's default page size
            chunk = wanted[start : start + 200]
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=chunk)),
                # this server refuses a filter without them (422 on limit=None, sort=None)
                sort=FlowRunSort.ID_DESC,
                limit=len(chunk),
            )
            for run in runs:
                facts[str(run.id)] = FlowRunFacts(
                    state_type=run.state.type.value if run.state else None,
                    state_name=run.state.name if run.state else None,
                    infrastructure_pid=run.infrastructure_pid,
                )
    return facts


# Sweeps are idempotent, so a retry after a lost connection only finishes the work.
@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def sweep_nbd_exports(reconciler: Reconciler) -> list[Finding]:
    return reconciler.sweep_exports()


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def sweep_job_resources(reconciler: Reconciler) -> list[Finding]:
    return reconciler.sweep_job_resources()


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def sweep_port_leases(reconciler: Reconciler) -> list[Finding]:
    return reconciler.sweep_leases()


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def sweep_restore_points(reconciler: Reconciler, repository: Repository | None) -> list[Finding]:
    return reconciler.sweep_restore_points(repository)


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def sweep_snapshots(reconciler: Reconciler, vcenter: VCenter) -> list[Finding]:
    return reconciler.sweep_snapshots(vcenter.endpoint())


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def sweep_hub_volumes(reconciler: Reconciler, cloudstack: CloudStack) -> list[Finding]:
    with cloudstack.client() as client:
        return [f for hub in cloudstack.hub_ids() for f in reconciler.sweep_hub_volumes(client, hub)]


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def sweep_failovers(reconciler: Reconciler, cloudstack: CloudStack) -> list[Finding]:
    return reconciler.sweep_failovers(partial(roll_back_interrupted_failover, cloudstack))


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def sweep_crashed_jobs(reconciler: Reconciler) -> list[Finding]:
    return reconciler.sweep_jobs()
