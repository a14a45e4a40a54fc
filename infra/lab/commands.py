"""``vmferry lab up|down|status`` (run by the ``vmferry`` command as ``python -m infra.lab.commands``).

``up`` starts and seeds the lab (or reuses the running one) and the lab's long-lived reference agent, all
described in lab.json: what ``vmferry --lab`` reads. ``--deployable`` also saves the blocks the deployments
name. The product never imports this module; it runs it.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from infra.lab.__main__ import cmd_down, ensure_lab_up, load_state, write_state
from infra.lab.cloudstack.process import simulator_alive
from infra.lab.deployable import ensure_agent, lab_up_deployable
from infra.lab.paths import lab_dir
from infra.lab.vcenter import LabVCenter, is_running
from vmferry.cli.app import EXIT_CODES, main, operation
from vmferry.cli.output import emit_json, key_value_table
from vmferry.cli.runner import JsonOption
from vmferry.cli.selection import LAB_REPOSITORY_NAME
from vmferry.errors import EXIT_FAILED
from vmferry.settings import get_settings

app = typer.Typer(
    name="vmferry lab",
    help="The built-in lab: vcsim (a vCenter simulator), our CloudStack simulator and a reference agent. "
    "Other commands use it with --lab.",
    callback=main,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _endpoints(state: dict[str, Any]) -> dict[str, str]:
    vc = state["vcenter"]
    endpoints = {
        "vcenter": f"https://{vc['host']}:{vc['port']}/sdk",
        "vcenter user": vc["user"],
        "vcenter thumbprint": vc["thumbprint"],
    }
    if "cloudstack" in state:
        endpoints["cloudstack"] = state["cloudstack"]["info"]["url"]
    if "agent" in state:
        endpoints["agent"] = state["agent"]["url"]
    return endpoints


@app.command("up", epilog=EXIT_CODES)
def up(
    ctx: typer.Context,
    reseed: Annotated[bool, typer.Option(help="Seed the VMs again even if the lab is already seeded.")] = False,
    deployable: Annotated[
        bool,
        typer.Option(
            help="Also save the blocks deployments/prefect.yaml names (VCenter, Agent, CloudStack 'prod', "
            "BackupRepository 'main') on the Prefect server of PREFECT_API_URL."
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Start and seed the lab (vcsim with pgtest1 and db3, the CloudStack simulator, an agent), or reuse the
    running one."""
    with operation(ctx, "lab up", flows=False) as cli:
        root = lab_dir()
        state, reused = ensure_lab_up(root, reseed=reseed)
        try:
            agent, agent_reused = ensure_agent(root, state)
        finally:
            write_state(root, state)  # a started agent is recorded even when something after it failed
        endpoints = _endpoints(state)
        endpoints["agent"] = f"{agent['url']} ({'reused' if agent_reused else 'started'}, pid {agent['pid']})"
        if deployable:
            saved = lab_up_deployable(state, LAB_REPOSITORY_NAME, get_settings().data_dir / "repository")
            # the agent line above says whether this command started it; here it is always already running
            endpoints |= {key: value for key, value in saved.items() if key != "agent"}
        if as_json:
            emit_json({**endpoints, "reused": reused})
            return
        cli.out.print(key_value_table(f"lab {'reused' if reused else 'started'}", endpoints))


@app.command("down", epilog=EXIT_CODES)
def down(ctx: typer.Context) -> None:
    """Stop the lab (and its agent) and remove its files."""
    with operation(ctx, "lab down", flows=False):
        cmd_down(lab_dir())


@app.command("status", epilog="Exit codes: 0 the lab is running; 1 it is not.")
def status(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Show whether the lab runs and its endpoints; exit 1 when it does not run."""
    with operation(ctx, "lab status", flows=False) as cli:
        state = load_state()
        running = state is not None and is_running(LabVCenter.from_dict(state["vcenter"]))
        endpoints = _endpoints(state) if state is not None else {}
        cloudstack = state is not None and "cloudstack" in state and simulator_alive(state["cloudstack"]["pid"])
        if as_json:
            emit_json({"running": running, "cloudstack_running": cloudstack, **endpoints})
        elif running:
            title = "lab running" + ("" if cloudstack else " (CloudStack simulator down)")
            cli.out.print(key_value_table(title, endpoints))
        else:
            cli.out.print("lab is not running (start it with `vmferry lab up`)")
        if not running:
            raise typer.Exit(EXIT_FAILED)


if __name__ == "__main__":
    app(prog_name="vmferry lab")
