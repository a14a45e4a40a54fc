"""A small vSphere client on pyvmomi: connect safely, read VMs and their disks. Prefect-free."""

from __future__ import annotations

import hashlib
import re
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import SecretStr
from pyVim.connect import Disconnect, SmartConnect
from pyVim.task import WaitForTask
from pyVmomi import vim, vmodl
from pyVmomi.Security import CertificateMismatchException, ThumbprintMismatchException

from common.errors import NotFoundError, VmferryError
from common.inventory import ObservedDisk, ObservedNic, ObservedVM, base_disk_file
from common.names import CBT_ENABLE_SNAPSHOT


class VSphereError(VmferryError):
    """A vCenter call failed; the message names the vCenter and, where known, the VM."""


class PowerChangeFailed(VSphereError):
    """vCenter refused or failed to power a VM on or off; the message is vCenter's reason."""

    @property
    def reason(self) -> str:
        return str(self)


class VMNotFound(VSphereError, NotFoundError):
    """vCenter has no VM of that name, instance UUID or moref: retrying does not make one."""


class VSphereSettings(Protocol):
    """Where a vCenter is and how to trust it, as the hub's block and the agent's config both hold it."""

    host: str
    port: int
    username: str
    password: SecretStr
    thumbprint: str | None
    verify_tls: bool
    ca_file: str | None


@dataclass(frozen=True)
class VSphereEndpoint:
    host: str
    username: str
    password: str = field(repr=False)
    port: int = 443
    # Pinned SHA-1/SHA-256 certificate thumbprint ("AA:BB:..."): trusted even when self-signed.
    thumbprint: str | None = None
    verify_tls: bool = True
    ca_file: str | None = None

    @classmethod
    def of(cls, source: VSphereSettings) -> VSphereEndpoint:
        """From a VCenter block or the agent's vcenter section: the same fields, the password a SecretStr."""
        return cls(
            host=source.host,
            port=source.port,
            username=source.username,
            password=source.password.get_secret_value(),
            thumbprint=source.thumbprint,
            verify_tls=source.verify_tls,
            ca_file=source.ca_file,
        )

    def ssl_context(self) -> ssl.SSLContext:
        if self.thumbprint:
            return pinned_ssl_context(self.host, self.port, self.thumbprint)
        if not self.verify_tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        return ssl.create_default_context(cafile=self.ca_file)


class CertificateNotTrusted(VSphereError):
    """The server's certificate does not match the pinned thumbprint."""


def certificate_thumbprint(der: bytes, algorithm: str = "sha1") -> str:
    digest = hashlib.new(algorithm, der, usedforsecurity=False).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def pinned_ssl_context(host: str, port: int, thumbprint: str) -> ssl.SSLContext:
    """A verifying context that trusts exactly the certificate with this SHA-1 or SHA-256 thumbprint.

    pyvmomi's own ``thumbprint=`` is not enough: its version probe ignores it, and for 127.0.0.1 it silently
    switches to an unverified context. Fetching the certificate unverified is safe because it is trusted
    only when its hash matches the pin.
    """
    wanted = thumbprint.replace(":", "").upper()
    algorithm = {40: "sha1", 64: "sha256"}.get(len(wanted))
    if algorithm is None:
        raise CertificateNotTrusted(f"thumbprint {thumbprint!r} is neither SHA-1 nor SHA-256")
    try:
        pem = ssl.get_server_certificate((host, port), timeout=10)
    except OSError as exc:
        raise VSphereError(f"cannot reach {host}:{port} to check its certificate: {exc}") from exc
    presented = certificate_thumbprint(ssl.PEM_cert_to_DER_cert(pem), algorithm)
    if presented.replace(":", "") != wanted:
        raise CertificateNotTrusted(
            f"{host}:{port} presented certificate {presented}, but the pinned thumbprint is {thumbprint}"
        )
    context = ssl.create_default_context(cadata=pem)
    # The pin identifies the server; a vCenter's certificate often names another host than the one dialled.
    context.check_hostname = False
    return context


