"""The global concurrency limits vmferry's flows hold, always with ``strict=True``.

- ``repo-backup-<repository name>``: backups writing into one repository at once (the disks and the network
  of one backup target are shared by every VM backed up into it).
- ``vcenter-snapshots-<vCenter host>[-<port>]``: VMs of one vCenter with a vmferry snapshot open at once,
  keyed on the vCenter itself rather than on a block, so two blocks naming the same vCenter share one limit.
- ``vm-<instance uuid>``: one job per VM at a time (one slot; orchestration/runs.py ``vm_job``), keyed on the
  instance UUID because a VM's name can change between two jobs.
- ``hub-volumes-<hub VM uuid>``: volumes attached to one hub at once. Sized from CloudStack (the hub's
  data-volume limit), set by the run that finds it different, never by the operator; a sync takes one slot per
  disk of its VM.
- ``vm-volumes-<installation>-<vm context id>``: one slot; whoever moves a VM's volumes (a sync, a failover)
  holds it, so a failover waits for a running sync to detach them.

``deployments/deploy.py`` creates them with the operator's values. A run that finds its limit missing creates
it with the default from settings (VMFERRY_REPOSITORY_BACKUP_LIMIT, VMFERRY_VCENTER_SNAPSHOT_LIMIT) and says
so: without ``strict`` a missing limit is silently not enforced, and with it a missing limit would fail every
run of a fresh install. The names themselves are built in ``common.names``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

log = logging.getLogger(__name__)


def ensure_limit(
    name: str,
    default: int,
    logger: logging.Logger | logging.LoggerAdapter = log,
    origin: str = "deployments/deploy.py sets the operator's value",
    *,
    quiet: bool = False,
) -> bool:
    """Create the limit with ``default`` slots when it does not exist; an existing one is left as it is.

    Returns whether every slot is taken now (the caller will wait). ``quiet``: the caller tells the operator
    itself, and a limit created on first use is normal (one per VM), not a missing operator setting.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=default))
                (logger.debug if quiet else logger.warning)(
                    "global concurrency limit %s did not exist: created it with %d slots (%s)", name, default, origin
                )
            except ObjectAlreadyExists:
                pass  # another run created it between our read and our create
            return False
    if not limit.active:
        logger.warning("global concurrency limit %s is inactive: Prefect does not enforce it", name)
        return False
    busy = limit.active_slots >= limit.limit
    if busy and not quiet:
        logger.info("waiting for a slot of %s (%d of %d taken)", name, limit.active_slots, limit.limit)
    return busy


@contextmanager
def slot(name: str) -> Iterator[None]:
    """One slot of the existing limit ``name`` for the duration of the block, waiting as long as it takes.

    The slot is a lease the holding process renews (VMFERRY_CONCURRENCY_LEASE_SECONDS, Prefect's minimum of
    60 s by default): a run killed with SIGKILL stops renewing, and the server's repossessor hands its slot
    back within that time, instead of Prefect's default 5 minutes. The lease names the flow run holding it.
    """
    from uuid import UUID

    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.concurrency.sync import concurrency
    from prefect.runtime import flow_run

    from vmferry.settings import get_settings

    run_id = flow_run.get_id()
    holder = ConcurrencyLeaseHolder(type="flow_run", id=UUID(run_id)) if run_id else None
    lease = get_settings().concurrency_lease_seconds
    with concurrency(name, strict=True, lease_duration=lease, holder=holder):
        yield


@contextmanager
def holding(name: str, default: int, logger: logging.Logger | logging.LoggerAdapter = log) -> Iterator[None]:
    """One slot of the limit ``name`` (created with ``default`` slots when missing), as :func:`slot`."""
    ensure_limit(name, default, logger)
    with slot(name):
        yield


def set_limit(name: str, size: int, logger: logging.Logger | logging.LoggerAdapter = log) -> None:
    """The limit exists with exactly ``size`` slots: a limit derived from the system follows the system."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    ensure_limit(name, size, logger, origin="sized from what CloudStack reports")
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(name)
        if limit.limit != size or not limit.active:
            logger.info("global concurrency limit %s: %d slots (was %d)", name, size, limit.limit)
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=size, active=True))


@contextmanager
def first_free(
    names: list[str], slots: int, logger: logging.Logger | logging.LoggerAdapter = log, poll: float = 1.0
) -> Iterator[str]:
    """``slots`` slots of the first limit in ``names`` that has room, waiting (and saying so) until one has."""
    from prefect.concurrency._asyncio import AcquireConcurrencySlotTimeoutError
    from prefect.concurrency.sync import concurrency

    said = False
    while True:
        for name in names:
            taken = ExitStack()
            try:
                taken.enter_context(concurrency(name, occupy=slots, timeout_seconds=poll / len(names), strict=True))
            except AcquireConcurrencySlotTimeoutError:
                continue
            with taken:
                yield name
            return
        if not said:
            # The numbers tell a full hub from a slow Prefect server: either makes the acquisition time out.
            logger.info("waiting for %d free slot(s) on any of %s", slots, ", ".join(_taken(names)))
            said = True


def _taken(names: list[str]) -> list[str]:
    """Each limit as "<name> (<taken> of <size> taken)"."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        limits = [client.read_global_concurrency_limit_by_name(name) for name in names]
    return [f"{name} ({limit.active_slots} of {limit.limit} taken)" for name, limit in zip(names, limits, strict=True)]
