"""What the ``vmferry`` command prints: JSON for scripts, rich tables for people.

The tables of VMs, disks and restore points are the product's view of the catalog: the lab demo
(infra/lab/demo.py) prints these same tables.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from vmferry.protection import describe_failover, format_age, format_time

if TYPE_CHECKING:
    from catalog.inventory import RecordedVM
    from catalog.restore_points import PointView


def emit_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def dump(model: Any) -> Any:
    """A pydantic model, or a list of them, as JSON-ready data."""
    if isinstance(model, list):
        return [dump(item) for item in model]
    return model.model_dump(mode="json")


def table(title: str, columns: Iterable[str], rows: Iterable[Sequence[object]], **options: Any) -> Table:
    """A table of ``columns`` whose cells are printed as ``str`` of each value."""
    built = Table(title=title, **options)
    for column in columns:
        built.add_column(column)
    for row in rows:
        built.add_row(*(str(value) for value in row))
    return built


def dicts_table(title: str, rows: list[dict[str, Any]], empty: Sequence[str] = ("path",)) -> Table:
    """Rows of one shape (their keys are the columns)."""
    return table(title, rows[0] if rows else empty, (row.values() for row in rows))


def key_value_table(title: str, values: Mapping[str, str]) -> Table:
    return table(title, ("what", "value"), values.items(), show_header=False)


def disks_table(vm: RecordedVM) -> Table:
    cbt = "CBT on" if vm.cbt_enabled else "CBT OFF: incrementals read whole disks (discover --enable-cbt)"
    return table(
        f"{vm.name}  (instance {vm.instance_uuid}, catalog id {vm.vm_context_id}, {cbt})",
        ("catalog id", "disk id", "label", "controller", "bus:unit", "capacity", "boot", "file"),
        (
            (
                disk.vm_disk_id,
                disk.disk_id,
                disk.label or "",
                disk.controller_key,
                f"{disk.bus}{disk.bus_number}:{disk.unit_number}",
                f"{disk.capacity_bytes / 2**20:.0f} MiB",
                "OS" if disk.is_boot else "",
                disk.file_name,
            )
            for disk in vm.present_disks()
        ),
    )


def points_table(title: str, points: list[PointView]) -> Table:
    return table(
        title,
        ("point", "kind", "parent", "disk", "catalog id", "file", "MiB written", "sha256"),
        (
            (
                point.id,
                point.kind,
                point.parent_id or "",
                disk.disk_id,
                disk.vm_disk_id,
                disk.file_path,
                f"{(disk.bytes_written or 0) / 2**20:.1f}",
                (disk.checksum or "")[:16],
            )
            for point in points
            for disk in point.disks
        ),
    )


def devices_table(title: str, devices: Iterable[Any]) -> Table:
    """A failover's devices: which volume is on which device id of the CloudStack VM."""
    return table(
        title,
        ("device id", "role", "disk", "catalog id", "volume"),
        ((d.device_id, d.role, d.disk_id, d.vm_disk_id, d.volume_id) for d in devices),
    )


# --- status ------------------------------------------------------------------------------------------------


def print_protection(out: Console, protection: list[Any]) -> None:
    out.print(
        table(
            "protection (newest restore point and last complete sync: the recovery points you have)",
            ("VM", "state", "newest point", "point age", "replicated disks", "last sync", "failover"),
            (
                (
                    p.vm,
                    p.state,
                    p.newest_point_id or "none",
                    format_age(p.newest_point_age_seconds),
                    f"{p.replicated_disks}/{p.disks}",
                    format_age(p.last_sync_age_seconds),
                    describe_failover(p.failover),
                )
                for p in protection
            ),
        )
    )


def print_status(out: Console, recorded: list[Any], points: list[Any], recent: list[Any], names: dict) -> None:
    out.print(
        table(
            "VMs",
            ("VM", "catalog id", "instance UUID", "moref", "disks", "OS disk"),
            (
                (vm.name, vm.vm_context_id, vm.instance_uuid, vm.moref, len(vm.present_disks()), vm.boot_disk_id)
                for vm in recorded
            ),
        )
    )
    for vm in recorded:
        out.print(disks_table(vm))
    if points:
        out.print(points_table("restore points (committed, and pending ones still being written)", points))
    else:
        out.print("no restore points")
    out.print(
        table(
            "jobs (newest first)",
            ("job", "kind", "VM", "state", "started", "finished", "error"),
            (
                (
                    job.id,
                    job.kind,
                    names.get(job.vm_context_id, str(job.vm_context_id or "")),
                    job.state,
                    format_time(job.created_at),
                    format_time(job.finished_at),
                    (job.error or "")[:120],
                )
                for job in recent
            ),
        )
    )


def print_retired_volumes(out: Console, retired: list[Any]) -> None:
    """Volumes of disks that are gone: vmferry never writes them again; deleting them is the operator's call."""
    if not retired:
        return
    out.print(
        table(
            "retired volumes (their disks are gone; delete them in CloudStack when no longer needed)",
            ("volume", "name", "catalog disk id", "retired at"),
            ((v.volume_id, v.name or "", v.vm_disk_id, v.retired_at) for v in retired),
        )
    )
