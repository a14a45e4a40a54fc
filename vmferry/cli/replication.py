"""``vmferry replicate``, ``failover``, ``cleanup``, ``commit`` and ``revert``: a VM's life in CloudStack."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from vmferry.cli.app import EXIT_CODES, app, confirm, operation
from vmferry.cli.output import devices_table, table
from vmferry.cli.runner import Delivery, JsonOption, ProgressOption, SubmitOption, WaitOption, YesOption, copy_vm
from vmferry.cli.selection import (
    AgentOption,
    BlockChoice,
    CloudStackOption,
    LabOption,
    VCenterOption,
    recorded_vm,
)

VMArgument = Annotated[str, typer.Argument(metavar="VM", help="VM name, instance UUID or moref.")]
LiveVMArgument = Annotated[
    str, typer.Argument(metavar="VM", help="VM name, instance UUID or moref (failed over live).")
]


class ReplicationKind(StrEnum):
    auto = "auto"
    initial = "initial"
    incremental = "incremental"


class FailoverMode(StrEnum):
    test = "test"
    live = "live"


@app.command(epilog=EXIT_CODES)
def replicate(
    ctx: typer.Context,
    vm: VMArgument,
    kind: Annotated[
        ReplicationKind, typer.Option(help="auto: initial the first time, incremental after.")
    ] = ReplicationKind.auto,
    cloudstack: CloudStackOption = None,
    agent: AgentOption = None,
    vcenter: VCenterOption = None,
    lab: LabOption = False,
    submit: SubmitOption = None,
    wait: WaitOption = False,
    progress: ProgressOption = None,
    as_json: JsonOption = False,
) -> None:
    """Copy every disk of a VM into its CloudStack volume (created on the first run, synced after)."""
    blocks = BlockChoice("replicate", vcenter=vcenter, agent=agent, cloudstack=cloudstack, lab=lab)
    with operation(ctx, f"replicate {vm}") as cli:

        def run() -> Any:
            from flows.replicate import replicate_vm

            def copy(vcenter_block: Any, agent_block: Any) -> Any:
                return replicate_vm(vm, blocks.cloudstack_block(), agent_block, vcenter_block, kind=kind.value)

            return copy_vm(blocks, vm, "cloudstack", cli.err, progress, copy)

        Delivery(cli, submit, wait, as_json).flow(
            "replicate-vm",
            {"vm": vm, "kind": kind.value},
            blocks,
            ("cloudstack", "agent", "vcenter"),
            run=run,
            show=lambda result: table(
                f"{result.vm}: {result.kind} replication (job {result.job_id})",
                ("disk", "catalog id", "volume", "hub device", "MiB written"),
                (
                    (d.disk_id, d.vm_disk_id, d.volume_id, d.device_path, f"{d.bytes_written / 2**20:.1f}")
                    for d in result.disks
                ),
            ),
        )


def _pairs(values: list[str] | None, option: str) -> dict[str, str]:
    """``KEY=VALUE`` options as a dict; the key may hold spaces (port group names often do)."""
    pairs: dict[str, str] = {}
    for value in values or []:
        key, sep, item = value.rpartition("=")
        if not sep or not key or not item:
            raise typer.BadParameter(f"{value!r} is not KEY=VALUE", param_hint=option)
        pairs[key] = item
    return pairs


@app.command(epilog=EXIT_CODES)
def failover(
    ctx: typer.Context,
    vm: Annotated[str, typer.Argument(metavar="VM", help="VM name, instance UUID or moref (replicated before).")],
    mode: Annotated[
        FailoverMode, typer.Option(help="test: a copy beside the source; live: source powered off, final sync.")
    ] = FailoverMode.test,
    cloudstack: CloudStackOption = None,
    agent: AgentOption = None,
    vcenter: VCenterOption = None,
    lab: LabOption = False,
    network: Annotated[
        list[str] | None,
        typer.Option(
            metavar="PORTGROUP=NETWORK_ID",
            help="Map a source port group to a CloudStack network for this VM (adds to the block's network_map). "
            "Repeatable.",
        ),
    ] = None,
    ip: Annotated[
        list[str] | None,
        typer.Option(metavar="MAC=IP", help="Static IP for the source NIC with this MAC address. Repeatable."),
    ] = None,
    progress: ProgressOption = None,
    prepare_guest: Annotated[
        bool, typer.Option(help="Prepare the OS volume for KVM with virt-v2v-in-place before the VM starts.")
    ] = True,
    virtio_win: Annotated[
        Path | None, typer.Option(help="virtio-win driver directory for a Windows guest's preparation.")
    ] = None,
    submit: SubmitOption = None,
    wait: WaitOption = False,
    yes: YesOption = False,
    as_json: JsonOption = False,
) -> None:
    """Bring a replicated VM up in CloudStack: OS volume on device 0, data volumes after it in source order, one
    NIC per source NIC on its mapped network.

    Device ids are read back from CloudStack and checked before the VM starts; any failure undoes every step. A
    source network without a mapping refuses the failover before anything is created. A live failover powers
    the source off (asks first, or --yes); if it fails after that, the source is powered on again. It ends
    active: then `vmferry commit VM` (it lives in CloudStack) or `vmferry revert VM`.
    """
    blocks = BlockChoice("failover", vcenter=vcenter, agent=agent, cloudstack=cloudstack, lab=lab)
    networking = {
        key: value
        for key, value in (("network_map", _pairs(network, "--network")), ("ip_addresses", _pairs(ip, "--ip")))
        if value
    }
    live = mode is FailoverMode.live
    with operation(ctx, f"failover {vm}") as cli:
        from flows.failover import failover_vm

        recorded_vm(vm)  # unknown VM: exit 3 before anything in CloudStack is touched
        if live:
            question = f"Power {vm} off in vCenter and run it in CloudStack from now on?"
            confirm(yes, question, f"--mode live for VM {vm!r}")
        parameters: dict[str, Any] = {"vm": vm, "mode": mode.value, **networking}
        parameters |= {"confirm_live": True} if live else {}
        # only what differs from the flow's defaults, so a deployment's own defaults stay in force
        parameters |= {} if prepare_guest else {"prepare_guest": False}
        parameters |= {"virtio_win": str(virtio_win)} if virtio_win else {}

        def run() -> Any:
            preparation = {"prepare_guest": prepare_guest, "virtio_win": str(virtio_win) if virtio_win else None}
            if not live:
                return failover_vm(vm, blocks.cloudstack_block(), mode="test", **networking, **preparation)

            def copy(vcenter_block: Any, agent_block: Any) -> Any:
                cloudstack_block = blocks.cloudstack_block()
                options = {"confirm_live": True, **networking, **preparation}
                return failover_vm(vm, cloudstack_block, "live", vcenter_block, agent_block, **options)

            # a live failover's last step before the switch is a final sync: the agent copies, with bars
            return copy_vm(blocks, vm, "cloudstack", cli.err, progress, copy)

        Delivery(cli, submit, wait, as_json).flow(
            "failover-vm",
            parameters,
            blocks,
            ("cloudstack", "agent", "vcenter"),
            run=run,
            show=lambda result: devices_table(
                f"{result.mode} failover of {vm}: CloudStack VM {result.destination_vm_id}", result.devices
            ),
        )


@app.command(epilog=EXIT_CODES)
def cleanup(
    ctx: typer.Context,
    vm: VMArgument,
    cloudstack: CloudStackOption = None,
    lab: LabOption = False,
    submit: SubmitOption = None,
    wait: WaitOption = False,
    as_json: JsonOption = False,
) -> None:
    """Roll a test failover back: test VM destroyed, every volume left detached. Safe to run again."""
    blocks = BlockChoice("cleanup", cloudstack=cloudstack, lab=lab)
    with operation(ctx, f"cleanup {vm}") as cli:
        from flows.cleanup import cleanup_failover

        recorded_vm(vm)

        def show(result: Any) -> str:
            if not result.did_anything:
                return f"{vm}: nothing to clean up (no test VM, every volume detached)"
            return (
                f"{vm}: removed test VM(s) {', '.join(result.removed_vms) or 'none'}; took "
                f"{len(result.volumes_returned)} volume(s) off the test VM (left detached, ready to sync)"
            )

        Delivery(cli, submit, wait, as_json).flow(
            "cleanup-failover",
            {"vm": vm},
            blocks,
            ("cloudstack",),
            run=lambda: cleanup_failover(vm, blocks.cloudstack_block()),
            show=show,
        )


@app.command(epilog=EXIT_CODES)
def commit(
    ctx: typer.Context,
    vm: LiveVMArgument,
    cloudstack: CloudStackOption = None,
    lab: LabOption = False,
    submit: SubmitOption = None,
    wait: WaitOption = False,
    as_json: JsonOption = False,
) -> None:
    """Make an active live failover final: the VM lives in CloudStack, its volumes are the CloudStack VM's.

    Replication refuses the VM from now on and its per-VM replication schedules are paused.
    """
    blocks = BlockChoice("commit", cloudstack=cloudstack, lab=lab)
    with operation(ctx, f"commit {vm}") as cli:
        from flows.live_failover import commit_failover

        recorded_vm(vm)
        Delivery(cli, submit, wait, as_json).flow(
            "commit-failover",
            {"vm": vm},
            blocks,
            ("cloudstack",),
            run=lambda: commit_failover(vm, blocks.cloudstack_block()),
            show=lambda result: (
                f"{result.vm}: migrated to CloudStack VM {result.destination_vm_id} (failover {result.failover_id}); "
                f"volumes {', '.join(result.volumes)} are that VM's; replication stopped"
                + (f", paused {', '.join(result.paused_deployments)}" if result.paused_deployments else "")
            ),
        )


@app.command(epilog=EXIT_CODES)
def revert(
    ctx: typer.Context,
    vm: LiveVMArgument,
    cloudstack: CloudStackOption = None,
    vcenter: VCenterOption = None,
    lab: LabOption = False,
    submit: SubmitOption = None,
    wait: WaitOption = False,
    yes: YesOption = False,
    as_json: JsonOption = False,
) -> None:
    """Undo an active live failover: CloudStack VM destroyed, volumes back to replication, source powered on.

    What the VM wrote in CloudStack since the failover is discarded: asks first, or --yes.
    """
    blocks = BlockChoice("revert", vcenter=vcenter, cloudstack=cloudstack, lab=lab)
    with operation(ctx, f"revert {vm}") as cli:
        from flows.live_failover import revert_failover

        recorded_vm(vm)
        question = f"Destroy {vm}'s CloudStack VM (discarding what it wrote) and power the source on?"
        confirm(yes, question, f"revert of VM {vm!r}")

        def run() -> Any:
            blocks.require("cloudstack", "vcenter")
            return revert_failover(vm, blocks.cloudstack_block(), blocks.vcenter_block(), confirm_revert=True)

        Delivery(cli, submit, wait, as_json).flow(
            "revert-failover",
            {"vm": vm, "confirm_revert": True},
            blocks,
            ("cloudstack", "vcenter"),
            run=run,
            show=lambda result: (
                f"{result.vm}: failover {result.failover_id} reverted; CloudStack VM "
                f"{result.removed_vm or '(gone already)'} removed, {len(result.volumes_detached)} volume(s) back to "
                f"replication (detached), source {result.source}"
            ),
        )