_BUS_OF_CONTROLLER: tuple[tuple[type, str], ...] = (
    (vim.vm.device.VirtualSCSIController, "scsi"),
    (vim.vm.device.VirtualIDEController, "ide"),
    (vim.vm.device.VirtualSATAController, "sata"),
    (vim.vm.device.VirtualNVMEController, "nvme"),
)

_VM_PROPERTIES = [
    "name",
    "config.instanceUuid",
    "config.template",
    "config.guestFullName",
    "config.hardware.numCPU",
    "config.hardware.memoryMB",
    "config.hardware.device",
    "config.bootOptions",
    "config.changeTrackingEnabled",
    "runtime.powerState",
]


_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_MOREF = re.compile(r"^vm-\d+$")


def _bus_of(controller: Any) -> str:
    for kind, bus in _BUS_OF_CONTROLLER:
        if isinstance(controller, kind):
            return bus
    return type(controller).__name__


def _base_file(backing: Any) -> str:
    while getattr(backing, "parent", None) is not None:
        backing = backing.parent
    return base_disk_file(backing.fileName)


def observed_disks(devices: list[Any], vm_name: str) -> list[ObservedDisk]:
    """Every virtual disk of a VM, with the controller facts that order them."""
    controllers = {d.key: d for d in devices if isinstance(d, vim.vm.device.VirtualController)}
    disks = []
    for device in devices:
        if not isinstance(device, vim.vm.device.VirtualDisk):
            continue
        controller = controllers.get(device.controllerKey)
        if controller is None:
            raise VSphereError(
                f"VM {vm_name!r}: disk {device.key} names controller {device.controllerKey}, which the VM does not have"
            )
        backing = device.backing
        capacity = device.capacityInBytes or (device.capacityInKB or 0) * 1024
        disks.append(
            ObservedDisk(
                device_key=device.key,
                controller_key=device.controllerKey,
                bus=_bus_of(controller),
                bus_number=controller.busNumber,
                unit_number=device.unitNumber,
                capacity_bytes=capacity,
                backing_uuid=getattr(backing, "uuid", None) or None,
                file_name=backing.fileName,
                base_file_name=_base_file(backing),
                label=device.deviceInfo.label if device.deviceInfo else None,
                disk_mode=getattr(backing, "diskMode", None),
            )
        )
    return disks


def observed_nics(devices: list[Any], port_group_names: dict[str, str]) -> list[ObservedNic]:
    """Every network adapter in device-key order (vSphere's "Network adapter 1, 2, ..." order), with the name of
    its port group: a standard one names itself, a distributed one by key (``port_group_names``)."""
    nics = []
    for device in devices:
        if not isinstance(device, vim.vm.device.VirtualEthernetCard):
            continue
        backing = device.backing
        if isinstance(backing, vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo):
            key = backing.port.portgroupKey
            network = port_group_names.get(key, key)
        elif isinstance(backing, vim.vm.device.VirtualEthernetCard.OpaqueNetworkBackingInfo):
            network = backing.opaqueNetworkId
        else:
            network = getattr(backing, "deviceName", None) or ""
        nics.append(
            ObservedNic(
                device_key=device.key,
                mac_address=(device.macAddress or "").lower() or None,
                network=network,
                adapter=type(device).__name__.removeprefix("Virtual").lower(),
                label=device.deviceInfo.label if device.deviceInfo else None,
            )
        )
    return sorted(nics, key=lambda nic: nic.device_key)


def _boot_disk_key(boot_options: Any) -> int | None:
    for entry in getattr(boot_options, "bootOrder", None) or []:
        if isinstance(entry, vim.vm.BootOptions.BootableDiskDevice):
            return entry.deviceKey
    return None


