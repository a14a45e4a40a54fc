"""The job row every operation leaves: opened before its first side effect, closed with how it ended."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from catalog.jobs import JobKind
from tasks.jobs import close_job, open_job
from vmferry.errors import describe


@contextmanager
def job(
    kind: JobKind, vm_context_id: int | None = None, *, error_text: Callable[[BaseException], str] = describe
) -> Iterator[str]:
    """Yield a new running job's id; close the job ``succeeded`` when the block ends, ``failed`` when it raises.

    Any exception (``BaseException``) closes the job failed with ``error_text`` of it and propagates unchanged.
    A flow's own compensation goes inside the block (its ``except`` or ``ExitStack``), so it has run when the
    job is closed. The open and close are tasks: retried, and visible in the flow run; in a run being cancelled
    the close cannot start, and the flow's ``on_cancellation`` hook marks the row failed instead."""
    job_id = open_job(kind, vm_context_id)
    try:
        yield job_id
    except BaseException as exc:
        close_job(job_id, "failed", error_text(exc))
        raise
    close_job(job_id, "succeeded")
