"""The error model: a few domain errors, each with the exit code the ``vmferry`` command gives it.

The same code comes back whether the flow ran in the command's process or on a worker (``--submit --wait``):
a failing flow publishes its outcome (words and exit code) for the command to read (orchestration/outcome.py).
Messages are sentences naming the VM, disk or point and the fix; a class name is never what an operator
reads. One retry policy for every remote call (docs/architecture.md, "Retries"): an error that cannot pass on
a retry (something does not exist, a precondition is not met, credentials refused: ``retryable = False``) is
never retried, and one the client already retried (``client_attempts`` > 1) is not retried again by the task:
tasks pass ``retry_condition_fn=retry_unless_permanent``.

Plain Python on purpose: the catalog and the clients raise these without knowing Prefect. The base classes
live in ``common/errors.py`` because the vSphere client, which the agent shares, raises them too.
"""

from __future__ import annotations

from typing import Any

# Re-exported: the hub imports every error from here; the base classes sit below the agent and the hub.
from common.errors import (  # noqa: F401
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_REFUSED,
    EXIT_USAGE,
    NotFoundError,
    Refused,
    VmferryError,
)

# Attempts of one remote call in all, by whichever single layer retries it (a client, or else its task).
REMOTE_ATTEMPTS = 3

EXIT_CODES_HELP = (
    "Exit codes: 0 success; 1 the operation failed (reason on stderr); 2 usage error; "
    "3 not found (unknown VM, restore point, disk, saved block or deployment); "
    "4 refused (a precondition is not met, e.g. live failover without --yes, or a target that cannot be "
    "written; nothing was changed). The same codes with --submit --wait."
)


def is_permanent(exc: BaseException | None) -> bool:
    return isinstance(exc, NotFoundError | Refused) or getattr(exc, "retryable", True) is False


def worth_retrying(exc: BaseException | None) -> bool:
    """The task may try again: the error can pass, and its client did not already make every attempt."""
    return not is_permanent(exc) and getattr(exc, "client_attempts", 1) <= 1


def retry_unless_permanent(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry a failed task unless its error cannot pass on a retry or its
    client already retried the call (so a transient error costs at most REMOTE_ATTEMPTS attempts in all)."""
    data = getattr(state, "data", None)
    return worth_retrying(data if isinstance(data, BaseException) else None)


def exit_code_of(exc: BaseException) -> int:
    return exc.exit_code if isinstance(exc, VmferryError) else EXIT_FAILED


def label_of(exc: BaseException) -> str:
    return exc.label if isinstance(exc, VmferryError) else "failed"


def describe(exc: BaseException) -> str:
    """The error in words, for a job row or a log line: its message, never a bare class name."""
    message = str(exc).strip()
    if message:
        return message
    return f"an unexpected error without a message ({type(exc).__name__}); run with --debug for the traceback"