class VSphereClient:
    """``with VSphereClient(endpoint) as vc: vc.list_vms()``."""

    def __init__(self, endpoint: VSphereEndpoint, page_size: int = 500) -> None:
        self.endpoint = endpoint
        # Objects per RetrievePropertiesEx page; vCenter may answer with fewer.
        self.page_size = page_size
        self._si: Any = None

    def __enter__(self) -> VSphereClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        ep = self.endpoint
        context = ep.ssl_context()
        try:
            self._si = SmartConnect(
                host=ep.host,
                port=ep.port,
                user=ep.username,
                pwd=ep.password,
                thumbprint=ep.thumbprint,
                sslContext=context,
                connectionPoolTimeout=60,
            )
        except vim.fault.InvalidLogin as exc:
            raise VSphereError(f"vCenter {ep.host}:{ep.port} rejected the login for {ep.username!r}") from exc
        except (ThumbprintMismatchException, CertificateMismatchException) as exc:
            raise CertificateNotTrusted(
                f"vCenter {ep.host}:{ep.port} presented a certificate that does not match the pinned "
                f"thumbprint ({exc}); check the VCenter block's thumbprint"
            ) from exc
        except (OSError, vmodl.MethodFault) as exc:
            raise VSphereError(f"cannot connect to vCenter {ep.host}:{ep.port}: {exc}") from exc

    def close(self) -> None:
        if self._si is not None:
            Disconnect(self._si)
            self._si = None

    @property
    def service_instance(self) -> Any:
        if self._si is None:
            raise VSphereError("not connected")
        return self._si

    def vcenter_id(self) -> str:
        """The vCenter's own instance UUID: VM instance UUIDs are unique only within one vCenter."""
        about = self.service_instance.content.about
        return getattr(about, "instanceUuid", None) or f"{self.endpoint.host}:{self.endpoint.port}"

    def _retrieve(self, specs: list[Any]) -> Iterator[tuple[Any, dict[str, Any]]]:
        """RetrievePropertiesEx page by page (ContinueRetrievePropertiesEx): vCenter answers a large estate in
        pages, and holding one page at a time keeps memory flat however many VMs there are."""
        collector = self.service_instance.content.propertyCollector
        options = vmodl.query.PropertyCollector.RetrieveOptions(maxObjects=self.page_size)
        result = collector.RetrievePropertiesEx(specs, options)
        while result is not None:
            for obj in result.objects or []:
                yield obj.obj, {prop.name: prop.val for prop in obj.propSet or []}
            if not result.token:
                break
            result = collector.ContinueRetrievePropertiesEx(result.token)

    @contextmanager
    def every_vm(self, paths: list[str]) -> Iterator[Any]:
        """A filter spec selecting ``paths`` of every VM, through a container view that lives as long as the
        context."""
        content = self.service_instance.content
        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
        try:
            yield vmodl.query.PropertyCollector.FilterSpec(
                objectSet=[
                    vmodl.query.PropertyCollector.ObjectSpec(
                        obj=view,
                        skip=True,
                        selectSet=[
                            vmodl.query.PropertyCollector.TraversalSpec(
                                name="view", path="view", skip=False, type=vim.view.ContainerView
                            )
                        ],
                    )
                ],
                propSet=[vmodl.query.PropertyCollector.PropertySpec(type=vim.VirtualMachine, pathSet=paths)],
            )
        finally:
            view.Destroy()

    def _all_vm_properties(self, paths: list[str]) -> Iterator[tuple[Any, dict[str, Any]]]:
        with self.every_vm(paths) as spec:
            yield from self._retrieve([spec])

    def _vm_properties_of(self, vms: list[Any]) -> list[tuple[Any, dict[str, Any]]]:
        """The inventory properties of the given VMs only: one round trip whatever the estate's size."""
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=vm, skip=False) for vm in vms],
            propSet=[vmodl.query.PropertyCollector.PropertySpec(type=vim.VirtualMachine, pathSet=_VM_PROPERTIES)],
            reportMissingObjectsInResults=True,
        )
        return list(self._retrieve([spec]))

    def port_group_names(self) -> dict[str, str]:
        """Distributed port group key -> name, so a NIC on a distributed switch is recorded by its name."""
        content = self.service_instance.content
        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.dvs.DistributedVirtualPortgroup], True)
        try:
            return {group.key: group.name for group in view.view}
        finally:
            view.Destroy()

    def _observed(
        self, vcenter: str, moref: Any, props: dict[str, Any], port_groups: dict[str, str]
    ) -> ObservedVM | None:
        if props.get("config.template") or "config.instanceUuid" not in props:
            return None
        name = props["name"]
        devices = list(props.get("config.hardware.device") or [])
        disks = observed_disks(devices, name)
        return ObservedVM(
            vcenter=vcenter,
            instance_uuid=props["config.instanceUuid"],
            moref=moref._moId,
            name=name,
            guest_os=props.get("config.guestFullName"),
            cpu_count=props.get("config.hardware.numCPU"),
            memory_mb=props.get("config.hardware.memoryMB"),
            power_state=str(props.get("runtime.powerState")) if "runtime.powerState" in props else None,
            cbt_enabled=bool(props.get("config.changeTrackingEnabled")),
            boot_disk_key=_boot_disk_key(props.get("config.bootOptions")),
            disks=tuple(disks),
            nics=tuple(observed_nics(devices, port_groups)),
        )

    def list_vms(self) -> list[ObservedVM]:
        """Every VM (templates excluded) with its disks and NICs, read in pages of ``page_size`` VMs."""
        vcenter = self.vcenter_id()
        port_groups = self.port_group_names()
        vms = [
            vm
            for moref, props in self._all_vm_properties(_VM_PROPERTIES)
            if (vm := self._observed(vcenter, moref, props, port_groups))
        ]
        return sorted(vms, key=lambda vm: (vm.name, vm.instance_uuid))

    def vm_folders(self) -> dict[str, str]:
        """Every VM's inventory folder as a path, ``/<datacenter>/vm/<folder>/...``, keyed on the VM's moref."""
        content = self.service_instance.content
        kinds = [vim.VirtualMachine, vim.Folder, vim.Datacenter]
        view = content.viewManager.CreateContainerView(content.rootFolder, kinds, True)
        try:
            collector = vmodl.query.PropertyCollector
            spec = collector.FilterSpec(
                objectSet=[
                    collector.ObjectSpec(
                        obj=view,
                        skip=True,
                        selectSet=[
                            collector.TraversalSpec(name="view", path="view", skip=False, type=vim.view.ContainerView)
                        ],
                    )
                ],
                propSet=[collector.PropertySpec(type=kind, pathSet=["name", "parent"]) for kind in kinds],
            )
            found = {
                obj.obj._moId: (obj.obj, {prop.name: prop.val for prop in obj.propSet})
                for obj in content.propertyCollector.RetrieveContents([spec])
            }
        finally:
            view.Destroy()

        def path_of(moref: str) -> str:
            parts: list[str] = []
            while moref in found:
                _, props = found[moref]
                parts.append(props.get("name", ""))
                parent = props.get("parent")
                moref = parent._moId if parent is not None else ""
            return "/" + "/".join(reversed(parts))  # the root folder is not in the view: paths start below it

        return {
            moref: path_of(props["parent"]._moId)
            for moref, (obj, props) in found.items()
            if isinstance(obj, vim.VirtualMachine) and props.get("parent") is not None
        }

    def _vm_by_moref(self, moref: str) -> Any | None:
        vm = vim.VirtualMachine(moref, self.service_instance._stub)
        try:
            _ = vm.name
        except vmodl.fault.ManagedObjectNotFound:
            return None
        return vm

    def _vms_by_name(self, name: str) -> list[Any]:
        # Names only, not the hardware: the cost of a lookup is one small property per VM, paged.
        return [moref for moref, props in self._all_vm_properties(["name"]) if props.get("name") == name]

    def find_vm(self, name_or_uuid: str) -> ObservedVM:
        """One VM by instance UUID (the search index), moref, or name (a name-only property query)."""
        handle = name_or_uuid
        candidates: list[Any] = []
        if _UUID.match(handle):
            found = self.service_instance.content.searchIndex.FindByUuid(None, handle, True, True)
            candidates = [found] if found is not None else []
        if not candidates and _MOREF.match(handle):
            found = self._vm_by_moref(handle)
            candidates = [found] if found is not None else []
        if not candidates:
            candidates = self._vms_by_name(handle)
        if not candidates:
            raise VMNotFound(f"vCenter {self.endpoint.host} has no VM named {name_or_uuid!r}")
        if len(candidates) > 1:
            raise VSphereError(
                f"{name_or_uuid!r} names {len(candidates)} VMs on vCenter {self.endpoint.host}; use the instance UUID"
            )
        vcenter = self.vcenter_id()
        port_groups = self.port_group_names()
        matches = [
            vm
            for moref, props in self._vm_properties_of(candidates)
            if (vm := self._observed(vcenter, moref, props, port_groups))
        ]
        if not matches:
            raise VMNotFound(f"vCenter {self.endpoint.host}: {name_or_uuid!r} is a template or vanished meanwhile")
        return matches[0]

    def enable_change_tracking(self, name_or_uuid: str) -> bool:
        """Turn CBT on for a VM; returns False when it already was on.

        vSphere applies the setting to a running VM only at its next stun/unstun, so a snapshot is created and
        removed right after the reconfigure, with a name of our own and nothing else touched.
        """
        observed = self.find_vm(name_or_uuid)
        if observed.cbt_enabled:
            return False
        vm = vim.VirtualMachine(observed.moref, self.service_instance._stub)
        snapshots = VSphereSnapshots.of(self, vm)
        snapshots.wait(
            vm.ReconfigVM_Task(vim.vm.ConfigSpec(changeTrackingEnabled=True)), "enabling changed block tracking"
        )
        moref = snapshots.create_snapshot(
            CBT_ENABLE_SNAPSHOT, "vmferry: stun/unstun so that CBT takes effect", quiesce=False
        )
        snapshots.remove_snapshot(moref)
        return True

    def set_power(self, instance_uuid: str, on: bool) -> bool:
        """Power a VM on or off and wait for vCenter to finish; False when it already was. A refusal is raised
        as :class:`PowerChangeFailed` carrying vCenter's reason."""
        vm = VSphereSnapshots(self, instance_uuid).vm
        wanted = vim.VirtualMachinePowerState.poweredOn if on else vim.VirtualMachinePowerState.poweredOff
        if vm.runtime.powerState == wanted:
            return False
        try:
            WaitForTask(vm.PowerOnVM_Task() if on else vm.PowerOffVM_Task())
        except vmodl.MethodFault as exc:
            raise PowerChangeFailed(exc.msg or type(exc).__name__) from exc
        return True


