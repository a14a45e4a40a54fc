"""Observed inventories for catalog tests, shaped like what vcsim and real vSphere report."""

from __future__ import annotations

from common.inventory import ObservedDisk, ObservedVM


def disk(
    key: int,
    *,
    controller_key: int = 1000,
    bus_number: int = 0,
    unit: int = 0,
    capacity_mib: int = 64,
    file_name: str | None = None,
    backing_uuid: str | None = None,
    label: str | None = None,
) -> ObservedDisk:
    file_name = file_name or f"[datastore1] vm/disk-{key}.vmdk"
    return ObservedDisk(
        device_key=key,
        controller_key=controller_key,
        bus="scsi",
        bus_number=bus_number,
        unit_number=unit,
        capacity_bytes=capacity_mib * 2**20,
        backing_uuid=backing_uuid,
        file_name=file_name,
        base_file_name=file_name,
        label=label or f"Hard disk {key}",
        disk_mode="persistent",
    )


def vm(*disks: ObservedDisk, name: str = "pgtest1", uuid: str = "5012-aaaa", boot_key: int | None = None):
    return ObservedVM(
        vcenter="vc-test",
        instance_uuid=uuid,
        moref="vm-42",
        name=name,
        cpu_count=2,
        memory_mb=2048,
        power_state="poweredOn",
        boot_disk_key=boot_key,
        disks=tuple(disks),
    )


# vcsim hands out keys such as 203 or 255511522; unit numbers repeat across controllers.
DB3 = vm(
    disk(255511522, controller_key=1000, bus_number=0, unit=0, capacity_mib=64),
    disk(203, controller_key=1000, bus_number=0, unit=1, capacity_mib=32),
    disk(204, controller_key=1001, bus_number=1, unit=0, capacity_mib=48),
    name="db3",
    uuid="5012-db3",
)
