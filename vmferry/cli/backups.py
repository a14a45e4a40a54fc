"""``vmferry backup``, ``restore``, ``verify``, ``prune`` and ``files``: restore points in a repository."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from catalog import default_catalog
from catalog.inventory import get_vm
from vmferry.cli.app import EXIT_CODES, app, operation
from vmferry.cli.output import dicts_table, points_table, table
from vmferry.cli.runner import Delivery, JsonOption, ProgressOption, SubmitOption, WaitOption, copy_vm
from vmferry.cli.selection import (
    AgentOption,
    BlockChoice,
    LabOption,
    RepositoryOption,
    VCenterOption,
    point_in,
    recorded_vm,
)
from vmferry.retention import RetentionPolicy

PointArgument = Annotated[int, typer.Argument(metavar="POINT", help="Restore point id (see `vmferry status`).")]
VMArgument = Annotated[str, typer.Argument(metavar="VM", help="VM name, instance UUID or moref.")]


class BackupKind(StrEnum):
    auto = "auto"
    full = "full"
    incremental = "incremental"


class ImageFormat(StrEnum):
    raw = "raw"
    qcow2 = "qcow2"


@app.command(epilog=EXIT_CODES)
def backup(
    ctx: typer.Context,
    vm: VMArgument,
    kind: Annotated[BackupKind, typer.Option(help="auto: incremental on a valid chain, else full.")] = BackupKind.auto,
    repository: RepositoryOption = None,
    agent: AgentOption = None,
    vcenter: VCenterOption = None,
    lab: LabOption = False,
    submit: SubmitOption = None,
    wait: WaitOption = False,
    progress: ProgressOption = None,
    as_json: JsonOption = False,
) -> None:
    """Back up every disk of a VM from one snapshot into a repository; prints the new restore point.

    The restore point is committed only when every disk was copied and checksummed.
    A failure leaves no partial file, NBD export, port lease or snapshot behind.
    """
    blocks = BlockChoice("backup", vcenter=vcenter, agent=agent, repository=repository, lab=lab)
    with operation(ctx, f"backup {vm}") as cli:

        def run() -> Any:
            from flows.backup import backup_vm

            def copy(vcenter_block: Any, agent_block: Any) -> Any:
                return backup_vm(vm, blocks.repository_block(), agent_block, vcenter_block, kind=kind.value)

            return copy_vm(blocks, vm, "repository", cli.err, progress, copy)

        Delivery(cli, submit, wait, as_json).flow(
            "backup-vm",
            {"vm": vm, "kind": kind.value},
            blocks,
            ("repository", "agent", "vcenter"),
            run=run,
            show=lambda point: points_table(
                f"{vm}: restore point {point.id} ({point.kind}) in {point.repository}", [point]
            ),
        )


@app.command(epilog=EXIT_CODES)
def restore(
    ctx: typer.Context,
    point_id: PointArgument,
    to: Annotated[Path, typer.Option("--to", help="Directory the disks or files are written into.")],
    disk: Annotated[str | None, typer.Option(help="Only this disk (disk id like disk-2000, or catalog id).")] = None,
    image_format: Annotated[ImageFormat, typer.Option("--format", help="Disk image format.")] = ImageFormat.raw,
    files: Annotated[
        list[str] | None,
        typer.Option(
            "--file", metavar="PATH", help="Restore this file instead of disks (repeatable); needs --partition."
        ),
    ] = None,
    partition: Annotated[int | None, typer.Option(help="Partition number the --file paths are on (1 = first).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace files that already exist.")] = False,
    repository: RepositoryOption = None,
    lab: LabOption = False,
    submit: SubmitOption = None,
    wait: WaitOption = False,
    as_json: JsonOption = False,
) -> None:
    """Restore a whole VM, one disk (--disk) or single files (--file, --partition) from a restore point.

    Disks are written as DIR/<disk id>.<raw|qcow2>; files keep their names.
    With --file and no --disk the files are read from the VM's OS disk.
    Nothing half-written is ever left under a final name.
    With --submit, DIR is on the machine of the worker that runs it.
    """
    if files and partition is None:
        raise typer.BadParameter("--file needs the partition it is on", param_hint="--partition")
    if partition is not None and not files:
        raise typer.BadParameter("--partition only goes with --file", param_hint="--partition")
    blocks = BlockChoice("restore", repository=repository, lab=lab)
    with operation(ctx, f"restore {point_id}") as cli:
        from flows.restore import restore_disk, restore_files, restore_vm

        point, repository_block = point_in(point_id, blocks, submit)
        flow: Callable[..., Any]
        if files:
            entry = point.disk(_disk_or_os_disk(disk, point.vm_context_id))
            flow, flow_name = restore_files, "restore-files"
            parameters: dict[str, Any] = {
                "point_id": point_id,
                "disk": entry.disk_id,
                "partition": partition,
                "paths": list(files),
                "destination_dir": str(to),
            }
        elif disk is not None:
            entry = point.disk(disk)  # unknown disk: exit 3 before anything is written
            flow, flow_name = restore_disk, "restore-disk"
            parameters = {
                "point_id": point_id,
                "disk": entry.disk_id,
                "destination": str(to / f"{entry.disk_id}.{image_format.value}"),
                "image_format": image_format.value,
            }
        else:
            flow, flow_name = restore_vm, "restore-vm"
            parameters = {"point_id": point_id, "destination_dir": str(to), "image_format": image_format.value}
        parameters["overwrite"] = overwrite

        def rows(result: Any) -> list[dict[str, Any]]:
            if files:
                return [
                    {"disk": parameters["disk"], "partition": partition, "file": f, "path": str(p)}
                    for f, p in zip(files, result, strict=True)
                ]
            restored = result if isinstance(result, list) else [result]
            return [{"disk": d.disk_id, "catalog id": d.vm_disk_id, "path": str(d.path)} for d in restored]

        Delivery(cli, submit, wait, as_json).flow(
            flow_name,
            parameters,
            blocks,
            ("repository",),
            run=lambda: flow(repository=repository_block, **parameters),
            show=lambda result: dicts_table(f"restored from point {point_id} ({point.kind}) into {to}", rows(result)),
            to_json=rows,
        )


def _disk_or_os_disk(disk: str | None, vm_context_id: int) -> str:
    source = disk or get_vm(default_catalog(), vm_context_id).boot_disk_id
    if source is None:
        raise typer.BadParameter("the VM has no OS disk recorded: name the disk", param_hint="--disk")
    return source


@app.command(epilog=EXIT_CODES)
def verify(
    ctx: typer.Context,
    point_id: PointArgument,
    boot: Annotated[
        bool, typer.Option("--boot", help="Also boot the point read-only in qemu (overlay, no network).")
    ] = False,
    boot_marker: Annotated[
        str, typer.Option(help="Text the guest prints on its serial console once up; '' judges by the firmware.")
    ] = "login:",
    boot_timeout: Annotated[float, typer.Option(min=1, help="Seconds to wait for the boot marker.")] = 180.0,
    repository: RepositoryOption = None,
    lab: LabOption = False,
    submit: SubmitOption = None,
    wait: WaitOption = False,
    as_json: JsonOption = False,
) -> None:
    """Check every file of a restore point (qemu-img check, stored checksum); with --boot, also boot it.

    The boot verdict and a screenshot are recorded as Prefect artifacts of the run.
    """
    blocks = BlockChoice("verify", repository=repository, lab=lab)
    with operation(ctx, f"verify {point_id}") as cli:
        from flows.verify import verify_restore_point

        _, block = point_in(point_id, blocks, submit)
        boot_options = {"boot": boot, "boot_marker": boot_marker, "boot_timeout_s": boot_timeout}
        Delivery(cli, submit, wait, as_json).flow(
            "verify-restore-point",
            {"point_id": point_id, **boot_options},
            blocks,
            ("repository",),
            run=lambda: verify_restore_point(point_id, block, **boot_options),
            show=lambda verdicts: table(
                f"restore point {point_id}: every disk reads as written" + (" and it boots" if boot else ""),
                ("disk", "file", "result"),
                ((v.disk_id, v.file_path, "ok") for v in verdicts),
            ),
        )


@app.command(epilog=EXIT_CODES)
def prune(
    ctx: typer.Context,
    vm: VMArgument,
    keep_last: Annotated[int, typer.Option(min=1, help="Keep the newest N points.")] = 7,
    keep_daily: Annotated[int, typer.Option(min=0, help="Keep the newest point of each of the last N days.")] = 0,
    keep_weekly: Annotated[int, typer.Option(min=0, help="Keep the newest point of each of the last N weeks.")] = 0,
    repository: RepositoryOption = None,
    lab: LabOption = False,
    submit: SubmitOption = None,
    wait: WaitOption = False,
    as_json: JsonOption = False,
) -> None:
    """Remove a VM's restore points beyond a retention policy; a point another one still builds on is kept."""
    blocks = BlockChoice("prune", repository=repository, lab=lab)
    with operation(ctx, f"prune {vm}") as cli:
        from flows.retention import prune_restore_points

        recorded_vm(vm)
        policy = RetentionPolicy(keep_last=keep_last, keep_daily=keep_daily, keep_weekly=keep_weekly)
        Delivery(cli, submit, wait, as_json).flow(
            "prune-restore-points",
            {"vm": vm, "policy": policy.model_dump(mode="json")},
            blocks,
            ("repository",),
            run=lambda: prune_restore_points(vm, blocks.repository_block(), policy),
            show=lambda pruned: (
                f"{vm}: pruned restore point(s) {', '.join(map(str, pruned))}" if pruned else f"{vm}: nothing to prune"
            ),
            to_json=lambda pruned: {"vm": vm, "pruned": pruned},
        )