# --- snapshots, snapshot disk layout, changed block tracking, datastore file URLs -------------------------


# QueryChangedDiskAreas' change id for "every area in use" (allocated; on VMFS, thin disks report only what
# was ever written), rather than the areas changed since a snapshot.
ALLOCATED_AREAS = "*"


class CbtUnavailable(VSphereError):
    """Changed block tracking cannot answer for this disk: the caller must fall back to a full read."""


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    moref: str
    description: str


@dataclass(frozen=True)
class SnapshotDisk:
    """A disk as frozen in a snapshot: what the agent reads."""

    device_key: int
    capacity_bytes: int
    file_name: str  # "[datastore] folder/name.vmdk" (a descriptor)
    change_id: str | None
    backing_uuid: str | None


_DATASTORE_PATH = re.compile(r"^\[(?P<datastore>[^\]]+)\]\s*(?P<path>.+)$")


def split_datastore_path(file_name: str) -> tuple[str, str]:
    """``"[ds1] vm/vm.vmdk"`` -> ``("ds1", "vm/vm.vmdk")``."""
    match = _DATASTORE_PATH.match(file_name)
    if not match:
        raise VSphereError(f"{file_name!r} is not a datastore path like '[datastore] folder/disk.vmdk'")
    return match["datastore"], match["path"]


