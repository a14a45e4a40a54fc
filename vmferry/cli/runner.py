"""The one shape of every flow command: run the flow here, or hand it to a deployment (``--submit``), then
print the result for people or as JSON (``--json``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console

from vmferry.cli.app import Cli, NotFound, SubmittedRunFailed
from vmferry.cli.output import dump, emit_json
from vmferry.cli.progress import with_progress
from vmferry.cli.selection import BlockChoice, require_in_vcenter
from vmferry.errors import EXIT_FAILED

if TYPE_CHECKING:
    from blocks import Agent, VCenter

T = TypeVar("T")

JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout (for scripts).")]
ProgressOption = Annotated[
    bool | None,
    typer.Option("--progress/--no-progress", help="Per-disk progress bars on stderr (default: when it is a terminal)."),
]
SubmitOption = Annotated[
    str | None,
    typer.Option(
        "--submit",
        metavar="DEPLOYMENT",
        help="Run through this Prefect deployment on a worker instead of in-process ('on-demand' or "
        "'<flow>/<deployment>'); only the block names given are passed, the deployment's defaults fill the rest.",
    ),
]
WaitOption = Annotated[
    bool,
    typer.Option(
        "--wait", help="With --submit: wait for the flow run; its exit code is the one an in-process run would have."
    ),
]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do it without asking (scripts, --submit).")]


@dataclass(frozen=True)
class Delivery:
    """Where a flow command's run goes (here, or with --submit to a deployment) and how its result is shown."""

    cli: Cli
    submit: str | None
    wait: bool
    as_json: bool

    def flow(
        self,
        flow_name: str,
        parameters: dict[str, Any],
        blocks: BlockChoice,
        block_names: Sequence[str],
        *,
        run: Callable[[], T],
        show: Callable[[T], Any],
        to_json: Callable[[T], Any] = dump,
    ) -> None:
        """``run()`` here and print ``show(result)`` (``to_json(result)`` with --json); or, with --submit, start
        the deployment's run of ``flow_name`` with ``parameters`` and the blocks named on the command line."""
        if self.submit is not None:
            parameters = {**parameters, **blocks.parameters(*block_names)}
            submit_to_deployment(self.cli, self.submit, flow_name, parameters, wait=self.wait, as_json=self.as_json)
            return
        result = run()
        if self.as_json:
            emit_json(to_json(result))
            return
        self.cli.out.print(show(result))


def copy_vm(
    blocks: BlockChoice,
    vm: str,
    destination: str,
    console: Console,
    progress: bool | None,
    copy: Callable[[VCenter, Agent], T],
) -> T:
    """A flow that has the agent copy ``vm``'s disks (into the ``destination`` block): the VM checked in
    vCenter first, then ``copy`` run with per-disk bars."""
    blocks.require("vcenter", "agent", destination)
    vcenter_block = blocks.vcenter_block()
    require_in_vcenter(vcenter_block, [vm])
    with blocks.agent_block() as agent_block:
        return with_progress(console, progress, lambda: copy(vcenter_block, agent_block))


def submit_to_deployment(
    cli: Cli, deployment: str, flow_name: str, parameters: dict[str, Any], *, wait: bool, as_json: bool
) -> None:
    """``run_deployment`` of ``<flow>/<deployment>`` (a bare name is the flow's deployment of that name).

    Without ``wait`` it returns once the run is created (a worker runs it); with it, the run's outcome (what
    the flow published, vmferry/outcome.py) decides the exit code, the same one an in-process run would end
    with, and ``--json`` prints the flow's result.
    """
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    from orchestration.outcome import Outcome, outcome_from_message, read_outcome

    name = deployment if "/" in deployment else f"{flow_name}/{deployment}"
    try:
        run = run_deployment(name=name, parameters=parameters, timeout=None if wait else 0, as_subflow=False)
    except ObjectNotFound as exc:
        raise NotFound(f"no deployment {name!r} on the Prefect server") from exc
    state = run.state.type.value if run.state else "UNKNOWN"
    outcome: Outcome | None = None
    if wait:
        outcome = read_outcome(run.id)
        if outcome is None and not (run.state and run.state.is_completed()):
            outcome = outcome_from_message(run.state.message if run.state and run.state.message else state)
    summary: dict[str, Any] = {"flow_run_id": str(run.id), "flow_run_name": run.name, "deployment": name}
    summary["state"] = state
    if as_json:
        if outcome is not None:
            summary |= {"result": outcome.result} if outcome.ok else {"error": outcome.error}
        emit_json(summary)
    else:
        cli.out.print(f"flow run {run.name} ({run.id}) of deployment {name}: {state}")
    if wait and not (run.state and run.state.is_completed()):
        assert outcome is not None  # read above for every run that did not complete
        raise SubmittedRunFailed(
            f"flow run {run.name} ({run.id}) ended {state}: {outcome.error}",
            outcome.exit_code or EXIT_FAILED,
            outcome.label or "failed",
        )
