"""Change lab VMs the way an operator would, for tests: add or remove disks, rewrite disk bytes."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Mapping
from pathlib import Path

from pyVmomi import vim

from infra.lab import dsfiles
from infra.lab.cowd import cowd_delta, delta_descriptor
from infra.lab.seed import (
    disk_add_spec,
    disk_capacity_bytes,
    require_vm,
    run_task,
    scsi_controllers,
    virtual_disks,
    vmdk_descriptor,
)
from infra.lab.vcenter import LabVCenter, session

# Unit 7 of a SCSI bus is the controller itself.
SCSI_UNITS = [u for u in range(16) if u != 7]


def find_disk(vm: vim.VirtualMachine, device_key: int) -> vim.vm.device.VirtualDisk:
    for disk in virtual_disks(vm):
        if disk.key == device_key:
            return disk
    raise LookupError(f"{vm.name} has no disk with device key {device_key}")


def add_disk(
    si: vim.ServiceInstance,
    vm_name: str,
    size_bytes: int,
    controller_key: int | None = None,
    file_name: str | None = None,
) -> int:
    """Add an empty disk on the given SCSI controller (default: the lowest bus); return the key vSphere chose.

    The file name is left to the server (only the datastore is given), as an operator's client would do,
    unless ``file_name`` (a datastore path) names it, e.g. reusing a removed disk's name.
    """
    vm = require_vm(si, vm_name)
    controllers = scsi_controllers(vm)
    if not controllers:
        raise LookupError(f"{vm_name} has no SCSI controller")
    if controller_key is None:
        controller = controllers[0]
    else:
        matching = [c for c in controllers if c.key == controller_key]
        if not matching:
            raise LookupError(f"{vm_name} has no SCSI controller with key {controller_key}")
        controller = matching[0]
    used = {d.unitNumber for d in vm.config.hardware.device if d.controllerKey == controller.key}
    free = [u for u in SCSI_UNITS if u not in used]
    if not free:
        raise RuntimeError(f"{vm_name}: controller {controller.key} has no free unit")
    datastore = dsfiles.DatastorePath.parse(vm.config.files.vmPathName).datastore
    before = {d.key for d in virtual_disks(vm)}
    spec = disk_add_spec(
        controller_key=controller.key,
        unit=free[0],
        size_bytes=size_bytes,
        file_name=file_name or f"[{datastore}]",
        temp_key=-1,
    )
    run_task(vm.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=[spec])))
    added = [d for d in virtual_disks(vm) if d.key not in before]
    if len(added) != 1:
        raise RuntimeError(f"{vm_name}: expected one new disk, found {[d.key for d in added]}")
    return int(added[0].key)


def add_readable_disk(
    si: vim.ServiceInstance, lab: LabVCenter, vm_name: str, size_bytes: int, file_name: str | None = None
) -> int:
    """``add_disk``, then the descriptor and zeroed extent ESXi would have written (vcsim leaves both empty), so
    an agent can read the new disk."""
    key = add_disk(si, vm_name, size_bytes, file_name=file_name)
    backing = find_disk(require_vm(si, vm_name), key).backing
    descriptor = backing.fileName
    flat = dsfiles.flat_path(descriptor)
    cookie = dsfiles.session_cookie(si)
    text = vmdk_descriptor(flat.rsplit("/", 1)[-1], size_bytes, getattr(backing, "uuid", None))
    dsfiles.upload(lab, descriptor, text, cookie=cookie)
    dsfiles.upload(lab, flat, bytes(size_bytes), cookie=cookie)
    return key


def remove_disk(si: vim.ServiceInstance, vm_name: str, device_key: int) -> None:
    """Detach a disk and delete its files (fileOperation destroy)."""
    vm = require_vm(si, vm_name)
    disk = find_disk(vm, device_key)
    spec = vim.vm.device.VirtualDeviceSpec(operation="remove", fileOperation="destroy", device=disk)
    run_task(vm.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=[spec])))


def disk_flat_path(si: vim.ServiceInstance, vm_name: str, device_key: int) -> str:
    """Datastore path of a disk's raw extent. Valid for the lab's flat disks, not for snapshot deltas."""
    vm = require_vm(si, vm_name)
    return dsfiles.flat_path(find_disk(vm, device_key).backing.fileName)


def read_disk_bytes(lab: LabVCenter, vm_name: str, device_key: int) -> bytes:
    """The whole disk as the datastore holds it. A disk never written reads as zeros of its capacity."""
    with session(lab) as si:
        vm = require_vm(si, vm_name)
        disk = find_disk(vm, device_key)
        capacity = disk_capacity_bytes(disk)
        flat = dsfiles.flat_path(disk.backing.fileName)
        cookie = dsfiles.session_cookie(si)
        data = b""
        # vcsim creates a new disk's extent as an empty file (a ranged GET answers 416); a real flat extent
        # has the full capacity.
        if dsfiles.stat_size(lab, flat, cookie=cookie):
            with tempfile.TemporaryDirectory(prefix="vmferry-disk-") as tmp:
                target = Path(tmp) / "flat"
                dsfiles.download(lab, flat, target, cookie=cookie)
                data = target.read_bytes()
    return data.ljust(capacity, b"\0")


def disk_sha256(lab: LabVCenter, vm_name: str, device_key: int) -> str:
    return hashlib.sha256(read_disk_bytes(lab, vm_name, device_key)).hexdigest()


def write_disk_bytes(lab: LabVCenter, vm_name: str, device_key: int, offset: int, data: bytes) -> str:
    """Overwrite part of a disk; return the disk's new sha256.

    The HTTP file API has no ranged PUT, so the whole extent is downloaded, changed and uploaded again;
    lab disks are small enough for that.
    """
    content = bytearray(read_disk_bytes(lab, vm_name, device_key))
    if offset < 0 or offset + len(data) > len(content):
        raise ValueError(f"write of {len(data)} bytes at {offset} is outside the {len(content)}-byte disk")
    content[offset : offset + len(data)] = data
    with session(lab) as si:
        flat = disk_flat_path(si, vm_name, device_key)
        dsfiles.upload(lab, flat, bytes(content), cookie=dsfiles.session_cookie(si))
    return hashlib.sha256(content).hexdigest()


def set_change_tracking(si: vim.ServiceInstance, vm_name: str, enabled: bool) -> None:
    """Switch CBT on or off by reconfiguring, as an operator would; off then on starts a new CBT epoch."""
    vm = require_vm(si, vm_name)
    run_task(vm.ReconfigVM_Task(vim.vm.ConfigSpec(changeTrackingEnabled=enabled)))


def reset_change_tracking(si: vim.ServiceInstance, vm_name: str) -> None:
    """A CBT reset (KB 2139574): change ids handed out before are refused from now on."""
    set_change_tracking(si, vm_name, False)
    set_change_tracking(si, vm_name, True)


def make_cbt_omit_changes(si: vim.ServiceInstance, vm_name: str, omit: bool) -> None:
    """Lab only: the patched vcsim drops the first changed area of every CBT answer, like a CBT bug."""
    vm = require_vm(si, vm_name)
    option = vim.option.OptionValue(key="vmferry.lab.cbtOmitChangedArea", value="TRUE" if omit else "FALSE")
    run_task(vm.ReconfigVM_Task(vim.vm.ConfigSpec(extraConfig=[option])))


def create_user_snapshot(si: vim.ServiceInstance, vm_name: str, name: str) -> str:
    """A snapshot the VM's owner keeps (not vmferry's); returns its moref."""
    vm = require_vm(si, vm_name)
    return str(
        run_task(vm.CreateSnapshot_Task(name=name, description="kept by its owner", memory=False, quiesce=False))._moId
    )


def put_disk_on_delta(
    lab: LabVCenter, vm_name: str, device_key: int, grains: Mapping[int, bytes], *, sesparse: bool = False
) -> str:
    """Put a disk on a snapshot delta over its flat disk, as vSphere shows a VM with snapshots of its own (vcsim's
    snapshots create none): a vmfsSparse (COWD) delta holding ``grains`` (64 KiB grain index -> bytes), or with
    ``sesparse`` a descriptor naming an SEsparse extent. Returns the delta's descriptor path. The disk's content
    is then the flat disk with the grains laid over it; ``read_disk_bytes`` still reads the flat disk."""
    with session(lab) as si:
        vm = require_vm(si, vm_name)
        disk = find_disk(vm, device_key)
        base = disk.backing.fileName
        capacity = disk_capacity_bytes(disk)
        delta = base[: -len(".vmdk")] + "-000001.vmdk"
        stem = delta.rsplit("/", 1)[-1][: -len(".vmdk")]
        parent_name = base.rsplit("/", 1)[-1]
        cookie = dsfiles.session_cookie(si)
        if sesparse:
            descriptor = delta_descriptor(capacity, f"{stem}-sesparse.vmdk", parent_name).replace(
                b"VMFSSPARSE", b"SESPARSE"
            )
        else:
            descriptor = delta_descriptor(capacity, f"{stem}-delta.vmdk", parent_name)
            folder = delta.rsplit("/", 1)[0]
            dsfiles.upload(lab, f"{folder}/{stem}-delta.vmdk", cowd_delta(capacity, grains), cookie=cookie)
        dsfiles.upload(lab, delta, descriptor, cookie=cookie)
        # vcsim checks that a disk's descriptor and -flat file exist before it accepts a backing.
        dsfiles.upload(lab, dsfiles.flat_path(delta), b"", cookie=cookie)
        parent = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(fileName=base, diskMode="persistent")
        disk.backing = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
            fileName=delta, diskMode="persistent", parent=parent
        )
        edit = vim.vm.device.VirtualDeviceSpec(operation="edit", device=disk)
        run_task(vm.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=[edit])))
    return delta