def _walk_snapshots(trees: list[Any]) -> Iterator[Any]:
    for tree in trees or []:
        yield tree
        yield from _walk_snapshots(tree.childSnapshotList)


def validated_changed_areas(
    responses: list[tuple[int, int, list[tuple[int, int]]]], capacity_bytes: int
) -> list[tuple[int, int]]:
    """Check paginated QueryChangedDiskAreas answers: contiguous slices covering the whole disk, every
    changed area inside its slice. An incomplete answer would silently drop changes (Bareos before 24.0.1)."""
    expected_start = 0
    areas: list[tuple[int, int]] = []
    for start, length, changed in responses:
        if start != expected_start:
            raise CbtUnavailable(f"changed-area slices are not contiguous: expected {expected_start}, got {start}")
        for area_start, area_length in changed:
            if area_length < 0 or area_start < start or area_start + area_length > start + length:
                raise CbtUnavailable(f"changed area {area_start}+{area_length} lies outside its slice {start}+{length}")
            if area_start + area_length > capacity_bytes:
                raise CbtUnavailable(
                    f"changed area {area_start}+{area_length} lies beyond the disk's {capacity_bytes} bytes"
                )
            areas.append((area_start, area_length))
        expected_start = start + length
    if expected_start < capacity_bytes:
        raise CbtUnavailable(f"changed areas cover {expected_start} of {capacity_bytes} bytes")
    return areas


