"""``vmferry reconcile``: clean what no running job owns."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from vmferry.cli.app import EXIT_CODES, app, operation
from vmferry.cli.output import dicts_table
from vmferry.cli.runner import Delivery, JsonOption, SubmitOption, WaitOption
from vmferry.cli.selection import BlockChoice, CloudStackOption, LabOption, RepositoryOption, VCenterOption


@app.command(epilog=EXIT_CODES)
def reconcile(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report what would be cleaned; change nothing.")] = False,
    repository: RepositoryOption = None,
    vcenter: VCenterOption = None,
    cloudstack: CloudStackOption = None,
    lab: LabOption = False,
    submit: SubmitOption = None,
    wait: WaitOption = False,
    as_json: JsonOption = False,
) -> None:
    """Clean what no running job owns: qemu-nbd exports, port leases, partial points, agent snapshots, foreign
    volumes on the hub, jobs of crashed runs. Needs the repository; the vCenter and CloudStack sweeps run when
    their blocks are named (with --lab: the lab's, when it runs)."""
    blocks = BlockChoice("reconcile", repository=repository, vcenter=vcenter, cloudstack=cloudstack, lab=lab)
    dry = " (dry run)" if dry_run else ""
    with operation(ctx, "reconcile") as cli:

        def run() -> Any:
            from flows.reconcile import reconcile as reconcile_flow

            repository_block = blocks.repository_block()
            # without a vCenter or CloudStack block the sweeps that need none still run
            return reconcile_flow(
                repository_block, blocks.optional("vcenter"), blocks.optional("cloudstack"), dry_run=dry_run
            )

        def show(report: Any) -> Any:
            rows = report.table()
            if not rows:
                return f"reconcile{dry}: nothing to clean"
            return dicts_table(f"reconcile{dry}: {report.summary()}", rows)

        Delivery(cli, submit, wait, as_json).flow(
            "reconcile",
            {"dry_run": dry_run},
            blocks,
            ("repository", "vcenter", "cloudstack"),
            run=run,
            show=show,
        )
