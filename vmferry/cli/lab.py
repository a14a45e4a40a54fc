"""``vmferry lab ...``: the built-in lab's commands, which live with the lab (``python -m infra.lab.commands``).

The product does not import the lab: this command runs the lab's own command line as a process, with the same
arguments, and ends with its exit code. Where the lab is not installed (a wheel ships without ``infra``) it
says so.
"""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys

import typer

from vmferry.cli.app import app
from vmferry.errors import EXIT_FAILED

LAB_MODULE = "infra.lab.commands"


def _inherits_streams() -> bool:
    """Our stdout and stderr are real files the lab's process can write to directly (as it goes)."""
    try:
        sys.stdout.fileno()
        sys.stderr.fileno()
    except (OSError, ValueError, io.UnsupportedOperation):
        return False  # captured in memory (typer's test runner): hand the lab's output over ourselves
    return True


@app.command(
    "lab",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
    help="The built-in lab: vcsim (a vCenter simulator), our CloudStack simulator and an agent "
    "(`vmferry lab up|down|status`; see `vmferry lab --help`). Ships with the source checkout only.",
)
def lab(ctx: typer.Context) -> None:
    # find_spec of a top-level name looks for it without importing it
    if importlib.util.find_spec("infra") is None:
        typer.echo(
            "vmferry lab: the lab is not installed here: it ships with the source checkout (infra/), not the wheel",
            err=True,
        )
        raise typer.Exit(EXIT_FAILED)
    argv = [sys.executable, "-m", LAB_MODULE, *ctx.args]
    if _inherits_streams():
        raise typer.Exit(subprocess.run(argv, check=False).returncode)
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    typer.echo(done.stdout, nl=False)
    typer.echo(done.stderr, nl=False, err=True)
    raise typer.Exit(done.returncode)
