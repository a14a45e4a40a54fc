"""Seed the lab vCenter with multi-disk VMs whose disks hold real, distinct content, and describe them.

The manifest records what vSphere reports (device keys, controllers, units, paths) next to what was written
(sha256, partition tables, known files), so later tests can prove every disk landed on its own target.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pyVim.task import WaitForTask
from pyVmomi import vim

from agent.dataplane.sources import escape_vmware
from infra.lab import dsfiles
from infra.lab.disks import (
    MIB,
    BuiltImage,
    DiskImageSpec,
    KnownFile,
    PartitionSpec,
    build_image,
    copy_image,
    seeded_bytes,
)
from infra.lab.vcenter import LabVCenter, session

MANIFEST_VERSION = 1
GPT_BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
GPT_LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
GPT_LINUX_SWAP = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"
GPT_LINUX_LVM = "E6D6D379-F507-44C2-A23C-238F2A3DF928"


@dataclass(frozen=True)
class LabDiskSpec:
    label: str
    bus: int
    unit: int
    image: DiskImageSpec
    boot: bool = False
    # a prebuilt raw image (a lab guest's disk, infra/lab/guest.py) to upload instead of building ``image``
    source: Path | None = None


@dataclass(frozen=True)
class LabVMSpec:
    name: str
    controllers: int
    disks: tuple[LabDiskSpec, ...]


def _lab_text(vm: str, disk: str) -> bytes:
    return f"{vm} disk {disk}\n".encode()


def lab_vm_specs() -> tuple[LabVMSpec, ...]:
    """pgtest1: 2 disks on SCSI 0. db3: 3 disks on two SCSI controllers, unit 0 used on both."""
    pgtest1 = LabVMSpec(
        name="pgtest1",
        controllers=1,
        disks=(
            LabDiskSpec(
                label="OS",
                bus=0,
                unit=0,
                boot=True,
                image=DiskImageSpec(
                    size_bytes=64 * MIB,
                    label="gpt",
                    label_id="5A0B1C2D-0001-4000-8000-00000000A001",
                    seed=101,
                    partitions=(
                        PartitionSpec(size_mib=4, type=GPT_BIOS_BOOT, content="random", random_mib=1),
                        PartitionSpec(
                            size_mib=40,
                            type=GPT_LINUX,
                            content="ext4",
                            fs_label="pg-root",
                            files={
                                "/etc/vmferry-lab.txt": _lab_text("pgtest1", "OS"),
                                "/etc/hostname": b"pgtest1\n",
                                "/boot/vmlinuz-lab": seeded_bytes(1011, 300 * 1024),
                            },
                        ),
                        PartitionSpec(size_mib=None, type=GPT_LINUX_SWAP, content="random", random_mib=3),
                    ),
                ),
            ),
            LabDiskSpec(
                label="data",
                bus=0,
                unit=1,
                image=DiskImageSpec(
                    size_bytes=48 * MIB,
                    label="dos",
                    label_id="0x5a0b0102",
                    seed=102,
                    partitions=(
                        PartitionSpec(
                            size_mib=30,
                            type="83",
                            content="ext4",
                            fs_label="pg-data",
                            files={
                                "/vmferry-lab.txt": _lab_text("pgtest1", "data"),
                                "/pgdata/PG_VERSION": b"16\n",
                                "/pgdata/base/1/1259": seeded_bytes(1021, 1024 * 1024),
                            },
                        ),
                        PartitionSpec(size_mib=None, type="83", content="random", random_mib=2),
                    ),
                ),
            ),
        ),
    )
    db3 = LabVMSpec(
        name="db3",
        controllers=2,
        disks=(
            LabDiskSpec(
                label="OS",
                bus=0,
                unit=0,
                boot=True,
                image=DiskImageSpec(
                    size_bytes=64 * MIB,
                    label="dos",
                    label_id="0x5a0b0301",
                    seed=301,
                    partitions=(
                        PartitionSpec(
                            size_mib=16,
                            type="ef",
                            content="fat",
                            fs_label="DB3-EFI",
                            files={
                                "/vmferry-lab.txt": _lab_text("db3", "OS"),
                                "/EFI/BOOT/BOOTX64.EFI": seeded_bytes(3011, 96 * 1024),
                            },
                        ),
                        PartitionSpec(
                            size_mib=36,
                            type="83",
                            content="ext4",
                            fs_label="db3-root",
                            files={
                                "/etc/vmferry-lab.txt": _lab_text("db3", "OS"),
                                "/etc/hostname": b"db3\n",
                            },
                        ),
                    ),
                ),
            ),
            LabDiskSpec(
                label="data1",
                bus=0,
                unit=1,
                image=DiskImageSpec(
                    size_bytes=32 * MIB,
                    label="gpt",
                    label_id="5A0B1C2D-0302-4000-8000-00000000D302",
                    seed=302,
                    partitions=(
                        PartitionSpec(
                            size_mib=12,
                            type=GPT_LINUX,
                            content="ext4",
                            fs_label="db3-data1",
                            files={
                                "/vmferry-lab.txt": _lab_text("db3", "data1"),
                                "/mysql/ibdata1": seeded_bytes(3021, 2 * 1024 * 1024),
                            },
                        ),
                        PartitionSpec(size_mib=8, type=GPT_LINUX, content="random", random_mib=4),
                        PartitionSpec(size_mib=None, type=GPT_LINUX_LVM, content="zero"),
                    ),
                ),
            ),
            LabDiskSpec(
                label="data2",
                bus=1,
                unit=0,
                image=DiskImageSpec(
                    size_bytes=40 * MIB,
                    label="dos",
                    label_id="0x5a0b0303",
                    seed=303,
                    partitions=(
                        PartitionSpec(
                            size_mib=24,
                            type="83",
                            content="ext4",
                            fs_label="db3-data2",
                            files={
                                "/vmferry-lab.txt": _lab_text("db3", "data2"),
                                "/mysql/binlog.000001": seeded_bytes(3031, 1024 * 1024),
                            },
                        ),
                        PartitionSpec(size_mib=None, type="8e", content="random", random_mib=2),
                    ),
                ),
            ),
        ),
    )
    return (pgtest1, db3)


@dataclass
class DiskRecord:
    label: str
    device_key: int
    controller_key: int
    bus_number: int
    unit_number: int
    capacity_bytes: int
    descriptor_path: str
    flat_path: str
    sha256: str
    label_type: str
    sfdisk_dump: str
    sfdisk_json: dict[str, Any]
    known_files: list[KnownFile]
    boot: bool

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["known_files"] = [f.to_dict() for f in self.known_files]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DiskRecord:
        values = dict(data)
        values["known_files"] = [KnownFile.from_dict(f) for f in data["known_files"]]
        return cls(**values)


@dataclass
class VMRecord:
    name: str
    instance_uuid: str
    moref: str
    vmx_path: str
    boot_disk_key: int | None
    disks: list[DiskRecord] = field(default_factory=list)

    def disk(self, label: str) -> DiskRecord:
        for disk in self.disks:
            if disk.label == label:
                return disk
        raise KeyError(f"{self.name} has no disk {label!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in asdict(self).items() if k != "disks"},
            "disks": [d.to_dict() for d in self.disks],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VMRecord:
        values = dict(data)
        values["disks"] = [DiskRecord.from_dict(d) for d in data["disks"]]
        return cls(**values)


@dataclass
class LabManifest:
    datacenter: str
    datastore: str
    vms: list[VMRecord]
    version: int = MANIFEST_VERSION

    def vm(self, name: str) -> VMRecord:
        for vm in self.vms:
            if vm.name == name:
                return vm
        raise KeyError(f"no lab VM {name!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "datacenter": self.datacenter,
            "datastore": self.datastore,
            "vms": [vm.to_dict() for vm in self.vms],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabManifest:
        return cls(
            datacenter=data["datacenter"],
            datastore=data["datastore"],
            vms=[VMRecord.from_dict(vm) for vm in data["vms"]],
            version=int(data.get("version", MANIFEST_VERSION)),
        )

    def write(self, path: Path) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> LabManifest:
        return cls.from_dict(json.loads(path.read_text()))


# --- pyvmomi lookups shared with mutate.py ---------------------------------------------------------------


def find_datacenter(si: vim.ServiceInstance, name: str) -> vim.Datacenter:
    for entity in si.content.rootFolder.childEntity:
        if isinstance(entity, vim.Datacenter) and entity.name == name:
            return entity
    raise LookupError(f"no datacenter {name!r}")


def find_vm(si: vim.ServiceInstance, name: str) -> vim.VirtualMachine | None:
    view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.VirtualMachine], True)
    try:
        for vm in view.view:
            if vm.name == name:
                return vm
    finally:
        view.Destroy()
    return None


def require_vm(si: vim.ServiceInstance, name: str) -> vim.VirtualMachine:
    vm = find_vm(si, name)
    if vm is None:
        raise LookupError(f"no VM {name!r}")
    return vm


def scsi_controllers(vm: vim.VirtualMachine) -> list[vim.vm.device.VirtualSCSIController]:
    devices = vm.config.hardware.device
    return sorted((d for d in devices if isinstance(d, vim.vm.device.VirtualSCSIController)), key=lambda c: c.busNumber)


def virtual_disks(vm: vim.VirtualMachine) -> list[vim.vm.device.VirtualDisk]:
    return [d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)]


def disk_capacity_bytes(disk: vim.vm.device.VirtualDisk) -> int:
    # vcsim 0.24 only computes capacityInKB; capacityInBytes is there only because the lab sends it.
    if disk.capacityInBytes:
        return int(disk.capacityInBytes)
    return int(disk.capacityInKB) * 1024


def run_task(task: vim.Task) -> Any:
    WaitForTask(task)
    return task.info.result


def disk_add_spec(
    *, controller_key: int, unit: int, size_bytes: int, file_name: str, temp_key: int, create: bool = True
) -> vim.vm.device.VirtualDeviceSpec:
    if size_bytes % 1024:
        raise ValueError(f"disk size {size_bytes} is not a whole number of KiB")
    disk = vim.vm.device.VirtualDisk(
        key=temp_key,
        controllerKey=controller_key,
        unitNumber=unit,
        capacityInKB=size_bytes // 1024,
        capacityInBytes=size_bytes,
        backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
            fileName=file_name, diskMode="persistent", thinProvisioned=False
        ),
    )
    spec = vim.vm.device.VirtualDeviceSpec(operation="add", device=disk)
    if create:
        spec.fileOperation = "create"
    return spec


def vmdk_descriptor(flat_name: str, size_bytes: int, disk_uuid: str | None = None) -> bytes:
    """A monolithic-flat descriptor naming the extent, as ESXi writes it; vcsim itself leaves it empty.

    ``disk_uuid`` (the backing's uuid, "6000C29x-...") goes in as ``ddb.uuid``, where ESXi keeps it: the
    patched vcsim reads it back when the disk is attached again (after a lab restart), so it stays the same
    disk."""
    sectors = size_bytes // 512
    ddb_uuid = ""
    if disk_uuid:
        digits = disk_uuid.replace("-", "")
        pairs = [digits[i : i + 2] for i in range(0, len(digits), 2)]
        ddb_uuid = f'ddb.uuid = "{" ".join(pairs[:8])}-{" ".join(pairs[8:])}"\n'
    return (
        '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="vmfs"\n\n'
        f'# Extent description\nRW {sectors} VMFS "{escape_vmware(flat_name)}"\n\n'
        '# The Disk Data Base\n#DDB\n\nddb.adapterType = "lsilogic"\nddb.virtualHWVersion = "13"\n'
        f"{ddb_uuid}"
    ).encode()


# --- seeding ----------------------------------------------------------------------------------------------


def _vm_dir(vm: vim.VirtualMachine) -> dsfiles.DatastorePath:
    vmx = dsfiles.DatastorePath.parse(vm.config.files.vmPathName)
    return dsfiles.DatastorePath(vmx.datastore, vmx.path.rsplit("/", 1)[0] if "/" in vmx.path else "")


def _ensure_vm(si: vim.ServiceInstance, lab: LabVCenter, spec: LabVMSpec) -> vim.VirtualMachine:
    vm = find_vm(si, spec.name)
    if vm is None:
        datacenter = find_datacenter(si, lab.datacenter)
        compute = next(e for e in datacenter.hostFolder.childEntity if isinstance(e, vim.ComputeResource))
        config = vim.vm.ConfigSpec(
            name=spec.name,
            guestId="otherLinux64Guest",
            numCPUs=1,
            memoryMB=256,
            files=vim.vm.FileInfo(vmPathName=f"[{lab.datastore}]"),
        )
        vm = run_task(datacenter.vmFolder.CreateVM_Task(config=config, pool=compute.resourcePool))
    have = {c.busNumber for c in scsi_controllers(vm)}
    changes = [
        vim.vm.device.VirtualDeviceSpec(
            operation="add",
            device=vim.vm.device.ParaVirtualSCSIController(key=-100 - bus, busNumber=bus, sharedBus="noSharing"),
        )
        for bus in range(spec.controllers)
        if bus not in have
    ]
    if changes:
        run_task(vm.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=changes)))
    return vm


def _disk_file_name(vm_dir: dsfiles.DatastorePath, vm_name: str, label: str) -> str:
    rel = f"{vm_dir.path}/{vm_name}-{label.lower()}.vmdk" if vm_dir.path else f"{vm_name}-{label.lower()}.vmdk"
    return str(dsfiles.DatastorePath(vm_dir.datastore, rel))


def _ensure_disks(
    si: vim.ServiceInstance, lab: LabVCenter, vm: vim.VirtualMachine, spec: LabVMSpec, cookie: str
) -> dict[str, vim.vm.device.VirtualDisk]:
    """Attach every spec disk that is not attached yet (matched by file name), then return them by label."""
    vm_dir = _vm_dir(vm)
    controllers = {c.busNumber: c for c in scsi_controllers(vm)}
    attached = {d.backing.fileName: d for d in virtual_disks(vm)}
    changes = []
    for temp_key, disk in enumerate(spec.disks, start=1):
        file_name = _disk_file_name(vm_dir, spec.name, disk.label)
        if file_name in attached:
            continue
        # A descriptor left by an interrupted run is attached as is; creating it again would fail.
        exists = dsfiles.stat_size(lab, file_name, cookie=cookie) is not None
        changes.append(
            disk_add_spec(
                controller_key=controllers[disk.bus].key,
                unit=disk.unit,
                size_bytes=disk.image.size_bytes,
                file_name=file_name,
                temp_key=-temp_key,
                create=not exists,
            )
        )
    if changes:
        run_task(vm.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=changes)))
    attached = {d.backing.fileName: d for d in virtual_disks(vm)}
    return {disk.label: attached[_disk_file_name(vm_dir, spec.name, disk.label)] for disk in spec.disks}


def _set_boot_disk(vm: vim.VirtualMachine, key: int) -> None:
    order = vm.config.bootOptions.bootOrder if vm.config.bootOptions else []
    if [getattr(d, "deviceKey", None) for d in order] == [key]:
        return
    boot = vim.vm.BootOptions(bootOrder=[vim.vm.BootOptions.BootableDiskDevice(deviceKey=key)])
    run_task(vm.ReconfigVM_Task(vim.vm.ConfigSpec(bootOptions=boot)))


def _boot_disk_key(vm: vim.VirtualMachine) -> int | None:
    options = vm.config.bootOptions
    for device in options.bootOrder if options else []:
        if isinstance(device, vim.vm.BootOptions.BootableDiskDevice):
            return int(device.deviceKey)
    return None


def _upload_image(
    lab: LabVCenter, descriptor: str, image: BuiltImage, cookie: str, disk_uuid: str | None = None
) -> str:
    flat = dsfiles.flat_path(descriptor)
    flat_name = flat.rsplit("/", 1)[-1]
    dsfiles.upload(lab, descriptor, vmdk_descriptor(flat_name, image.size_bytes, disk_uuid), cookie=cookie)
    dsfiles.upload(lab, flat, image.path, cookie=cookie)
    return flat


def _reusable(previous: DiskRecord | None, device: vim.vm.device.VirtualDisk, lab: LabVCenter, cookie: str) -> bool:
    """True if the disk still holds exactly what an earlier seeding recorded (same device, same bytes)."""
    if previous is None:
        return False
    if (previous.device_key, previous.descriptor_path) != (int(device.key), device.backing.fileName):
        return False
    if dsfiles.stat_size(lab, previous.flat_path, cookie=cookie) != previous.capacity_bytes:
        return False
    return dsfiles.remote_sha256(lab, previous.flat_path, cookie=cookie) == previous.sha256


def seed_vm(
    si: vim.ServiceInstance,
    lab: LabVCenter,
    spec: LabVMSpec,
    workdir: Path,
    cookie: str,
    previous: VMRecord | None = None,
) -> VMRecord:
    vm = _ensure_vm(si, lab, spec)
    devices = _ensure_disks(si, lab, vm, spec, cookie)
    controllers = {c.key: c for c in scsi_controllers(vm)}
    old = {d.label: d for d in previous.disks} if previous and previous.instance_uuid == vm.config.instanceUuid else {}
    records: list[DiskRecord] = []
    for disk_spec in spec.disks:
        device = devices[disk_spec.label]
        capacity = disk_capacity_bytes(device)
        size = disk_spec.image.size_bytes
        if capacity != size:
            raise RuntimeError(f"{spec.name} {disk_spec.label}: vCenter capacity {capacity} != image size {size}")
        prior = old.get(disk_spec.label)
        if prior is not None and _reusable(prior, device, lab, cookie):
            # mke2fs gives every inode a random generation number, so images are not byte-reproducible;
            # keeping unchanged content keeps earlier manifests (and tests holding them) valid.
            records.append(prior)
            continue
        out = workdir / "images" / f"{spec.name}-{disk_spec.label}.raw"
        if disk_spec.source is not None:
            image = copy_image(disk_spec.source, out)
        else:
            image = build_image(disk_spec.image, out, workdir / "scratch" / f"{spec.name}-{disk_spec.label}")
        flat = _upload_image(lab, device.backing.fileName, image, cookie, getattr(device.backing, "uuid", None))
        image.path.unlink()
        records.append(
            DiskRecord(
                label=disk_spec.label,
                device_key=int(device.key),
                controller_key=int(device.controllerKey),
                bus_number=int(controllers[device.controllerKey].busNumber),
                unit_number=int(device.unitNumber),
                capacity_bytes=capacity,
                descriptor_path=device.backing.fileName,
                flat_path=flat,
                sha256=image.sha256,
                label_type=disk_spec.image.label,
                sfdisk_dump=image.sfdisk_dump,
                sfdisk_json=image.sfdisk_json,
                known_files=list(image.known_files),
                boot=disk_spec.boot,
            )
        )
    boot = [r for r in records if r.boot]
    if boot:
        _set_boot_disk(vm, boot[0].device_key)
    return VMRecord(
        name=spec.name,
        instance_uuid=vm.config.instanceUuid,
        moref=vm._moId,
        vmx_path=vm.config.files.vmPathName,
        boot_disk_key=_boot_disk_key(vm),
        disks=records,
    )


def seed_lab(lab: LabVCenter, workdir: Path, specs: Sequence[LabVMSpec] | None = None) -> LabManifest:
    """Create (or complete) the lab VMs, write every disk's content, and write workdir/manifest.json.

    Idempotent: VMs and disks are matched by name and file name, so a second run adds nothing. A disk whose
    bytes still match workdir/manifest.json is left alone; any other lab disk is rebuilt and uploaded, which
    restores disks a test changed.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    specs = lab_vm_specs() if specs is None else specs
    manifest_path = workdir / "manifest.json"
    previous: dict[str, VMRecord] = {}
    if manifest_path.is_file():
        try:
            earlier = LabManifest.load(manifest_path)
        except (ValueError, KeyError, TypeError):
            earlier = None
        if earlier is not None and (earlier.datacenter, earlier.datastore) == (lab.datacenter, lab.datastore):
            previous = {vm.name: vm for vm in earlier.vms}
    with session(lab) as si:
        cookie = dsfiles.session_cookie(si)
        with tempfile.TemporaryDirectory(prefix="seed-", dir=workdir) as tmp:
            vms = [seed_vm(si, lab, spec, Path(tmp), cookie, previous.get(spec.name)) for spec in specs]
    manifest = LabManifest(datacenter=lab.datacenter, datastore=lab.datastore, vms=vms)
    manifest.write(manifest_path)
    return manifest
