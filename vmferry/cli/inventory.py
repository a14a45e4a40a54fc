"""``vmferry discover`` and ``vmferry status``: what vCenter has, and what the catalog records."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Group

from catalog import default_catalog
from catalog.inventory import find_vm, list_vms
from catalog.jobs import list_jobs
from catalog.replication import volumes_of_vm
from catalog.restore_points import committed_points, points_in_state
from vmferry.cli.app import EXIT_CODES, app, operation
from vmferry.cli.output import disks_table, dump, emit_json, print_protection, print_retired_volumes, print_status
from vmferry.cli.runner import Delivery, JsonOption, SubmitOption, WaitOption
from vmferry.cli.selection import BlockChoice, LabOption, VCenterOption, require_in_vcenter
from vmferry.protection import vm_protection


@app.command(epilog=EXIT_CODES)
def discover(
    ctx: typer.Context,
    vms: Annotated[
        list[str] | None, typer.Argument(metavar="VM", help="VM names, instance UUIDs or morefs (default: all).")
    ] = None,
    vcenter: VCenterOption = None,
    lab: LabOption = False,
    enable_cbt: Annotated[
        bool,
        typer.Option(
            "--enable-cbt",
            help="Turn changed block tracking on for the VMs read that have it off (reconfigure, then a snapshot "
            "create/remove so that it takes effect).",
        ),
    ] = False,
    submit: SubmitOption = None,
    wait: WaitOption = False,
    as_json: JsonOption = False,
) -> None:
    """Read VMs and their disks from vCenter into the catalog and print each VM's disks.

    A disk keeps its catalog id across runs; a removed disk is marked absent.
    Without VM names every VM is read, and VMs vCenter no longer has are marked absent.
    Each VM's title says whether changed block tracking is on.
    """
    blocks = BlockChoice("discover", vcenter=vcenter, lab=lab)
    with operation(ctx, "discover") as cli:

        def run() -> list[Any]:
            from flows.discover import discover as discover_flow

            block = blocks.vcenter_block()
            if vms:
                require_in_vcenter(block, vms)
            return discover_flow(block, list(vms) if vms else None, enable_cbt=enable_cbt)

        Delivery(cli, submit, wait, as_json).flow(
            "discover",
            {"vms": list(vms) if vms else None} | ({"enable_cbt": True} if enable_cbt else {}),
            blocks,
            ("vcenter",),
            run=run,
            show=lambda recorded: Group(*(disks_table(vm) for vm in recorded)),
        )


@app.command(epilog=EXIT_CODES)
def status(
    ctx: typer.Context,
    vms: Annotated[
        list[str] | None, typer.Argument(metavar="[VM]...", help="Only these VMs (default: every VM).")
    ] = None,
    jobs: Annotated[int, typer.Option(help="How many of the newest jobs to show.")] = 20,
    as_json: JsonOption = False,
) -> None:
    """What the catalog records: per VM its state, failover, newest restore point and last sync with their ages;
    VMs and their disks, restorable points, recent jobs with their times. Reads the catalog only."""
    with operation(ctx, "status", flows=False) as cli:
        catalog = default_catalog()
        recorded = [find_vm(catalog, name) for name in vms] if vms else list_vms(catalog)
        retired = [v for vm in recorded for v in volumes_of_vm(catalog, vm.vm_context_id, retired=True)]
        ids = {vm.vm_context_id for vm in recorded}
        names = {vm.vm_context_id: vm.name for vm in recorded}
        points = [p for vm in recorded for p in committed_points(catalog, vm.vm_context_id)]
        points += [p for p in points_in_state(catalog, "pending") if p.vm_context_id in ids]
        recent = [j for j in list_jobs(catalog, limit=jobs) if not vms or j.vm_context_id in ids]
        protection = [vm_protection(catalog, vm) for vm in recorded]
        if as_json:
            emit_json(
                {
                    "protection": dump(protection),
                    "vms": dump(recorded),
                    "restore_points": dump(points),
                    "jobs": dump(recent),
                    "retired_volumes": dump(retired),
                }
            )
            return
        print_protection(cli.out, protection)
        print_status(cli.out, recorded, points, recent, names)
        print_retired_volumes(cli.out, retired)
