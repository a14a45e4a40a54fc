"""The catalog writes flows make as they go: failover records, a VM context's state, replicated volumes' content.

Each is a task so it is retried (a locked or briefly unreachable catalog does not fail a failover whose VMs are
already moved) and visible in the flow run. Each is one transaction, or a few that are each safe to repeat, so a
retry after a write that committed but whose answer was lost changes nothing more.

The writes of compensations are plain functions: they run after a failure, also while the flow run is being
cancelled (Prefect aborts every task run it would start then) or with Prefect's API unreachable.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from catalog import default_catalog
from catalog.failovers import (
    READY_FOR_FAILOVER,
    SOURCE_OFF_UNFINISHED,
    FailoverVolumeView,
    context_after_rollback,
    context_state,
    failovers_of,
    finish_failover,
    record_devices,
    set_context_state,
    start_failover,
)
from catalog.installation import installation_id
from catalog.replication import (
    VolumeView,
    forget_change_id,
    mark_content,
    record_attachment,
    record_sync,
    retire_volumes_of_absent_disks,
)
from vmferry.errors import retry_unless_permanent

# like the job row's own tasks (tasks/jobs.py); a missing row is not retried
record_task = task(retries=3, retry_delay_seconds=1, cache_policy=NO_CACHE, retry_condition_fn=retry_unless_permanent)


@record_task
def get_installation_id() -> str:
    """This catalog's installation id, made on the first call (a retry reads the id the lost attempt made)."""
    return installation_id(default_catalog())


@record_task
def open_failover(vm_context_id: int, job_id: str, mode: str) -> int:
    """A new in-progress failover of the VM context, owned by ``job_id``; its id."""
    catalog = default_catalog()
    # a retry after a commit whose answer was lost finds the row it wrote: a job opens one failover
    for earlier in failovers_of(catalog, vm_context_id):
        if earlier.job_id == job_id:
            return earlier.id
    return start_failover(catalog, vm_context_id, job_id, mode)


@record_task
def record_failover_active(failover_id: int, volumes: list[FailoverVolumeView], context: str) -> None:
    """The failover is done: the devices read back from CloudStack, the failover active, the context ``context``.

    Devices first: a failover is never active without them (recording them again replaces them)."""
    catalog = default_catalog()
    record_devices(catalog, failover_id, volumes)
    finish_failover(catalog, failover_id, "active", context)


@record_task
def close_failover(failover_id: int, state: str, context: str) -> None:
    """The failover ends ``state`` (committed, reverted) and its VM context is ``context``."""
    finish_failover(default_catalog(), failover_id, state, context)


def record_rollback(failover_id: int, vm_context_id: int) -> str:
    """Compensation: after a failover's undo ran, rolled back, the context ready again unless the source is off."""
    catalog = default_catalog()
    after = context_after_rollback(catalog, vm_context_id)
    finish_failover(catalog, failover_id, "rolled-back", after)
    return after


def record_source_on_again(vm_context_id: int) -> None:
    """Compensation: the source of a failed live failover runs again, so its context is no longer "source off,
    failover unfinished" but ready."""
    catalog = default_catalog()
    if context_state(catalog, vm_context_id) == SOURCE_OFF_UNFINISHED:
        set_context_state(catalog, vm_context_id, READY_FOR_FAILOVER)


@record_task
def set_vm_context_state(vm_context_id: int, state: str, only_from: tuple[str, ...] | None = None) -> bool:
    """Set the VM context's state (only when it is one of ``only_from``, if given); whether it was set."""
    catalog = default_catalog()
    if only_from is not None and context_state(catalog, vm_context_id) not in only_from:
        return False
    set_context_state(catalog, vm_context_id, state)
    return True


@record_task
def forget_volume_change_id(volume_id: str) -> None:
    """Something other than a sync writes into the volume: its next sync compares every block."""
    forget_change_id(default_catalog(), volume_id)


@record_task
def record_volume_owner(volume_id: str, vm_id: str, device_id: int | None) -> None:
    """A committed failover: the volume belongs to the destination VM, which no cleanup or reconciler undoes."""
    record_attachment(
        default_catalog(), volume_id, vm_id=vm_id, device_id=device_id, device_path=None, state="owned-by-destination"
    )


@record_task
def retire_absent_disk_volumes(vm_context_id: int) -> list[VolumeView]:
    """Volumes of disks the VM no longer has are retired (never written again); those retired now."""
    return retire_volumes_of_absent_disks(default_catalog(), vm_context_id)


@record_task
def mark_volumes_content(volume_ids: list[str], state: str) -> None:
    mark_content(default_catalog(), volume_ids, state)


@record_task
def record_volume_sync(volume_id: str, change_id: str | None) -> None:
    """The copy into the volume completed: it holds the disk as of ``change_id``."""
    record_sync(default_catalog(), volume_id, change_id)


@record_task
def record_cleanup(vm_context_id: int, failover_ids: list[int]) -> str:
    """Cleanup undid ``failover_ids``: each ends cleaned-up, and the VM context is ready again, or says its source
    is still off (a live failover that powered it off never finished: the VM runs nowhere); that state."""
    catalog = default_catalog()
    after = context_after_rollback(catalog, vm_context_id)
    for failover_id in failover_ids:
        finish_failover(catalog, failover_id, "cleaned-up", after)
    set_context_state(catalog, vm_context_id, after)
    return after
