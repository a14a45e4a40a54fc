"""The two ways on from a live failover (flows/failover.py leaves it ``active``: the VM runs in CloudStack, its
source is powered off, nothing else changes until an operator decides):

- **commit**: the VM lives in CloudStack now. Its volumes are recorded as the destination VM's (no cleanup or
  reconcile moves them back to the hub), replication refuses it and its per-VM replication schedules are
  paused. The failover ends ``committed`` and the VM ``migrated``.
- **revert**: back to VMware. The destination VM is destroyed (what it wrote since the failover is discarded,
  hence the confirmation), every volume goes back on the hub for replication (its next sync compares every
  block: the destination VM wrote to it), then the source is powered on. The failover ends ``reverted`` and the
  VM is ready for failover again.

Both read what CloudStack has now, so a run that failed halfway can simply be run again.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel

from blocks import load_block
from blocks.cloudstack import CloudStack
from blocks.vcenter import VCenter
from catalog import default_catalog
from catalog.failovers import MIGRATED, READY_FOR_FAILOVER, FailoverView, latest_failover
from catalog.inventory import RecordedVM, find_vm
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
    power_on_source,
    read_back_devices,
)
from tasks.records import close_failover, record_volume_owner
from tasks.schedules import pause_replication_schedules
from vmferry.errors import Refused


class LiveFailoverStateRefused(Refused):
    """The VM has no active live failover to commit or revert (or it was committed already)."""


class CommitResult(BaseModel):
    vm: str
    failover_id: int
    destination_vm_id: str
    volumes: list[str]  # now recorded as the destination VM's
    paused_deployments: list[str]  # per-VM replication deployments whose schedules were paused


class RevertResult(BaseModel):
    vm: str
    failover_id: int
    removed_vm: str | None  # the destination VM this run destroyed (None: it was gone already)
    volumes_detached: list[str]
    source: str  # "powered on" or "already on"


def active_live_failover(recorded: RecordedVM, action: str) -> FailoverView:
    latest = latest_failover(default_catalog(), recorded.vm_context_id)
    if latest is not None and latest.mode == "live" and latest.state == "active" and latest.destination_vm_id:
        return latest
    if latest is not None and latest.mode == "live" and latest.state == "committed":
        raise LiveFailoverStateRefused(
            f"VM {recorded.name!r} was committed to CloudStack VM {latest.destination_vm_id} (failover {latest.id}): "
            f"there is nothing to {action}"
        )
    found = f"its latest failover is {latest.mode} and {latest.state}" if latest else "it was never failed over"
    raise LiveFailoverStateRefused(
        f"VM {recorded.name!r} has no active live failover to {action} ({found}): "
        f"`vmferry failover {recorded.name} --mode live --yes` first"
    )


def _state_artifact(recorded: RecordedVM, title: str, lines: list[str]) -> None:
    create_markdown_artifact(
        key=artifact_key("live-failover", recorded.name),
        markdown=f"## {title}\n\n" + "\n".join(f"- {line}" for line in lines),
        description=f"Live failover state of {recorded.name}",
    )


@flow(
    name="commit-failover",
    flow_run_name=names.COMMIT_RUN,
    on_running=ON_RUNNING,
    on_crashed=ON_CRASHED,
    on_cancellation=ON_CANCELLATION,
    **PUBLISH_OUTCOME,
)
@one_job_per_vm("commit")
def commit_failover(vm: str, cloudstack: CloudStack | str) -> CommitResult:
    """Make an active live failover final: the VM lives in CloudStack, its replication stops.

    Args:
        vm: The VM failed over live (name, instance UUID or moref).
        cloudstack: The CloudStack block the VM was failed over into.
    """
    logger = get_run_logger()
    cloud = load_block(CloudStack, cloudstack)
    catalog = default_catalog()
    recorded = find_vm(catalog, vm)
    failover = active_live_failover(recorded, "commit")
    destination = failover.destination_vm_id
    assert destination is not None  # active_live_failover checked it
    with job("commit", recorded.vm_context_id):
        ours = {v.id: v for v in volumes_of_vm(catalog, recorded.vm_context_id)}
        on_destination = read_back_devices(cloud, destination)  # volume id -> (device id, type)
        missing = [ours[f.replicated_volume_id].volume_id for f in failover.volumes]
        missing = [volume_id for volume_id in missing if volume_id not in on_destination]
        if missing:
            raise LiveFailoverStateRefused(
                f"VM {recorded.name!r}: volume(s) {missing} are no longer on CloudStack VM {destination}; "
                "nothing was committed: put them back or revert the failover"
            )
        committed = []
        for planned in failover.volumes:
            volume_id = ours[planned.replicated_volume_id].volume_id
            record_volume_owner(volume_id, destination, on_destination[volume_id][0])
            committed.append(volume_id)
        close_failover(failover.id, "committed", MIGRATED)
        paused = pause_replication_schedules(recorded)
    logger.info("%s committed to CloudStack VM %s; paused %s", recorded.name, destination, paused or "no schedules")
    _state_artifact(
        recorded,
        f"{recorded.name}: migrated to CloudStack VM {destination}",
        [
            f"failover {failover.id} committed: the VM lives in CloudStack, its VMware source stays powered off",
            f"volumes {', '.join(committed)} belong to CloudStack VM {destination}",
            "replication refuses this VM; paused schedules: " + (", ".join(paused) or "none"),
        ],
    )
    return CommitResult(
        vm=recorded.name,
        failover_id=failover.id,
        destination_vm_id=destination,
        volumes=committed,
        paused_deployments=paused,
    )


@flow(
    name="revert-failover",
    flow_run_name=names.REVERT_RUN,
    on_running=ON_RUNNING,
    on_crashed=ON_CRASHED,
    on_cancellation=ON_CANCELLATION,
    **PUBLISH_OUTCOME,
)
@one_job_per_vm("revert")
def revert_failover(
    vm: str, cloudstack: CloudStack | str, vcenter: VCenter | str, confirm_revert: bool = False
) -> RevertResult:
    """Undo an active live failover: destination VM destroyed (what it wrote since is discarded: confirm with
    ``confirm_revert``), volumes back on the hub for replication, source powered on.

    Args:
        vm: The VM failed over live (name, instance UUID or moref).
        cloudstack: The CloudStack block the VM was failed over into.
        vcenter: The VCenter block of the source VM, which is powered on again.
        confirm_revert: Must be true: the CloudStack VM is destroyed and what it wrote since the failover is lost.
    """
    logger = get_run_logger()
    cloud = load_block(CloudStack, cloudstack)
    vcenter_block = load_block(VCenter, vcenter)
    catalog = default_catalog()
    recorded = find_vm(catalog, vm)
    failover = active_live_failover(recorded, "revert")
    destination = failover.destination_vm_id
    assert destination is not None  # active_live_failover checked it
    if not confirm_revert:
        raise LiveFailoverStateRefused(
            f"reverting destroys CloudStack VM {destination}, where {recorded.name!r} has run since failover "
            f"{failover.id}, and discards what it wrote: confirm it (confirm_revert=True, `vmferry revert VM --yes`)"
        )
    with job("revert", recorded.vm_context_id):
        volumes = {v.vm_disk_id: v for v in volumes_of_vm(catalog, recorded.vm_context_id)}
        ours = [v.volume_id for v in volumes.values()]
        # the destination first, so the VM never runs in two places; the source last
        removed = destination if destroy_destination_vm(cloud, destination, ours) else None
        detached, _ = detach_vm_volumes(cloud, volumes)
        source = power_on_source(vcenter_block, recorded)
        # only now: a run that failed before this point finds the failover still active and is run again
        close_failover(failover.id, "reverted", READY_FOR_FAILOVER)
    logger.info("%s reverted: CloudStack VM %s removed, source %s", recorded.name, destination, source)
    _state_artifact(
        recorded,
        f"{recorded.name}: live failover {failover.id} reverted",
        [
            f"CloudStack VM {destination} {'destroyed' if removed else 'was gone already'}",
            f"volumes {', '.join(detached)} detached, back to replication; their next sync compares every block",
            f"VMware source {source}",
        ],
    )
    return RevertResult(
        vm=recorded.name, failover_id=failover.id, removed_vm=removed, volumes_detached=detached, source=source
    )
