"""Which volume goes on which device of the destination VM. Pure: the rules are CloudStack's own.

Device id 0 is the ROOT disk; 3 is reserved for the CD-ROM on every hypervisor, so data disks take 1, 2, 4,
5, ... in the source's order (bus, controller bus number, unit number). The OS disk is the one the catalog
records as boot disk (vSphere boot order, else the first disk, or the operator's choice), never "disk-2000".
"""

from __future__ import annotations

from pydantic import BaseModel

from catalog.inventory import RecordedDisk, RecordedVM
from catalog.replication import VolumeView
from common.inventory import BUS_BOOT_RANK
from vmferry.errors import Refused

ROOT_DEVICE_ID = 0
CDROM_DEVICE_ID = 3


class FailoverRefused(Refused):
    """The failover cannot be planned; nothing was changed in CloudStack."""


class PlannedAttachment(BaseModel):
    vm_disk_id: int
    disk_id: str
    volume_id: str
    replicated_volume_id: int
    device_id: int
    is_root: bool


def data_device_ids(count: int, max_data_disks: int, vm_name: str = "?") -> list[int]:
    """``max_data_disks`` is CloudStack's maxdatavolumeslimit for the destination's hypervisor."""
    if count > max_data_disks:
        raise FailoverRefused(
            f"VM {vm_name!r} has {count} data disks, but a CloudStack VM of this destination takes at most "
            f"{max_data_disks}; remove disks from the VM or raise maxdatavolumeslimit (updateHypervisorCapabilities). "
            "Nothing was created"
        )
    ids = [n for n in range(1, max_data_disks + 2) if n != CDROM_DEVICE_ID]
    return ids[:count]


def _source_order(disk: RecordedDisk) -> tuple[int, int, int, int]:
    return (BUS_BOOT_RANK.get(disk.bus, 9), disk.bus_number, disk.unit_number or 0, disk.device_key)


def plan_attachments(vm: RecordedVM, volumes: dict[int, VolumeView], max_data_disks: int) -> list[PlannedAttachment]:
    disks = vm.present_disks()
    if not disks:
        raise FailoverRefused(f"VM {vm.name!r} has no disks in the catalog; discover it again, then replicate")
    missing = [d.disk_id for d in disks if d.vm_disk_id not in volumes]
    if missing:
        raise FailoverRefused(f"VM {vm.name!r}: disk(s) {missing} have no replicated volume yet; replicate first")
    # a volume whose last copy was interrupted holds a mix of old and new blocks: never boot from it
    incomplete = [d.disk_id for d in disks if not volumes[d.vm_disk_id].complete]
    if incomplete:
        raise FailoverRefused(
            f"VM {vm.name!r}: the volume(s) of disk(s) {incomplete} hold no complete copy (never synced, or the last "
            "sync was interrupted); replicate again first"
        )
    roots = [d for d in disks if d.is_boot]
    if len(roots) != 1:
        raise FailoverRefused(f"VM {vm.name!r} has no recorded OS disk; set one with set_boot_disk")
    (root,) = roots
    data = sorted((d for d in disks if d is not root), key=_source_order)
    ordered = [(root, ROOT_DEVICE_ID), *zip(data, data_device_ids(len(data), max_data_disks, vm.name), strict=True)]
    return [
        PlannedAttachment(
            vm_disk_id=disk.vm_disk_id,
            disk_id=disk.disk_id,
            volume_id=volumes[disk.vm_disk_id].volume_id,
            replicated_volume_id=volumes[disk.vm_disk_id].id,
            device_id=device_id,
            is_root=device_id == ROOT_DEVICE_ID,
        )
        for disk, device_id in ordered
    ]


def check_attached(
    plan: list[PlannedAttachment], actual: dict[str, tuple[int | None, str]], vm_name: str = "?"
) -> None:
    """``actual`` maps volume id -> (device id, type) as CloudStack lists the destination VM's volumes."""
    problems = []
    planned_ids = {p.volume_id for p in plan}
    extra = sorted(set(actual) - planned_ids)
    if extra:
        problems.append(f"unexpected volume(s) {extra} on the VM")
    for item in plan:
        device_id, volume_type = actual.get(item.volume_id, (None, "missing"))
        if device_id != item.device_id:
            problems.append(
                f"{item.disk_id} (volume {item.volume_id}) is on device {device_id}, planned {item.device_id}"
            )
        expected_type = "ROOT" if item.is_root else "DATADISK"
        if volume_type != expected_type:
            problems.append(f"{item.disk_id} (volume {item.volume_id}) is {volume_type}, expected {expected_type}")
    if len(actual) != len(plan):
        problems.append(f"{len(actual)} volumes attached for {len(plan)} source disks")
    if problems:
        raise FailoverRefused(
            f"VM {vm_name!r}: device check of the destination failed: " + "; ".join(problems) + ". The failover is "
            "rolled back; check the volumes in CloudStack (a VM or an operator changed them meanwhile), then fail "
            "over again"
        )


class DestinationSizing(BaseModel):
    """What deployVirtualMachine is given for CPU and memory (nothing: the fixed offering decides), and a
    warning for the operator when a fixed offering is smaller than the source."""

    cpu_number: int | None = None
    cpu_speed_mhz: int | None = None
    memory_mb: int | None = None
    warning: str | None = None

    def deploy_arguments(self) -> dict[str, int]:
        values = {"cpu_number": self.cpu_number, "cpu_speed_mhz": self.cpu_speed_mhz, "memory_mb": self.memory_mb}
        return {key: value for key, value in values.items() if value is not None}


def plan_sizing(
    vm: RecordedVM,
    *,
    offering_name: str,
    customized: bool,
    offering_cpus: int | None,
    offering_memory_mb: int | None,
    cpu_speed_mhz: int,
) -> DestinationSizing:
    """The destination sized like the source (CPU count, memory) when the service offering is a custom one; a
    fixed offering decides itself, with a warning when it is smaller than the source. A source whose size the
    catalog does not know gets 1 CPU and 1 GiB on a custom offering (CloudStack needs a value)."""
    if customized:
        return DestinationSizing(
            cpu_number=vm.cpu_count or 1, cpu_speed_mhz=cpu_speed_mhz, memory_mb=vm.memory_mb or 1024
        )
    if (offering_cpus or 0) < (vm.cpu_count or 0) or (offering_memory_mb or 0) < (vm.memory_mb or 0):
        return DestinationSizing(
            warning=(
                f"service offering {offering_name} ({offering_cpus} CPUs, {offering_memory_mb} MiB) is smaller than "
                f"VM {vm.name!r} ({vm.cpu_count} CPUs, {vm.memory_mb} MiB); a custom offering sizes the destination "
                "like the source"
            )
        )
    return DestinationSizing()
