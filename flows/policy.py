"""A protection policy's run: select its VMs from vCenter now, start one per-VM run for each, report them.

The per-VM runs are runs of the per-VM deployments (``backup-vm/on-demand``, ...) on the workers, each under
the concurrency limits its flow holds (one job per VM, the repository's and the vCenter's slots), so a policy
of a thousand VMs is one deployment per action, paced by the limits rather than by its schedule.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from pydantic import BaseModel

from blocks import load_block
from blocks.vcenter import VCenter
from common.inventory import ObservedVM
from common.names import POLICY_RUN, artifact_key, policy_run_key
from orchestration.outcome import PUBLISH_OUTCOME
from orchestration.runs import table_rows
from tasks.discovery import read_tagged_vms, read_vcenter_inventory, read_vm_folders
from vmferry.policies import PER_VM_FLOWS, VMSelector, select_vms
from vmferry.retention import RetentionPolicy


class PolicyVMRun(BaseModel):
    vm: str
    instance_uuid: str
    flow_run: str
    flow_run_id: str
    state: str | None = None


class PolicyRunsFailed(Exception):
    """Some per-VM runs of a policy did not complete; the message names the VMs and their states."""


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE, task_run_name="start-{deployment}-{vm.name}")
def start_vm_run(deployment: str, vm: ObservedVM, parameters: dict[str, Any], policy: str) -> PolicyVMRun:
    """Safe to retry: the idempotency key (this policy run and the VM) makes the server return the same run."""
    from prefect.deployments import run_deployment

    run = run_deployment(
        deployment,
        parameters=parameters,
        timeout=0,
        tags=[f"policy:{policy}"],
        idempotency_key=policy_run_key(flow_run.get_id(), vm.instance_uuid),
    )
    return PolicyVMRun(vm=vm.name, instance_uuid=vm.instance_uuid, flow_run=run.name, flow_run_id=str(run.id))


@task(cache_policy=NO_CACHE)
def wait_for_vm_runs(runs: list[PolicyVMRun], poll_seconds: float = 5) -> list[PolicyVMRun]:
    from uuid import UUID

    from prefect.client.orchestration import get_client

    pending = {run.flow_run_id: run for run in runs}
    done: dict[str, PolicyVMRun] = {}
    with get_client(sync_client=True) as client:
        while pending:
            for run_id, run in list(pending.items()):
                state = client.read_flow_run(UUID(run_id)).state
                if state is not None and state.is_final():
                    done[run_id] = run.model_copy(update={"state": state.name})
                    del pending[run_id]
            if pending:
                time.sleep(poll_seconds)
    return [done[run.flow_run_id] for run in runs]


@flow(name="protect-policy", flow_run_name=POLICY_RUN, **PUBLISH_OUTCOME)
def protect_policy(
    policy: str,
    action: Literal["backup", "replicate", "prune"],
    vms: VMSelector,
    vcenter: VCenter | str = "prod",
    kind: str | None = None,
    retention: RetentionPolicy | None = None,
    parameters: dict[str, Any] | None = None,
    per_vm_deployment: str = "on-demand",
    wait: bool = True,
) -> list[PolicyVMRun]:
    """Run ``action`` for every VM of the policy, one per-VM run each, and report how each ended.

    Args:
        policy: The policy's name (deployments/policies.yaml); it tags every per-VM run ``policy:<name>``.
        action: backup, replicate or prune: the per-VM deployment started for each VM.
        vms: Which VMs: names (or instance UUIDs), name patterns (db*), vCenter folders (/DC0/vm/prod), vSphere
            tags (category and tag name).
        vcenter: Saved VCenter block name (or a VCenter block) the VMs are selected from.
        kind: The per-VM runs' kind (backup: full, incremental or auto; replicate: initial, incremental or auto);
            empty: the per-VM deployment's own.
        retention: What pruning keeps (prune only); empty: the per-VM deployment's own.
        parameters: More parameters of every per-VM run (a repository or cloudstack block name, ...).
        per_vm_deployment: The name of the per-VM deployments to start (``backup-vm/<this>``).
        wait: Wait until every per-VM run ended and fail when one did not complete; off: start them and return.
    """
    logger = get_run_logger()
    vcenter_block = load_block(VCenter, vcenter)
    inventory = read_vcenter_inventory(vcenter_block)
    folders = read_vm_folders(vcenter_block) if vms.folders else {}
    tagged = read_tagged_vms(vcenter_block, vms.tags) if vms.tags else []
    selected = select_vms(vms, inventory, folders, tagged)
    if not selected:
        logger.warning("policy %s selects no VM of vCenter %s: nothing to %s", policy, vcenter_block.host, action)
        return []
    names = [vm.name for vm in inventory]
    deployment = f"{PER_VM_FLOWS[action]}/{per_vm_deployment}"
    common = dict(parameters or {})
    if kind is not None and action != "prune":
        common["kind"] = kind
    if retention is not None and action == "prune":
        common["policy"] = retention.model_dump()
    logger.info("policy %s: %s of %d VM(s): %s", policy, action, len(selected), ", ".join(vm.name for vm in selected))
    runs = [
        # by name when the name is unique in vCenter (run names then say it), else by instance UUID
        start_vm_run(
            deployment, vm, {**common, "vm": vm.name if names.count(vm.name) == 1 else vm.instance_uuid}, policy
        )
        for vm in selected
    ]
    if not wait:
        return runs
    runs = wait_for_vm_runs(runs)
    create_table_artifact(
        key=artifact_key(f"policy-{action}", policy),
        table=table_rows(runs, {"flow_run": "run", "flow_run_id": "run id"}),
        description=f"Policy {policy}: {action} of {len(runs)} VM(s) through {deployment}",
    )
    bad = [run for run in runs if run.state != "Completed"]
    if bad:
        raise PolicyRunsFailed(
            f"policy {policy}: {action} did not complete for "
            + ", ".join(f"{run.vm} (run {run.flow_run}: {run.state})" for run in bad)
        )
    return runs
