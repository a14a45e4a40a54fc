"""Copy progress as the flow follows it: one follower (the flow's ``follow_agent_job`` task), many listeners.

The task that follows an agent job publishes every status the agent answers with (the job id it submitted,
each disk's bytes done and total); the Prefect progress artifacts and, when the flow runs inside the
``vmferry`` command, its progress bars both show those same numbers. Nothing here guesses which job a flow
runs, and nothing polls the agent a second time.

Plain Python: the catalog-free, Prefect-free core. Listeners are process-wide (the flow's tasks run in other
threads of the process that listens); a listener that fails is logged and dropped from that event only, never
allowed to fail the copy.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DiskCopyProgress:
    device_key: int
    label: str  # "db3 disk-2000": what a bar or card calls the disk
    bytes_done: int
    bytes_total: int


@dataclass(frozen=True)
class CopyProgress:
    """One answer of the agent about one job, as the flow following it received it."""

    job_id: str
    disks: tuple[DiskCopyProgress, ...]
    finished: bool


Listener = Callable[[CopyProgress], None]

_listeners: list[Listener] = []
_lock = threading.Lock()


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Call ``listener`` with every copy progress this process publishes until the block ends."""
    with _lock:
        _listeners.append(listener)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(listener)


def publish(progress: CopyProgress) -> None:
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        try:
            listener(progress)
        except Exception:
            log.debug("a copy progress listener failed", exc_info=True)