class VSphereSnapshots:
    """The snapshot and disk-reading side of vSphere for one VM, as the agent needs it."""

    def __init__(self, client: VSphereClient, vm_handle: str) -> None:
        self.client = client
        self.vm = self._find_vm_object(vm_handle)

    @classmethod
    def of(cls, client: VSphereClient, vm: Any) -> VSphereSnapshots:
        """For a VM object already in hand."""
        snapshots = cls.__new__(cls)
        snapshots.client = client
        snapshots.vm = vm
        return snapshots

    def _find_vm_object(self, handle: str) -> Any:
        content = self.client.service_instance.content
        if handle.startswith("vm-"):
            vm = vim.VirtualMachine(handle, self.client.service_instance._stub)
            try:
                _ = vm.name
                return vm
            except vmodl.fault.ManagedObjectNotFound as exc:
                raise VMNotFound(f"no VM with moref {handle!r}") from exc
        vm = content.searchIndex.FindByUuid(None, handle, True, True)
        if vm is None:
            raise VMNotFound(f"no VM with instance UUID {handle!r} on {self.client.endpoint.host}")
        return vm

    @property
    def name(self) -> str:
        return self.vm.name

    def wait(self, task: Any, what: str) -> Any:
        try:
            WaitForTask(task)
        except vmodl.MethodFault as exc:
            raise VSphereError(f"VM {self.name!r}: {what} failed: {exc.msg or exc}") from exc
        return task.info.result

    def snapshots(self) -> list[SnapshotInfo]:
        snapshot = self.vm.snapshot
        if snapshot is None:
            return []
        return [
            SnapshotInfo(tree.name, tree.snapshot._moId, tree.description or "")
            for tree in _walk_snapshots(snapshot.rootSnapshotList)
        ]

    def create_snapshot(self, name: str, description: str, *, quiesce: bool) -> str:
        task = self.vm.CreateSnapshot_Task(name=name, description=description, memory=False, quiesce=quiesce)
        return self.wait(task, f"creating snapshot {name!r}")._moId

    def remove_snapshot(self, moref: str) -> None:
        snapshot = vim.vm.Snapshot(moref, self.client.service_instance._stub)
        self.wait(snapshot.RemoveSnapshot_Task(removeChildren=False, consolidate=True), "removing snapshot")

    def remove_snapshots_named(self, name: str) -> list[str]:
        """Remove every snapshot called exactly ``name``; returns the morefs removed. A prefix would take other
        jobs' snapshots too (a second hub's, still in use)."""
        removed = []
        for info in self.snapshots():
            if info.name == name:
                self.remove_snapshot(info.moref)
                removed.append(info.moref)
        return removed

    def snapshot_disks(self, moref: str) -> list[SnapshotDisk]:
        snapshot = vim.vm.Snapshot(moref, self.client.service_instance._stub)
        disks = []
        for device in snapshot.config.hardware.device:
            if isinstance(device, vim.vm.device.VirtualDisk):
                backing = device.backing
                disks.append(
                    SnapshotDisk(
                        device_key=device.key,
                        capacity_bytes=device.capacityInBytes or (device.capacityInKB or 0) * 1024,
                        file_name=backing.fileName,
                        change_id=getattr(backing, "changeId", None) or None,
                        backing_uuid=getattr(backing, "uuid", None) or None,
                    )
                )
        return disks

    def changed_areas(
        self, snapshot_moref: str, device_key: int, change_id: str, capacity_bytes: int
    ) -> list[tuple[int, int]]:
        """QueryChangedDiskAreas since ``change_id``, paginated by startOffset and checked for coverage."""
        snapshot = vim.vm.Snapshot(snapshot_moref, self.client.service_instance._stub)
        responses = []
        offset = 0
        while offset < capacity_bytes:
            try:
                info = self.vm.QueryChangedDiskAreas(
                    snapshot=snapshot, deviceKey=device_key, startOffset=offset, changeId=change_id
                )
            except vmodl.fault.MethodNotFound as exc:
                raise CbtUnavailable(f"vCenter {self.client.endpoint.host} does not implement CBT") from exc
            except (vim.fault.FileFault, vmodl.fault.InvalidArgument, vim.fault.NotFound) as exc:
                raise CbtUnavailable(
                    f"VM {self.name!r} disk {device_key}: change id {change_id!r} is not usable ({exc.msg})"
                ) from exc
            changed = [(area.start, area.length) for area in info.changedArea or []]
            responses.append((info.startOffset, info.length, changed))
            if info.length <= 0:
                raise CbtUnavailable(f"VM {self.name!r} disk {device_key}: empty changed-area slice")
            offset = info.startOffset + info.length
        return validated_changed_areas(responses, capacity_bytes)

    def datacenter_path(self) -> str:
        entity = self.vm.parent
        while entity is not None and not isinstance(entity, vim.Datacenter):
            entity = entity.parent
        if entity is None:
            raise VSphereError(f"VM {self.name!r} is not inside a datacenter")
        parts = [entity.name]
        parent = entity.parent
        while isinstance(parent, vim.Folder) and parent.parent is not None:
            parts.insert(0, parent.name)
            parent = parent.parent
        return "/".join(parts)


def datastore_file_url(host: str, port: int, datacenter_path: str, file_name: str) -> str:
    """The vSphere datastore HTTP URL of a file (``/folder/<path>?dcPath=&dsName=``)."""
    from urllib.parse import quote, urlencode

    datastore, path = split_datastore_path(file_name)
    query = urlencode({"dcPath": datacenter_path, "dsName": datastore})
    return f"https://{host}:{port}/folder/{quote(path)}?{query}"


def session_cookie(client: VSphereClient) -> str:
    """The ``vmware_soap_session`` cookie that the datastore HTTP API accepts."""
    cookie = client.service_instance._stub.cookie
    return cookie.split(";", 1)[0].strip() if cookie else ""
