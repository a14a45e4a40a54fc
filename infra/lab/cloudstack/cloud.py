"""The simulated cloud: zones, offerings, templates, VMs and volumes, and the rules CloudStack enforces on them.

Error texts and the order of the checks follow apache/cloudstack (VolumeApiServiceImpl.attachVolumeToVM /
detachVolumeFromVM / allocVolume / retrieveAndValidateVolume / getDeviceId, VolumeDaoImpl.attachVolume /
detachVolume). Texts marked [U] in docs of this package were not found in CloudStack's source and are stand-ins.

Nothing here knows about HTTP; callers hold the simulator's lock around every method.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from infra.lab.cloudstack.hypervisor import QemuHypervisor

GIB = 1024**3
# Hard-coded in VolumeApiServiceImpl.getDeviceId on every hypervisor: data disks never get device id 3.
CDROM_DEVICE_ID = 3
ACCOUNT = "admin"
DOMAIN = "ROOT"
DOMAIN_ID = "5f0a4e24-0e5f-11ef-9b1d-0242ac110002"
HYPERVISOR = "KVM"
# CloudStack's defaults for custom.diskoffering.min.size / max.size (GB) and storage.max.volume.size (GB).
CUSTOM_MIN_GB = 1
CUSTOM_MAX_GB = 1024
MAX_VOLUME_GB = 2000


class ApiError(Exception):
    """What a ServerApiException carries: the HTTP/error code, CloudStack's exception code and the text."""

    def __init__(self, errortext: str, *, errorcode: int = 431, cserrorcode: int = 4350) -> None:
        super().__init__(errortext)
        self.errortext = errortext
        self.errorcode = errorcode
        self.cserrorcode = cserrorcode


def invalid_value(text: str) -> ApiError:
    """InvalidParameterValueException: PARAM_ERROR (431), cserrorcode 4350."""
    return ApiError(text, errorcode=431, cserrorcode=4350)


def param_error(text: str) -> ApiError:
    """ServerApiException(PARAM_ERROR) raised by the parameter processor itself: cserrorcode 9999."""
    return ApiError(text, errorcode=431, cserrorcode=9999)


def cloud_runtime_error(text: str) -> ApiError:
    """CloudRuntimeException: INTERNAL_ERROR (530), cserrorcode 4250."""
    return ApiError(text, errorcode=530, cserrorcode=4250)


def java_runtime_error(text: str) -> ApiError:
    """A plain java.lang.RuntimeException (getDeviceId throws these): INTERNAL_ERROR (530)."""
    return ApiError(text, errorcode=530, cserrorcode=9999)


