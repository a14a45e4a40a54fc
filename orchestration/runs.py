"""What a flow run says about its VM: its tags, its artifact keys, and the VM's one-job-at-a-time slot.

Every flow that touches a VM (backup, replication, failover, cleanup, verification, pruning) is decorated
with :func:`one_job_per_vm` (under ``@flow``), which finds the VM from the run's parameters and runs the whole
flow inside :func:`vm_job`. That tags the run ``vm:<name>`` and with the flow's kind,
so the UI filters runs by VM, and holds the VM's strict concurrency slot (``vm-<instance uuid>``, one slot)
for the rest of the flow: a backup and a replication of one VM never meet at the agent (whose answer would be
409 "already has a running job"); the second waits and says so in its log. A flow that calls another on the
same VM (a live failover's last sync) holds the slot once: a nested :func:`vm_job` on a VM already held by
this flow takes nothing, or it would wait for itself forever.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol, TypeVar

from common.names import vm_limit_name, vm_tag
from orchestration.limits import ensure_limit, slot

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

# Instance UUIDs of the VMs whose slot this flow (and the flows it calls in-process) holds.
_held: ContextVar[frozenset[str]] = ContextVar("vmferry_vm_slots_held", default=frozenset())


class NamedVM(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def instance_uuid(self) -> str: ...


def tag_flow_run(*tags: str) -> None:
    """Add ``tags`` to the current flow run (outside a flow run: nothing)."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    run = context.flow_run
    merged = sorted(set(run.tags or []) | set(tags))
    if merged == sorted(run.tags or []):
        return
    with get_client(sync_client=True) as client:
        client.update_flow_run(run.id, tags=merged)
    run.tags = merged


@contextmanager
def vm_job(vm: NamedVM, kind: str, logger: logging.Logger | logging.LoggerAdapter = log) -> Iterator[None]:
    """Tag the run with the VM and ``kind``, then hold the VM's slot until the block ends (waiting, and saying so)."""
    tag_flow_run(vm_tag(vm.name), kind)
    if vm.instance_uuid in _held.get():
        yield  # this flow holds the slot already
        return
    name = vm_limit_name(vm.instance_uuid)
    busy = ensure_limit(name, 1, logger, quiet=True)
    if busy:
        logger.info("VM %s is busy with another vmferry job: this %s waits until it ends", vm.name, kind)
    started = time.monotonic()
    # a short lease: a job whose process died (SIGKILL, a lost hub) blocks its VM for about a minute, not five
    with slot(name):
        if busy:
            logger.info("VM %s is free after %.0f s: the %s starts", vm.name, time.monotonic() - started, kind)
        token = _held.set(_held.get() | {vm.instance_uuid})
        try:
            yield
        finally:
            _held.reset(token)


def vm_parameter(arguments: dict[str, Any]) -> NamedVM:
    """The VM of a flow's ``vm`` parameter: from the catalog, or from vCenter (``vcenter`` parameter) when the
    catalog does not know it yet (a first backup of a VM never discovered)."""
    from catalog import default_catalog
    from catalog.errors import UnknownRecord
    from catalog.inventory import find_vm

    try:
        return find_vm(default_catalog(), arguments["vm"])
    except UnknownRecord:
        if arguments.get("vcenter") is None:
            raise
    from blocks import load_block
    from blocks.vcenter import VCenter
    from tasks.discovery import read_vcenter_inventory

    (observed,) = read_vcenter_inventory(load_block(VCenter, arguments["vcenter"]), [arguments["vm"]])
    return observed


def one_job_per_vm(kind: str, resolve: Callable[[dict[str, Any]], NamedVM] = vm_parameter) -> Callable[[F], F]:
    """Run the decorated flow function inside :func:`vm_job` for the VM ``resolve`` finds in its arguments.

    Put it under ``@flow``: Prefect reads the parameters (and their descriptions) through ``__wrapped__``.
    """

    def decorate(function: F) -> F:
        signature = inspect.signature(function)
        # Prefect builds its parameter model from the signature and resolves string annotations in the
        # function's own globals, which for a wrapper are this module's: hand it the resolved types instead.
        hints = typing.get_type_hints(function)
        resolved = signature.replace(
            parameters=[p.replace(annotation=hints.get(p.name, p.annotation)) for p in signature.parameters.values()],
            return_annotation=hints.get("return", signature.return_annotation),
        )

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            from prefect import get_run_logger

            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            with vm_job(resolve(bound.arguments), kind, get_run_logger()):
                return function(*args, **kwargs)

        wrapper.__signature__ = resolved  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def _mib(size: float) -> str:
    return f"{size / 2**20:,.1f} MiB"


def describe_progress(label: str, done: int, total: int, elapsed: float) -> str:
    """``copy of db3 disk-2000: 512.0 MiB of 2,048.0 MiB, 45.2 MiB/s, about 34 s left`` for a progress card."""
    text = f"{label}: {_mib(done)} of {_mib(total)}"
    if elapsed <= 0 or done <= 0:
        return text
    rate = done / elapsed
    text += f", {_mib(rate)}/s"
    if done < total:
        left = (total - done) / rate
        text += f", about {left:.0f} s left" if left < 120 else f", about {left / 60:.0f} min left"
    return text


def table_rows(items: list[Any], headings: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Pydantic models as artifact table rows with headings in words (``vm_disk_id`` -> ``catalog disk id``)."""
    names = {"vm_disk_id": "catalog disk id", **(headings or {})}
    return [{names.get(k, k.replace("_", " ")): v for k, v in item.model_dump().items()} for item in items]


def all_results(futures: list[Any], on_result: Callable[[Any], object] | None = None) -> list[Any]:
    """Every future's result, in order; the first failure is raised only once every future has ended, so the
    caller's compensation never runs beside a task still at work. ``on_result`` gets each result as it comes,
    also when another future failed (to push what it made on a compensation stack)."""
    results: list[Any] = []
    failure: BaseException | None = None
    for future in futures:
        try:
            result = future.result()
        except BaseException as exc:
            failure = failure or exc
            continue
        if on_result is not None:
            on_result(result)
        results.append(result)
    if failure is not None:
        raise failure
    return results