@app.command(epilog=EXIT_CODES)
def files(
    ctx: typer.Context,
    point_id: PointArgument,
    path: Annotated[str, typer.Argument(metavar="[PATH]", help="Directory inside the partition.")] = "/",
    disk: Annotated[str | None, typer.Option(help="Disk id like disk-2000 (default: the VM's OS disk).")] = None,
    partition: Annotated[
        int | None, typer.Option(help="Partition to list PATH in (default: list the partitions only).")
    ] = None,
    repository: RepositoryOption = None,
    lab: LabOption = False,
    submit: SubmitOption = None,
    wait: WaitOption = False,
    as_json: JsonOption = False,
) -> None:
    """List a restore point's files: the partitions of a disk, or a directory in one (for `restore --file`)."""
    blocks = BlockChoice("files", repository=repository, lab=lab)
    with operation(ctx, f"files {point_id}") as cli:
        from flows.restore import list_backup_files

        point, block = point_in(point_id, blocks, submit)
        entry = point.disk(_disk_or_os_disk(disk, point.vm_context_id))  # unknown disk: exit 3
        parameters: dict[str, Any] = {"point_id": point_id, "disk": entry.disk_id, "partition": partition, "path": path}

        def show(listing: Any) -> Any:
            if partition is None:
                return table(
                    f"restore point {point_id}, {entry.disk_id}: partitions (list one with --partition)",
                    ("partition", "filesystem", "offset", "size"),
                    ((p.number, p.filesystem or "(not readable)", p.offset, p.size) for p in listing.partitions),
                )
            return table(
                f"restore point {point_id}, {entry.disk_id}, partition {partition}: {path}",
                ("path", "type", "size"),
                (
                    (item.path, "directory" if item.is_dir else "file", "" if item.is_dir else item.size)
                    for item in listing.entries
                ),
            )

        Delivery(cli, submit, wait, as_json).flow(
            "list-backup-files",
            parameters,
            blocks,
            ("repository",),
            run=lambda: list_backup_files(repository=block, **parameters),
            show=show,
        )