def cs_time(moment: datetime) -> str:
    """CloudStack's date format in API responses: 2024-05-01T10:00:00+0000."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S%z")


def now() -> datetime:
    return datetime.now(UTC)


_db_ids = itertools.count(1)


def _next_db_id() -> int:
    return next(_db_ids)


@dataclass
class Zone:
    id: str
    name: str
    db_id: int = field(default_factory=_next_db_id)

    def response(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "networktype": "Advanced",
            "allocationstate": "Enabled",
            "localstorageenabled": False,
            "securitygroupsenabled": False,
            "zonetoken": self.id[:8],
        }


@dataclass
class DiskOffering:
    id: str
    name: str
    disk_size_gb: int  # 0 for a custom-size offering
    db_id: int = field(default_factory=_next_db_id)

    @property
    def customized(self) -> bool:
        return self.disk_size_gb == 0

    def response(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "displaytext": self.name,
            "disksize": self.disk_size_gb,
            "iscustomized": self.customized,
            "storagetype": "shared",
            "provisioningtype": "thin",
            "created": cs_time(now()),
        }


@dataclass
class ServiceOffering:
    id: str
    name: str
    # None: chosen per VM at deploy time (a "custom"/dynamic offering; CloudStack stores NULL there too)
    cpu_number: int | None
    cpu_speed: int | None
    memory_mb: int | None
    db_id: int = field(default_factory=_next_db_id)

    @property
    def customized(self) -> bool:
        return self.cpu_number is None or self.cpu_speed is None or self.memory_mb is None

    def response(self) -> dict[str, Any]:
        answer = {
            "id": self.id,
            "name": self.name,
            "displaytext": self.name,
            "iscustomized": self.customized,
            "storagetype": "shared",
            "provisioningtype": "thin",
        }
        # a dynamic offering's response leaves out what the VM chooses
        for key, value in (("cpunumber", self.cpu_number), ("cpuspeed", self.cpu_speed), ("memory", self.memory_mb)):
            if value is not None:
                answer[key] = value
        return answer


@dataclass
class Template:
    id: str
    name: str
    size_bytes: int
    zone: Zone
    featured: bool = True
    db_id: int = field(default_factory=_next_db_id)

    def response(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "displaytext": self.name,
            "size": self.size_bytes,
            "isready": True,
            "ispublic": True,
            "isfeatured": self.featured,
            "format": "QCOW2",
            "hypervisor": HYPERVISOR,
            "templatetype": "USER",
            "zoneid": self.zone.id,
            "zonename": self.zone.name,
            "ostypename": "Other Linux (64-bit)",
            "account": ACCOUNT,
            "domain": DOMAIN,
            "domainid": DOMAIN_ID,
        }


@dataclass
class VirtualMachine:
    id: str
    name: str
    display_name: str
    state: str  # Stopped, Running, Destroyed, Error (Expunged ones leave the table)
    zone: Zone
    service_offering: ServiceOffering
    template: Template
    created: datetime = field(default_factory=now)
    db_id: int = field(default_factory=_next_db_id)
    # what a dynamic offering was given at deploy time (details cpuNumber, cpuSpeed, memory)
    custom: dict[str, int] = field(default_factory=dict)

    def response(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "displayname": self.display_name,
            "instancename": f"i-2-{self.db_id}-VM",
            "state": self.state,
            "account": ACCOUNT,
            "domain": DOMAIN,
            "domainid": DOMAIN_ID,
            "created": cs_time(self.created),
            "haenable": False,
            "hypervisor": HYPERVISOR,
            "zoneid": self.zone.id,
            "zonename": self.zone.name,
            "templateid": self.template.id,
            "templatename": self.template.name,
            "serviceofferingid": self.service_offering.id,
            "serviceofferingname": self.service_offering.name,
            "cpunumber": self.custom.get("cpuNumber", self.service_offering.cpu_number),
            "cpuspeed": self.custom.get("cpuSpeed", self.service_offering.cpu_speed),
            "memory": self.custom.get("memory", self.service_offering.memory_mb),
            "isdynamicallyscalable": False,
            "nic": [],
            "tags": [],
            "affinitygroup": [],
            "securitygroup": [],
        }


@dataclass
class Volume:
    id: str
    name: str
    type: str  # ROOT or DATADISK
    zone: Zone
    size: int  # bytes
    state: str = "Allocated"  # Allocated until it exists on primary storage, then Ready; Destroy when its VM is
    disk_offering: DiskOffering | None = None
    template: Template | None = None
    vm: VirtualMachine | None = None
    device_id: int | None = None
    path: str | None = None
    created: datetime = field(default_factory=now)
    attached: datetime | None = None
    db_id: int = field(default_factory=_next_db_id)

    def response(self, cloud: Cloud) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "zoneid": self.zone.id,
            "zonename": self.zone.name,
            "type": self.type,
            "provisioningtype": "thin",
            "size": self.size,
            "created": cs_time(self.created),
            "state": self.state,
            "account": ACCOUNT,
            "domain": DOMAIN,
            "domainid": DOMAIN_ID,
            "storagetype": "shared",
            "hypervisor": HYPERVISOR,
            "destroyed": self.state == "Destroy",
            "isextractable": True,
            "displayvolume": True,
            "quiescevm": False,
        }
        if self.disk_offering is not None:
            out["diskofferingid"] = self.disk_offering.id
            out["diskofferingname"] = self.disk_offering.name
            out["diskofferingdisplaytext"] = self.disk_offering.name
        if self.template is not None:
            out["templateid"] = self.template.id
            out["templatename"] = self.template.name
        if self.path is not None:
            out["path"] = self.path
            out["storage"] = cloud.primary_storage_name
            out["storageid"] = cloud.primary_storage_id
        if self.vm is not None:
            out["virtualmachineid"] = self.vm.id
            out["vmname"] = self.vm.name
            out["vmdisplayname"] = self.vm.display_name
            out["vmstate"] = self.vm.state
            # VolumeResponse.deviceId: "not returned when the volume is detached".
            out["deviceid"] = self.device_id
            if self.attached is not None:
                out["attached"] = cs_time(self.attached)
        return out


@dataclass(frozen=True)
class SeedIds:
    """The ids a test or the lab needs to configure a client against the simulator."""

    zone_id: str
    custom_disk_offering_id: str
    fixed_disk_offering_id: str
    service_offering_id: str
    custom_service_offering_id: str
    template_id: str
    hub_vm_id: str


class Cloud:
    """Everything the simulated CloudStack knows. Volumes live as sparse files under ``state_dir/volumes``."""

    primary_storage_name = "sim-primary"

    def __init__(
        self,
        state_dir: Path,
        *,
        max_data_disks: int = 6,
        hub_vm_id: str | None = None,
        hub_name: str = "vmferry-hub",
        template_size_bytes: int = 2 * GIB,
    ) -> None:
        self.state_dir = state_dir
        self.volumes_dir = state_dir / "volumes"
        self.dev_root = state_dir / "dev"
        self.by_id_dir = self.dev_root / "disk" / "by-id"
        self.volumes_dir.mkdir(parents=True, exist_ok=True)
        self.by_id_dir.mkdir(parents=True, exist_ok=True)
        self.max_data_disks = max_data_disks
        self.primary_storage_id = str(uuid.uuid4())
        # set (lab option) to really run started VMs in qemu; the hub below is never run
        self.hypervisor: QemuHypervisor | None = None

        self.zones: dict[str, Zone] = {}
        self.disk_offerings: dict[str, DiskOffering] = {}
        self.service_offerings: dict[str, ServiceOffering] = {}
        self.templates: dict[str, Template] = {}
        self.vms: dict[str, VirtualMachine] = {}
        self.volumes: dict[str, Volume] = {}
        # CloudStack resolves ids "including removed" rows: a removed id lists as nothing instead of an error.
        self.removed: dict[str, dict[str, Any]] = {"vm": {}, "volume": {}}

        zone = Zone(str(uuid.uuid4()), "sim-zone-1")
        self.zones[zone.id] = zone
        custom = DiskOffering(str(uuid.uuid4()), "Custom", 0)
        fixed = DiskOffering(str(uuid.uuid4()), "Small", 5)
        self.disk_offerings = {custom.id: custom, fixed.id: fixed}
        offering = ServiceOffering(str(uuid.uuid4()), "Medium Instance", 2, 1000, 2048)
        self.service_offerings[offering.id] = offering
        custom_offering = ServiceOffering(str(uuid.uuid4()), "Custom Instance", None, None, None)
        self.service_offerings[custom_offering.id] = custom_offering
        template = Template(str(uuid.uuid4()), "vmferry-hub-template", template_size_bytes, zone)
        self.templates[template.id] = template

        hub = self.allocate_vm(
            zone=zone,
            service_offering=offering,
            template=template,
            name=hub_name,
            display_name=hub_name,
            vm_id=hub_vm_id,
        )
        self.seed = SeedIds(zone.id, custom.id, fixed.id, offering.id, custom_offering.id, template.id, hub.id)
        self.start_vm(hub)

    # ---- lookups ---------------------------------------------------------------------------------------------

    def resolve(self, kind: str, entity_id: str) -> Any | None:
        """An entity by uuid, removed ones included, as CloudStack's findByUuidIncludingRemoved."""
        table: dict[str, Any] = {
            "zone": self.zones,
            "diskoffering": self.disk_offerings,
            "serviceoffering": self.service_offerings,
            "template": self.templates,
            "vm": self.vms,
            "volume": self.volumes,
        }.get(kind, {})
        found = table.get(entity_id)
        if found is None:
            found = self.removed.get(kind, {}).get(entity_id)
        return found

    def is_live(self, entity: Any) -> bool:
        """False for a removed (deleted or expunged) entity that an id still resolves to."""
        if isinstance(entity, Volume):
            return self.volumes.get(entity.id) is entity
        if isinstance(entity, VirtualMachine):
            return self.vms.get(entity.id) is entity
        return entity is not None

    def volumes_of(self, vm: VirtualMachine) -> list[Volume]:
        return sorted((v for v in self.volumes.values() if v.vm is vm), key=lambda v: v.device_id or 0)

    def volume_file(self, volume: Volume) -> Path:
        return self.volumes_dir / f"{volume.id}.img"

    # ---- volumes ---------------------------------------------------------------------------------------------

    def alloc_volume(
        self,
        *,
        name: str | None,
        zone: Zone | None,
        disk_offering: DiskOffering | None,
        snapshot_id: str | None,
        size_gb: int | None,
    ) -> Volume:
        """The synchronous half of createVolume (VolumeApiServiceImpl.allocVolume): only a DB row, Allocated."""
        if snapshot_id is None and disk_offering is None:
            raise invalid_value("At least one of disk Offering ID or snapshot ID must be passed whilst creating volume")
        assert disk_offering is not None  # snapshots do not exist here, so the id translation already refused one
        size: int | None = None
        if size_gb is not None:
            if size_gb <= 0:
                raise invalid_value("Disk size must be larger than 0")
            size = size_gb * GIB
        if disk_offering.customized:
            if size is None or size_gb is None:
                raise invalid_value("This disk offering requires a custom size specified")
            if size_gb < CUSTOM_MIN_GB or size_gb > CUSTOM_MAX_GB:
                raise invalid_value(
                    f"Volume size: {size_gb} GB is out of allowed range. Min: {CUSTOM_MIN_GB}. Max: {CUSTOM_MAX_GB}"
                )
        if not disk_offering.customized and size is not None:
            raise invalid_value("This disk offering does not allow custom size")
        if disk_offering.disk_size_gb > 0:
            size = disk_offering.disk_size_gb * GIB
        assert size is not None
        if size > MAX_VOLUME_GB * GIB:
            raise invalid_value(
                f"Requested volume size is {size_gb} GB, but the maximum size allowed is {MAX_VOLUME_GB} GB."
            )
        if zone is None:
            # a missing zoneid reaches DataCenterDao.findById(null)
            raise invalid_value("Unable to find zone by id null")
        volume = Volume(
            id=str(uuid.uuid4()),
            name=name if name and name.strip() else str(uuid.uuid4()),
            type="DATADISK",
            zone=zone,
            size=size,
            disk_offering=disk_offering,
        )
        self.volumes[volume.id] = volume
        return volume

    def _materialize(self, volume: Volume) -> None:
        """Put the volume on primary storage: a sparse file of its size; CloudStack then calls it Ready."""
        if volume.state != "Allocated":
            return
        path = self.volume_file(volume)
        with open(path, "ab"):
            pass
        os.truncate(path, volume.size)
        volume.state = "Ready"
        volume.path = volume.id

    def delete_volume(self, volume: Volume) -> None:
        """deleteVolume (sync): VolumeApiServiceImpl.retrieveAndValidateVolume, then the row and file go."""
        if volume.vm is not None and volume.vm.id in self.vms and volume.state != "Expunged":
            raise invalid_value("Please specify a volume that is not attached to any VM.")
        self._remove_volume(volume)

    def _remove_volume(self, volume: Volume) -> None:
        self.volumes.pop(volume.id, None)
        self.removed["volume"][volume.id] = volume
        self.volume_file(volume).unlink(missing_ok=True)

    def attach_volume(self, volume: Volume, vm: VirtualMachine | None, device_id: int | None) -> Volume:
        """attachVolume's job, checks in VolumeApiServiceImpl.attachVolumeToVM's order."""
        # getAndCheckVolumeInfo
        if volume.type not in ("ROOT", "DATADISK"):
            raise invalid_value("Please specify a volume with the valid type: ROOT or DATADISK")
        if volume.vm is not None:
            raise invalid_value("Please specify a volume that is not attached to any VM.")
        if volume.state == "Destroy":
            raise invalid_value("Please specify a volume that is not destroyed.")
        if volume.state not in ("Allocated", "Ready", "Uploaded"):
            raise invalid_value("Volume state must be in Allocated, Ready or in Uploaded state")
        # getAndCheckUserVmVO
        if vm is None:
            raise invalid_value("Please specify a valid User VM.")
        if vm.state not in ("Running", "Stopped"):
            raise invalid_value("Please specify a VM that is either running or stopped.")
        if vm.zone is not volume.zone:
            raise invalid_value("Please specify a VM that is in the same zone as the volume.")
        # checkDeviceId
        if device_id == 0:
            self._validate_root_detach_attach(vm)
            if any(v.device_id == 0 for v in self.volumes_of(vm)):
                raise invalid_value("Vm already has root volume attached to it")
        # checkNumberOfAttachedVolumes
        if device_id is None or device_id != 0:
            data_disks = [v for v in self.volumes_of(vm) if v.type == "DATADISK"]
            if len(data_disks) >= self.max_data_disks:
                raise invalid_value(
                    f"The specified VM already has the maximum number of data disks ({self.max_data_disks}) "
                    "attached. Please specify another VM."
                )
        # orchestrateAttachVolumeToVM: the volume reaches primary storage when the VM's disks already exist there.
        if vm.state == "Running" or any(v.state == "Ready" for v in self.volumes_of(vm)):
            self._materialize(volume)
        # sendAttachVolumeCommand -> getDeviceId (plain RuntimeExceptions, hence 530 in the job result)
        chosen = self._device_id(vm, device_id)
        volume.vm = vm
        volume.device_id = chosen
        volume.attached = now()
        if chosen == 0:
            volume.type = "ROOT"  # VolumeDaoImpl.attachVolume
        self.sync_hub_links()
        return volume

    def _device_id(self, vm: VirtualMachine, device_id: int | None) -> int:
        max_device_id = self.max_data_disks + 2 - 1  # "add 2 to consider devices root volume and cdrom"
        used = {v.device_id for v in self.volumes_of(vm)}
        if device_id is not None:
            if device_id < 0 or device_id > max_device_id or device_id == CDROM_DEVICE_ID:
                raise java_runtime_error(f"deviceId should be 0,1,2,4-{max_device_id}")
            if device_id in used:
                raise java_runtime_error(f"deviceId {device_id} is used by vm {vm.db_id}")
            return device_id
        for candidate in range(1, max_device_id + 1):
            if candidate != CDROM_DEVICE_ID and candidate not in used:
                return candidate
        raise java_runtime_error(f"All device Ids are used by vm {vm.db_id}")

    @staticmethod
    def _validate_root_detach_attach(vm: VirtualMachine) -> None:
        # CloudStack's condition `!(state == Stopped) || (state == Destroyed)` lets only Stopped through.
        if vm.state != "Stopped":
            raise invalid_value("Root volume detach can happen only when vm is in states: Stopped or Destroyed")

    def detach_volume(
        self,
        *,
        volume_param: Volume | None,
        volume_id_given: bool,
        vm_param: VirtualMachine | None,
        vm_id_given: bool,
        device_id: int | None,
    ) -> Volume:
        """detachVolume's job, as VolumeApiServiceImpl.detachVolumeFromVM."""
        if (
            (not volume_id_given and device_id is None and not vm_id_given)
            or (volume_id_given and (device_id is not None or vm_id_given))
            or (not volume_id_given and (device_id is None or not vm_id_given))
        ):
            raise invalid_value("Please provide either a volume id, or a tuple(device id, instance id)")
        if volume_id_given:
            volume = volume_param
        else:
            matches = [v for v in self.volumes_of(vm_param) if v.device_id == device_id] if vm_param else []
            if not matches:
                # findByInstanceAndDeviceId(...).get(0) on an empty list.
                raise java_runtime_error("Index 0 out of bounds for length 0")
            volume = matches[0]
        if volume is None:
            raise invalid_value("Unable to find volume with ID: None")
        vm = volume.vm if not vm_id_given else vm_param
        if vm is None:
            raise invalid_value("The specified volume is not attached to a VM.")
        if vm.state not in ("Running", "Stopped", "Destroyed"):
            raise invalid_value("Please specify a VM that is either running or stopped.")
        if volume.type not in ("ROOT", "DATADISK"):
            raise invalid_value("Please specify volume of type DATADISK or ROOT")
        if volume.type == "ROOT":
            self._validate_root_detach_attach(vm)
        self._detach(volume)
        self.sync_hub_links()
        return volume

    @staticmethod
    def _detach(volume: Volume) -> None:
        volume.vm = None
        volume.device_id = None
        volume.attached = None
        if volume.type == "ROOT":
            volume.type = "DATADISK"  # VolumeDaoImpl.detachVolume

    # ---- virtual machines ------------------------------------------------------------------------------------

    def allocate_vm(
        self,
        *,
        zone: Zone,
        service_offering: ServiceOffering,
        template: Template,
        name: str | None,
        display_name: str | None,
        vm_id: str | None = None,
        root_disk_size_gb: int | None = None,
        custom: dict[str, int] | None = None,
    ) -> VirtualMachine:
        """The synchronous half of deployVirtualMachine: a Stopped VM with its ROOT volume, both only allocated."""
        new_id = vm_id or str(uuid.uuid4())
        host_name = name or f"VM-{new_id}"
        vm = VirtualMachine(
            id=new_id,
            name=host_name,
            display_name=display_name or host_name,
            state="Stopped",
            zone=zone,
            service_offering=service_offering,
            template=template,
            custom=dict(custom or {}),
        )
        self.vms[vm.id] = vm
        root_size = root_disk_size_gb * GIB if root_disk_size_gb else template.size_bytes
        root = Volume(
            id=str(uuid.uuid4()),
            name=f"ROOT-{vm.db_id}",
            type="ROOT",
            zone=zone,
            size=root_size,
            template=template,
            vm=vm,
            device_id=0,
            attached=now(),
        )
        self.volumes[root.id] = root
        return vm

    def start_vm(self, vm: VirtualMachine) -> VirtualMachine:
        if vm.state == "Running":
            return vm
        if vm.state != "Stopped":
            raise invalid_value(f"Unable to start VM {vm.id}: it is in state {vm.state}")  # [U]
        if not any(v.device_id == 0 for v in self.volumes_of(vm)):
            raise cloud_runtime_error(f"Unable to start VM {vm.id}: it has no ROOT volume attached")  # [U]
        for volume in self.volumes_of(vm):
            self._materialize(volume)
        self._power_on(vm)
        vm.state = "Running"
        self.sync_hub_links()
        return vm

    def _power_on(self, vm: VirtualMachine) -> None:
        if self.hypervisor is None or vm.id == self.seed.hub_vm_id:
            return
        from clients.qemu_boot import BootError
        from infra.lab.cloudstack.hypervisor import VMDisk

        disks = [VMDisk(v.device_id or 0, self.volume_file(v), self.serial_of(v.id)) for v in self.volumes_of(vm)]
        try:
            self.hypervisor.start(vm.id, disks)
        except BootError as exc:
            raise cloud_runtime_error(f"Unable to start VM {vm.id}: {exc}") from exc  # [U]

    def _power_off(self, vm: VirtualMachine) -> None:
        if self.hypervisor is not None:
            self.hypervisor.stop(vm.id)

    def stop_vm(self, vm: VirtualMachine) -> VirtualMachine:
        if vm.state in ("Running", "Stopped"):
            self._power_off(vm)
            vm.state = "Stopped"
            self.sync_hub_links()
            return vm
        raise invalid_value(f"Unable to stop VM {vm.id}: it is in state {vm.state}")  # [U]

    def destroy_vm(self, vm: VirtualMachine, *, expunge: bool, volumes: Iterable[Volume]) -> VirtualMachine:
        """destroyVirtualMachine: ROOT goes with the VM; listed data volumes are detached and deleted; on expunge
        the other data volumes are detached and survive (VolumeOrchestrator.cleanupVolumes)."""
        listed = list(volumes)
        for volume in listed:
            if volume.vm is not vm:
                raise invalid_value(f"Volume {volume.id} is not attached to VM {vm.id}")  # [U]
        self._power_off(vm)
        vm.state = "Destroyed"
        for volume in listed:
            self._detach(volume)
            self._remove_volume(volume)
        for volume in self.volumes_of(vm):
            if volume.device_id == 0:
                volume.state = "Destroy"
        if expunge:
            for volume in self.volumes_of(vm):
                if volume.device_id == 0 and volume.type == "ROOT":
                    self._remove_volume(volume)
                else:
                    self._detach(volume)
            self.vms.pop(vm.id, None)
            self.removed["vm"][vm.id] = vm
            vm.state = "Expunging"
        self.sync_hub_links()
        return vm

    def mark_vm_error(self, vm: VirtualMachine) -> None:
        self._power_off(vm)
        vm.state = "Error"
        self.sync_hub_links()

    # ---- the hub's view of its disks -------------------------------------------------------------------------

    @staticmethod
    def serial_of(volume_id: str) -> str:
        """The serial a KVM guest sees for a CloudStack volume: the uuid without dashes, cut to 20 characters."""
        return volume_id.replace("-", "")[:20]

    def sync_hub_links(self) -> None:
        """Make ``dev/disk/by-id`` show exactly the volumes attached to the running hub, as udev would."""
        hub = self.vms.get(self.seed.hub_vm_id)
        wanted: dict[str, Path] = {}
        if hub is not None and hub.state == "Running":
            for volume in self.volumes_of(hub):
                file = self.volume_file(volume)
                if file.exists():
                    wanted[f"virtio-{self.serial_of(volume.id)}"] = file
        for link in self.by_id_dir.iterdir():
            target = wanted.get(link.name)
            if target is None or not link.is_symlink() or Path(os.readlink(link)) != target:
                link.unlink()
        for name, target in wanted.items():
            link = self.by_id_dir / name
            if not link.is_symlink():
                link.symlink_to(target)
