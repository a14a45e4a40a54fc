"""What the hub prepares for each disk of a copy, and the checks made before anything is written."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from catalog.inventory import RecordedVM


class PreflightError(Exception):
    """A copy was refused before a byte was written; the message names the VM, the disk and the fix."""


class DiskTarget(BaseModel):
    """One disk's destination: a file or device that a qemu-nbd export will serve."""

    vm_disk_id: int
    disk_id: str
    device_key: int
    capacity_bytes: int
    file_path: Path
    image_format: str = "qcow2"
    target_is_zero: bool = True
    previous_change_id: str | None = None


def check_plan(vm: RecordedVM, targets: list[DiskTarget]) -> None:
    """Every present disk of the VM has exactly one target, no key or file twice, no target for another disk."""
    present = {disk.vm_disk_id: disk for disk in vm.present_disks()}
    ids = [t.vm_disk_id for t in targets]
    twice = sorted({t.disk_id for t in targets if ids.count(t.vm_disk_id) > 1})
    if twice:
        raise PreflightError(f"VM {vm.name!r}: disk(s) {twice} have more than one target")
    keys = [t.device_key for t in targets]
    if len(set(keys)) != len(keys):
        raise PreflightError(f"VM {vm.name!r}: device keys {keys} repeat; each disk needs its own key")
    files = [str(t.file_path) for t in targets]
    shared = sorted({f for f in files if files.count(f) > 1})
    if shared:
        raise PreflightError(f"VM {vm.name!r}: target file(s) {shared} are given to more than one disk")
    foreign = sorted(t.disk_id for t in targets if t.vm_disk_id not in present)
    if foreign:
        raise PreflightError(f"VM {vm.name!r} has no present disk(s) {foreign}; run discovery again")
    missing = sorted(disk.disk_id for disk_id, disk in present.items() if disk_id not in ids)
    if missing:
        raise PreflightError(
            f"VM {vm.name!r}: disk(s) {missing} have no target; a VM is copied whole, from one snapshot"
        )
    for target in targets:
        disk = present[target.vm_disk_id]
        if (target.disk_id, target.device_key) != (disk.disk_id, disk.device_key):
            raise PreflightError(
                f"VM {vm.name!r}: target for catalog disk {disk.vm_disk_id} says {target.disk_id}/{target.device_key}, "
                f"the catalog says {disk.disk_id}/{disk.device_key}"
            )
        if target.capacity_bytes < disk.capacity_bytes:
            raise PreflightError(
                f"VM {vm.name!r} disk {disk.disk_id}: target is {target.capacity_bytes} bytes, smaller than "
                f"the disk's {disk.capacity_bytes}"
            )


def check_target_size(vm_name: str, target: DiskTarget, actual_bytes: int) -> None:
    if actual_bytes < target.capacity_bytes:
        raise PreflightError(
            f"VM {vm_name!r} disk {target.disk_id}: {target.file_path} holds {actual_bytes} bytes, smaller than "
            f"the disk's {target.capacity_bytes}; nothing was written"
        )


def file_is_inside(path: Path, root: Path) -> bool:
    """Whether ``path`` resolves to somewhere under ``root`` (no ``..`` or symlink escape)."""
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True
