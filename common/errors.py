"""The error base the agent and the hub share: each class carries the exit code the ``vmferry`` command gives it.

It lives below both so that the vSphere client (``common.vsphere``), which the agent uses too, raises errors
the hub already knows how to word, retry or not, and turn into exit codes (``vmferry/errors.py``).
"""

from __future__ import annotations

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_REFUSED = 4


class VmferryError(Exception):
    """Something went wrong while working: exit 1. Retrying may help."""

    exit_code = EXIT_FAILED
    label = "failed"
    # False where no retry can help (refused credentials, a parameter the server rejects); set per instance too
    retryable = True
    # attempts the raising client already made of the failed call: a task does not multiply them
    client_attempts = 1


class NotFoundError(VmferryError):
    """Something named does not exist (a VM, a restore point, a disk, a block): exit 3, never retried."""

    exit_code = EXIT_NOT_FOUND
    label = "not found"


class Refused(VmferryError):
    """A precondition is not met and nothing was changed: exit 4, never retried (the operator must act)."""

    exit_code = EXIT_REFUSED
    label = "refused"
