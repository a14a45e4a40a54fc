"""A small vSphere client on pyvmomi: connect safely, read VMs and their disks. Prefect-free."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl
from pyVmomi.Security import CertificateMismatchException, ThumbprintMismatchException

from vmferry.inventory import ObservedDisk, ObservedVM, base_disk_file


class VSphereError(Exception):
    """A vCenter call failed; the message names the vCenter and, where known, the VM."""


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

    def ssl_context(self) -> ssl.SSLContext:
        if not self.verify_tls and not self.thumbprint:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        # pyvmomi checks a pinned thumbprint only after normal verification failed, and silently skips
        # verification for 127.0.0.1 unless it is handed a verifying context: so always hand it one.
        return ssl.create_default_context(cafile=self.ca_file)


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
                f"VM {vm_name!r}: disk {device.key} names controller {device.controllerKey}, which the VM "
                "does not have"
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


def _boot_disk_key(boot_options: Any) -> int | None:
    for entry in getattr(boot_options, "bootOrder", None) or []:
        if isinstance(entry, vim.vm.BootOptions.BootableDiskDevice):
            return entry.deviceKey
    return None


class VSphereClient:
    """``with VSphereClient(endpoint) as vc: vc.list_vms()``."""

    def __init__(self, endpoint: VSphereEndpoint) -> None:
        self.endpoint = endpoint
        self._si: Any = None

    def __enter__(self) -> VSphereClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        ep = self.endpoint
        try:
            self._si = SmartConnect(
                host=ep.host,
                port=ep.port,
                user=ep.username,
                pwd=ep.password,
                thumbprint=ep.thumbprint,
                sslContext=ep.ssl_context(),
                connectionPoolTimeout=60,
            )
        except vim.fault.InvalidLogin as exc:
            raise VSphereError(f"vCenter {ep.host}:{ep.port} rejected the login for {ep.username!r}") from exc
        except (ThumbprintMismatchException, CertificateMismatchException) as exc:
            raise VSphereError(
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

    def _vm_properties(self) -> Iterator[tuple[Any, dict[str, Any]]]:
        content = self.service_instance.content
        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
        try:
            spec = vmodl.query.PropertyCollector.FilterSpec(
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
                propSet=[
                    vmodl.query.PropertyCollector.PropertySpec(
                        type=vim.VirtualMachine, pathSet=_VM_PROPERTIES
                    )
                ],
            )
            for obj in content.propertyCollector.RetrieveContents([spec]):
                yield obj.obj, {prop.name: prop.val for prop in obj.propSet}
        finally:
            view.Destroy()

    def list_vms(self) -> list[ObservedVM]:
        """Every VM (templates excluded) with its disks, in one property-collector round trip."""
        vcenter = self.vcenter_id()
        vms = []
        for moref, props in self._vm_properties():
            if props.get("config.template") or "config.instanceUuid" not in props:
                continue
            name = props["name"]
            disks = observed_disks(list(props.get("config.hardware.device") or []), name)
            vms.append(
                ObservedVM(
                    vcenter=vcenter,
                    instance_uuid=props["config.instanceUuid"],
                    moref=moref._moId,
                    name=name,
                    guest_os=props.get("config.guestFullName"),
                    cpu_count=props.get("config.hardware.numCPU"),
                    memory_mb=props.get("config.hardware.memoryMB"),
                    power_state=str(props.get("runtime.powerState"))
                    if "runtime.powerState" in props
                    else None,
                    cbt_enabled=bool(props.get("config.changeTrackingEnabled")),
                    boot_disk_key=_boot_disk_key(props.get("config.bootOptions")),
                    disks=tuple(disks),
                )
            )
        return sorted(vms, key=lambda vm: (vm.name, vm.instance_uuid))

    def find_vm(self, name_or_uuid: str) -> ObservedVM:
        matches = [vm for vm in self.list_vms() if name_or_uuid in (vm.name, vm.instance_uuid, vm.moref)]
        if not matches:
            raise VSphereError(f"vCenter {self.endpoint.host} has no VM named {name_or_uuid!r}")
        if len(matches) > 1:
            raise VSphereError(
                f"{name_or_uuid!r} names {len(matches)} VMs on vCenter {self.endpoint.host}; "
                "use the instance UUID"
            )
        return matches[0]
