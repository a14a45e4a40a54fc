"""The ``vmferry`` typer app: global options, per-invocation state, and one error handler for every command.

Exit codes (vmferry/errors.py): 0 success, 1 the operation failed, 2 usage error, 3 something named does not
exist (a VM, a restore point, a disk, a saved block, a deployment), 4 refused (a precondition is not met and
nothing was changed). A run submitted with ``--submit --wait`` ends with the same code as it would in-process.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer
from rich.console import Console

from vmferry.errors import EXIT_CODES_HELP, NotFoundError, Refused, VmferryError, describe, exit_code_of, label_of

EXIT_CODES = EXIT_CODES_HELP


class NotFound(NotFoundError):
    """Something the operator named does not exist: exit 3."""


class SubmittedRunFailed(VmferryError):
    """A run submitted with --wait did not complete; carries the exit code its error maps to."""

    def __init__(self, message: str, exit_code: int, label: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.label = label


app = typer.Typer(
    name="vmferry",
    help="Back up, replicate and fail over VMware VMs into CloudStack. " + EXIT_CODES,
    no_args_is_help=True,
    add_completion=False,
    # Our own handler prints one line per failure; a traceback only with --debug.
    pretty_exceptions_enable=False,
)


def console(**options: Any) -> Console:
    """A console that prints text as it is: no markup, no emoji codes, no highlighting.

    What we print quotes names, paths and thumbprints; rich would turn ``:AB:`` of a thumbprint into an emoji and
    ``[x]`` of a datastore path into markup, and an operator could no longer copy them.
    """
    return Console(markup=False, emoji=False, highlight=False, **options)


@dataclass
class Cli:
    """Per-invocation state (global options and consoles), kept on the typer context."""

    debug: bool
    verbose: bool
    out: Console
    err: Console = field(default_factory=lambda: console(stderr=True))


def cli_of(ctx: typer.Context) -> Cli:
    cli = ctx.find_root().obj
    assert isinstance(cli, Cli), "main() sets it before any command runs"
    return cli


@app.callback()
def main(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and Prefect's log lines.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's log lines (stderr).")] = False,
) -> None:
    """Back up, replicate and fail over VMware VMs into CloudStack."""
    # Not a terminal (pipes, CI logs): wide enough that disk file names are not cut.
    out = console()
    if not out.is_terminal:
        out = console(width=160)
    ctx.obj = Cli(debug=debug, verbose=verbose or debug, out=out)


# --- errors and exit codes -------------------------------------------------------------------------------------


@contextmanager
def operation(ctx: typer.Context, what: str, *, flows: bool = True) -> Iterator[Cli]:
    """Turn any failure into one stderr line and the exit code a script can trust.

    ``flows``: the command runs flows, whose Prefect console lines stay off stderr without --verbose.
    """
    cli = cli_of(ctx)
    try:
        if flows:
            _quiet_prefect_console(cli.verbose)
        yield cli
    except (typer.Exit, typer.Abort, typer.TyperException):
        raise
    except KeyboardInterrupt:
        cli.err.print(f"vmferry {what}: interrupted", style="red")
        raise typer.Exit(130) from None
    except Exception as exc:
        if cli.debug:
            traceback.print_exc()
        message = describe(exc)
        code = exit_code_of(exc)
        label = label_of(exc)
        # markup off: messages quote paths and ids with brackets ("[datastore] vm/disk.vmdk")
        cli.err.print(f"vmferry {what}: {label}: {message}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(code) from None


class _PrefectConsoleMute(logging.Filter):
    """On Prefect's console handler: drops every record while ``active``."""

    active = False

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.active


_MUTE = _PrefectConsoleMute()


def _quiet_prefect_console(verbose: bool) -> None:
    """Without --verbose, Prefect's console log lines (and the tracebacks it logs on failure) stay off stderr.

    Only the console handler is muted: the records still reach the Prefect API, so the UI keeps the run's logs.
    A filter rather than a level, because Prefect re-applies its logging config (handler levels included); it
    stays on after the command, because Prefect still logs while its event worker drains at exit.
    """
    # Prefect loads in about as long as the rest of the command: only the commands that run flows pay for it.
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import PrefectConsoleHandler

    ensure_logging_setup()  # Prefect configures logging lazily: make the handler exist before muting it
    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and _MUTE not in handler.filters:
            handler.addFilter(_MUTE)
    _MUTE.active = not verbose


def confirm(yes: bool, question: str, what: str) -> None:
    """Ask on a terminal; without one (scripts, CI), --yes is the only way: refused (exit 4) otherwise."""
    if yes:
        return
    if sys.stdin.isatty():
        if typer.confirm(question, default=False):
            return
        raise Refused(f"{what} not confirmed: nothing was changed")
    raise Refused(f"{what} needs confirmation: pass --yes (nothing was changed)")
