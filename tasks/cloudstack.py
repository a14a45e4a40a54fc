"""CloudStack tasks: create (or adopt) a disk's volume, attach it to the hub and find its device by id."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.cloudstack import CloudStack
from catalog import default_catalog
from catalog.inventory import RecordedDisk, RecordedVM
from catalog.replication import VolumeView, record_attachment, record_volume, volume_for_disk
from clients.cloudstack import device_candidates, find_volume_device
from vmferry.errors import Refused, retry_unless_permanent

GiB = 2**30


class VolumeDeviceError(Exception):
    """An attached volume is not where CloudStack's answer says it must be; nothing is written to it."""


def volume_name(vm: RecordedVM, disk: RecordedDisk) -> str:
    """Deterministic, so a retried run finds the volume an interrupted run created (ids only, no VM names)."""
    return f"vmferry-vm{vm.vm_context_id}-{disk.disk_id}"


class VolumeRefused(Refused):
    """A replicated volume cannot be used as it is (another VM holds it, it is smaller than its disk, its name is
    ambiguous): our own refusal, not CloudStack's, and nothing was written."""


@task(
    retries=2,
    retry_delay_seconds=2,
    cache_policy=NO_CACHE,
    retry_condition_fn=retry_unless_permanent,
    task_run_name="volume-{disk.disk_id}",
)
def ensure_volume(cloudstack: CloudStack, vm: RecordedVM, disk: RecordedDisk) -> VolumeView:
    """The disk's volume: the recorded one, else one an interrupted run created, else a new one."""
    recorded = volume_for_disk(default_catalog(), disk.id)
    if recorded is not None:
        if recorded.disk_generation != disk.generation or recorded.size_bytes < disk.capacity_bytes:
            raise VolumeRefused(
                f"VM {vm.name!r} disk {disk.disk_id} changed size since volume {recorded.volume_id} was made for "
                "it; resize the volume in CloudStack (or delete it and its catalog row) before replicating again",
            )
        return recorded
    with cloudstack.client() as client:
        name = volume_name(vm, disk)
        existing = [v for v in client.list_volumes(name=name) if v.name == name]
        if len(existing) > 1:
            raise VolumeRefused(f"{len(existing)} CloudStack volumes are named {name}; keep one")
        volume = (
            existing[0]
            if existing
            else client.create_volume(
                name, math.ceil(disk.capacity_bytes / GiB), cloudstack.zone_id, cloudstack.disk_offering_id
            )
        )
    return record_volume(
        default_catalog(),
        vm_disk_id=disk.id,
        volume_id=volume.id,
        zone_id=cloudstack.zone_id,
        size_bytes=volume.size,
        disk_generation=disk.generation,
    )


def _device_size(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def wait_for_device(dev_root: Path, volume_id: str, minimum_bytes: int, timeout: float = 30.0) -> Path:
    """The hub's device for a volume, from its id (``/dev/disk/by-id/virtio-<serial>`` on virtio-blk,
    ``scsi-0QEMU_QEMU_HARDDISK_<serial>`` on virtio-scsi), checked for size."""
    deadline = time.monotonic() + timeout
    while (path := find_volume_device(dev_root, volume_id)) is None:
        if time.monotonic() > deadline:
            names = " or ".join(str(p) for p in device_candidates(dev_root, volume_id))
            raise VolumeDeviceError(f"volume {volume_id} is attached but {names} did not appear within {timeout:.0f} s")
        time.sleep(0.1)
    size = _device_size(path)
    if size < minimum_bytes:
        raise VolumeDeviceError(f"{path} (volume {volume_id}) holds {size} bytes, less than the disk's {minimum_bytes}")
    return path


@task(
    retries=2,
    retry_delay_seconds=2,
    cache_policy=NO_CACHE,
    retry_condition_fn=retry_unless_permanent,
    task_run_name="attach-to-hub-{volume.volume_id}",
)
def attach_to_hub(cloudstack: CloudStack, volume: VolumeView, capacity_bytes: int) -> VolumeView:
    """Attach the volume to the hub (unless it already is) and find its device from CloudStack's answer."""
    with cloudstack.client() as client:
        current = client.get_volume(volume.volume_id)
        if current.virtual_machine_id not in (None, cloudstack.hub_vm_id):
            raise VolumeRefused(
                f"volume {volume.volume_id} is attached to VM {current.virtual_machine_id}, not the hub: it is not "
                "replication's to write; if a failover put it there, clean that up (test) or revert it (live) first"
            )
        if current.virtual_machine_id is None:
            current = client.attach_volume(volume.volume_id, cloudstack.hub_vm_id)
    device = wait_for_device(cloudstack.device_root_path(), volume.volume_id, capacity_bytes)
    return record_attachment(
        default_catalog(),
        volume.volume_id,
        vm_id=cloudstack.hub_vm_id,
        device_id=current.device_id,
        device_path=str(device),
        state="attached-to-hub",
    )
