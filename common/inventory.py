"""What a source hypervisor reports about a VM and its disks, independent of pyvmomi and of the catalog.

The vSphere client produces these; the catalog records them. They are pydantic models so they travel through
Prefect task results and artifacts unchanged.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field

from common import names

# The BIOS order vSphere itself uses when no explicit boot order is set (Forklift documents the same).
BUS_BOOT_RANK = {"sata": 0, "ide": 1, "scsi": 2, "nvme": 3}

_SNAPSHOT_DELTA_SUFFIX = re.compile(r"-\d{6}(?=\.vmdk$)")


def base_disk_file(file_name: str) -> str:
    """The base VMDK of a disk whose backing may point at a snapshot delta (``vm-000001.vmdk``)."""
    return _SNAPSHOT_DELTA_SUFFIX.sub("", file_name)


class ObservedDisk(BaseModel):
    model_config = ConfigDict(frozen=True)

    device_key: int
    controller_key: int
    bus: str = Field(description="scsi, ide, sata or nvme")
    bus_number: int = Field(description="The controller's bus number")
    unit_number: int | None
    capacity_bytes: int
    backing_uuid: str | None = None
    file_name: str
    base_file_name: str
    label: str | None = None
    disk_mode: str | None = None

    @property
    def disk_id(self) -> str:
        return names.disk_id(self.device_key)

    def boot_sort_key(self) -> tuple[int, int, int, int]:
        return (BUS_BOOT_RANK.get(self.bus, 9), self.bus_number, self.unit_number or 0, self.device_key)


class ObservedNic(BaseModel):
    """A network adapter and the network (port group) it is connected to, as vSphere reports it."""

    model_config = ConfigDict(frozen=True)

    device_key: int
    mac_address: str | None = None
    network: str = Field(description="Port group name (standard or distributed); '' when not connected")
    adapter: str = Field(default="", description="vmxnet3, e1000e, ...")
    label: str | None = None


class ObservedVM(BaseModel):
    model_config = ConfigDict(frozen=True)

    vcenter: str = Field(description="Identity of the vCenter the VM was read from (its instance UUID)")
    instance_uuid: str
    moref: str
    name: str
    guest_os: str | None = None
    cpu_count: int | None = None
    memory_mb: int | None = None
    power_state: str | None = None
    cbt_enabled: bool = False
    boot_disk_key: int | None = Field(default=None, description="From config.bootOptions.bootOrder, if set")
    disks: tuple[ObservedDisk, ...] = ()
    nics: tuple[ObservedNic, ...] = Field(default=(), description="Network adapters in device-key order")

    def disks_in_boot_order(self) -> list[ObservedDisk]:
        return sorted(self.disks, key=ObservedDisk.boot_sort_key)
