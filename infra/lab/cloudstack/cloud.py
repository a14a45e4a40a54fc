"""The simulated cloud: zones, offerings, templates, VMs and volumes, and the rules CloudStack enforces on them.

Error texts and the order of the checks follow apache/cloudstack (VolumeApiServiceImpl.attachVolumeToVM /
detachVolumeFromVM / allocVolume / retrieveAndValidateVolume / getDeviceId, VolumeDaoImpl.attachVolume /
detachVolume). Texts marked [U] in docs of this package were not found in CloudStack's source and are stand-ins.

Nothing here knows about HTTP; callers hold the simulator's lock around every method.
"""

from __future__ import annotations

import ipaddress
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
# hypervisor_capabilities' KVM "default" row holds 32 data volumes (schema-452to460.sql, as CloudStack's
# developers cite it in apache/cloudstack#1953); 6 is only the column default for a row without a value.
KVM_MAX_DATA_VOLUMES = 32
# CloudStack's defaults for custom.diskoffering.min.size / max.size (GB) and storage.max.volume.size (GB).
CUSTOM_MIN_GB = 1
CUSTOM_MAX_GB = 1024
MAX_VOLUME_GB = 2000
# How udev names a KVM guest's disk by bus (LibvirtComputingResource sets the serial on both).
HUB_DISK_PREFIX = {"virtio-blk": "virtio-", "virtio-scsi": "scsi-0QEMU_QEMU_HARDDISK_"}
ACCOUNT_ID = "8a1c0c5e-0e5f-11ef-9b1d-0242ac110002"
# ApiErrorCode.INSUFFICIENT_CAPACITY_ERROR
INSUFFICIENT_CAPACITY = 533


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


def _no_deployment(vm: VirtualMachine) -> ApiError:
    """InsufficientServerCapacityException from the deployment planner: INSUFFICIENT_CAPACITY_ERROR (533)."""
    return ApiError(f"Unable to create a deployment for VM[User|i-2-{vm.db_id}-VM]", errorcode=INSUFFICIENT_CAPACITY)


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
class Cluster:
    id: str
    name: str
    zone: Zone
    db_id: int = field(default_factory=_next_db_id)


@dataclass
class Host:
    id: str
    name: str
    cluster: Cluster
    db_id: int = field(default_factory=_next_db_id)


@dataclass
class StoragePool:
    """Primary storage with its scope (ScopeType HOST, CLUSTER or ZONE) as StoragePoolVO holds it."""

    id: str
    name: str
    zone: Zone
    scope: str  # HOST, CLUSTER or ZONE
    cluster: Cluster | None = None
    host: Host | None = None
    managed: bool = False
    db_id: int = field(default_factory=_next_db_id)

    @property
    def local(self) -> bool:
        return self.scope == "HOST"

    def reachable_from(self, host: Host) -> bool:
        """Whether a VM on ``host`` can use a volume on this pool."""
        if self.scope == "ZONE":
            return host.cluster.zone is self.zone
        if self.scope == "CLUSTER":
            return host.cluster is self.cluster
        return host is self.host

    def response(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "zoneid": self.zone.id,
            "zonename": self.zone.name,
            "scope": self.scope,
            "type": "Filesystem" if self.local else "NetworkFilesystem",
            "state": "Up",
            "hypervisor": HYPERVISOR,
            "managed": self.managed,
            "created": cs_time(now()),
        }
        cluster = self.cluster or (self.host.cluster if self.host else None)
        if cluster is not None:
            out["clusterid"] = cluster.id
            out["clustername"] = cluster.name
        return out


@dataclass
class Network:
    """A guest network: Isolated (owned by the account, NAT behind a virtual router) or Shared (zone-wide)."""

    id: str
    name: str
    zone: Zone
    guest_type: str  # Isolated or Shared
    cidr: str
    db_id: int = field(default_factory=_next_db_id)

    @property
    def gateway(self) -> str:
        return str(next(ipaddress.ip_network(self.cidr).hosts()))

    @property
    def netmask(self) -> str:
        return str(ipaddress.ip_network(self.cidr).netmask)

    def response(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "displaytext": self.name,
            "zoneid": self.zone.id,
            "zonename": self.zone.name,
            "type": self.guest_type,
            "traffictype": "Guest",
            "cidr": self.cidr,
            "gateway": self.gateway,
            "netmask": self.netmask,
            "state": "Implemented",
            "acltype": "Account" if self.guest_type == "Isolated" else "Domain",
            "account": ACCOUNT,
            "domain": DOMAIN,
            "domainid": DOMAIN_ID,
        }


@dataclass
class Nic:
    id: str
    network: Network
    ip: str
    mac: str
    device_id: int
    is_default: bool

    def response(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "networkid": self.network.id,
            "networkname": self.network.name,
            "ipaddress": self.ip,
            "macaddress": self.mac,
            "deviceid": str(self.device_id),  # NicResponse.deviceId is a String
            "isdefault": self.is_default,
            "type": self.network.guest_type,
            "traffictype": "Guest",
            "gateway": self.network.gateway,
            "netmask": self.network.netmask,
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
    nics: list[Nic] = field(default_factory=list)
    host: Host | None = None  # set while Running (and kept as last host when stopped)
    cluster_request: Cluster | None = None  # deployVirtualMachine clusterid

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
            **({"hostid": self.host.id, "hostname": self.host.name} if self.host and self.state == "Running" else {}),
            "nic": [nic.response() for nic in self.nics],
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
    pool: StoragePool | None = None  # set once the volume exists on primary storage
    created: datetime = field(default_factory=now)
    attached: datetime | None = None
    db_id: int = field(default_factory=_next_db_id)

    def response(self, cloud: Cloud, *, full: bool = True) -> dict[str, Any]:
        """``full``: the root admin's view (ResponseView.Full); only it shows path, storage and storageid."""
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            # VolumeJoinDaoImpl.newVolumeResponse adds every ResourceTag of the volume (an empty list when none)
            "tags": [tag.response() for tag in cloud.tags_of("Volume", self.id)],
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
            "storagetype": "local" if self.pool is not None and self.pool.local else "shared",
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
        if full and self.path is not None and self.pool is not None:
            out["path"] = self.path
            out["storage"] = self.pool.name
            out["storageid"] = self.pool.id
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


@dataclass
class HypervisorCapabilities:
    """A hypervisor_capabilities row (HypervisorCapabilitiesVO); HypervisorCapabilitiesResponse's fields."""

    id: str
    hypervisor: str
    version: str
    max_data_volumes_limit: int
    max_guests_limit: int = 50

    def response(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "hypervisor": self.hypervisor,
            "hypervisorversion": self.version,
            "maxguestslimit": self.max_guests_limit,
            "maxdatavolumeslimit": self.max_data_volumes_limit,
            "maxhostspercluster": 16,
            "securitygroupenabled": True,
            "storagemotionenabled": True,
            "vmsnapshotenabled": True,
        }


@dataclass
class ResourceTag:
    """A resource_tags row (ResourceTagVO); ResourceTagResponse's fields."""

    key: str
    value: str
    resource_type: str  # ResourceObjectType's name: Volume, UserVm, ...
    resource_id: str  # the resource's uuid
    customer: str | None = None

    def response(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "key": self.key,
            "value": self.value,
            "resourcetype": self.resource_type,
            "resourceid": self.resource_id,
            "account": ACCOUNT,
            "domainid": DOMAIN_ID,
            "domain": DOMAIN,
        }
        if self.customer is not None:
            out["customer"] = self.customer
        return out


# ResourceTag.ResourceObjectType names the simulator knows (CloudStack has many more); the value is the entity
# kind ``Cloud.resolve`` looks the uuid up in.
TAGGABLE_TYPES = {"Volume": "volume", "UserVm": "vm", "Template": "template", "Zone": "zone"}


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
    isolated_network_id: str = ""
    shared_network_id: str = ""
    cluster_id: str = ""
    primary_pool_id: str = ""


class Cloud:
    """Everything the simulated CloudStack knows. Volumes live as sparse files under ``state_dir/volumes``."""

    def __init__(
        self,
        state_dir: Path,
        *,
        max_data_disks: int = KVM_MAX_DATA_VOLUMES,
        hub_vm_id: str | None = None,
        hub_name: str = "vmferry-hub",
        template_size_bytes: int = 2 * GIB,
        hub_disk_bus: str = "virtio-blk",
    ) -> None:
        if hub_disk_bus not in HUB_DISK_PREFIX:
            raise ValueError(f"hub_disk_bus must be one of {', '.join(HUB_DISK_PREFIX)}, not {hub_disk_bus!r}")
        self.hub_disk_bus = hub_disk_bus
        self.state_dir = state_dir
        self.volumes_dir = state_dir / "volumes"
        self.dev_root = state_dir / "dev"
        self.by_id_dir = self.dev_root / "disk" / "by-id"
        self.volumes_dir.mkdir(parents=True, exist_ok=True)
        self.by_id_dir.mkdir(parents=True, exist_ok=True)
        # hypervisor_capabilities rows: the data-volume limit is read from here, per hypervisor and version
        self.hypervisor_capabilities: list[HypervisorCapabilities] = [
            HypervisorCapabilities(str(uuid.uuid4()), HYPERVISOR, "default", max_data_disks),
            HypervisorCapabilities(str(uuid.uuid4()), "VMware", "default", 59),
            HypervisorCapabilities(str(uuid.uuid4()), "XenServer", "default", 13),
        ]
        self.resource_tags: list[ResourceTag] = []
        # the most data volumes each VM held at once: what tests check a hub's limit against
        self.data_volume_high_water: dict[str, int] = {}
        # VMs whose attached volumes show up under dev/disk/by-id: the hub(s) the lab's workers run on
        self.hub_vm_ids: list[str] = []
        # set (lab option) to really run started VMs in qemu; the hub below is never run
        self.hypervisor: QemuHypervisor | None = None

        self.zones: dict[str, Zone] = {}
        self.clusters: dict[str, Cluster] = {}
        self.hosts: dict[str, Host] = {}
        self.pools: dict[str, StoragePool] = {}
        self.networks: dict[str, Network] = {}
        self.disk_offerings: dict[str, DiskOffering] = {}
        self.service_offerings: dict[str, ServiceOffering] = {}
        self.templates: dict[str, Template] = {}
        self.vms: dict[str, VirtualMachine] = {}
        self.volumes: dict[str, Volume] = {}
        # CloudStack resolves ids "including removed" rows: a removed id lists as nothing instead of an error.
        self.removed: dict[str, dict[str, Any]] = {"vm": {}, "volume": {}}

        zone = Zone(str(uuid.uuid4()), "sim-zone-1")
        self.zones[zone.id] = zone
        cluster = self.add_cluster(zone, "sim-cluster-1")
        self.add_host(cluster, "sim-host-1")
        primary = self.add_pool(zone, "sim-primary", "CLUSTER", cluster=cluster)
        isolated = self.add_network(zone, "sim-isolated-1", "Isolated", "10.1.1.0/24")
        shared = self.add_network(zone, "sim-shared-1", "Shared", "192.168.50.0/24")
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
        self.seed = SeedIds(
            zone.id,
            custom.id,
            fixed.id,
            offering.id,
            custom_offering.id,
            template.id,
            hub.id,
            isolated_network_id=isolated.id,
            shared_network_id=shared.id,
            cluster_id=cluster.id,
            primary_pool_id=primary.id,
        )
        self.hub_vm_ids.append(hub.id)
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
            "network": self.networks,
            "cluster": self.clusters,
            "host": self.hosts,
            "storagepool": self.pools,
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

    # ---- topology: clusters, hosts, storage pools, guest networks (what an operator sets up) ------------------

    def add_cluster(self, zone: Zone, name: str) -> Cluster:
        cluster = Cluster(str(uuid.uuid4()), name, zone)
        self.clusters[cluster.id] = cluster
        return cluster

    def add_host(self, cluster: Cluster, name: str) -> Host:
        host = Host(str(uuid.uuid4()), name, cluster)
        self.hosts[host.id] = host
        return host

    def add_pool(
        self,
        zone: Zone,
        name: str,
        scope: str,
        *,
        cluster: Cluster | None = None,
        host: Host | None = None,
        managed: bool = False,
    ) -> StoragePool:
        if scope not in ("HOST", "CLUSTER", "ZONE"):
            raise ValueError(f"scope must be HOST, CLUSTER or ZONE, not {scope!r}")
        if (scope == "CLUSTER") != (cluster is not None) or (scope == "HOST") != (host is not None):
            raise ValueError("a CLUSTER pool needs a cluster, a HOST pool a host, a ZONE pool neither")
        pool = StoragePool(str(uuid.uuid4()), name, zone, scope, cluster, host, managed)
        self.pools[pool.id] = pool
        return pool

    def add_network(self, zone: Zone, name: str, guest_type: str, cidr: str) -> Network:
        if guest_type not in ("Isolated", "Shared"):
            raise ValueError(f"guest type must be Isolated or Shared, not {guest_type!r}")
        network = Network(str(uuid.uuid4()), name, zone, guest_type, str(ipaddress.ip_network(cidr)))
        self.networks[network.id] = network
        return network

    def default_network(self, zone: Zone) -> Network:
        """UserVmManagerImpl.getDefaultNetwork for an Advanced zone without networkids: the account's only
        Isolated network, a new one when it has none, a refusal when it has several."""
        isolated = [n for n in self.networks.values() if n.zone is zone and n.guest_type == "Isolated"]
        if len(isolated) > 1:
            raise invalid_value(
                f"More than 1 default Isolated networks are found for account Acct[{ACCOUNT_ID}-{ACCOUNT}]; "
                "please specify networkIds"
            )
        if isolated:
            return isolated[0]
        # createDefaultNetworkForAccount: from the Required network offering, named <account>-network
        used = {ipaddress.ip_network(n.cidr) for n in self.networks.values()}
        cidr = next(c for c in (ipaddress.ip_network(f"10.1.{i}.0/24") for i in range(1, 255)) if c not in used)
        return self.add_network(zone, f"{ACCOUNT}-network", "Isolated", str(cidr))

    def allocate_nics(self, vm: VirtualMachine, requests: list[tuple[Network, str | None]]) -> None:
        """NetworkOrchestrator.allocate: one NIC per requested network in order, the first one default; a
        requested IP must be free in the network (IpAddressManagerImpl.acquireGuestIpAddress)."""
        for network, _ in requests:
            if network.zone is not vm.zone:
                raise invalid_value(f"Network id={network.db_id} doesn't belong to zone {vm.zone.db_id}")
        nics: list[Nic] = []
        for index, (network, wanted) in enumerate(requests):
            taken = {nic.ip for other in self.vms.values() for nic in other.nics if nic.network is network}
            taken |= {nic.ip for nic in nics if nic.network is network}
            free = [str(a) for a in ipaddress.ip_network(network.cidr).hosts() if str(a) != network.gateway]
            if wanted is not None:
                if wanted not in free or wanted in taken:
                    raise ApiError(
                        f"Unable to acquire Guest IP address for network Ntwk[{network.db_id}|Guest|{network.id}]",
                        errorcode=INSUFFICIENT_CAPACITY,
                        cserrorcode=4310,
                    )
                ip = wanted
            else:
                ip = next(a for a in free if a not in taken)
            mac = "02:00:" + ":".join(f"{b:02x}" for b in os.urandom(4))
            nics.append(Nic(str(uuid.uuid4()), network, ip, mac, index, index == 0))
        vm.nics = nics

    def root_pool(self, vm: VirtualMachine) -> StoragePool | None:
        root = next((v for v in self.volumes_of(vm) if v.device_id == 0), None)
        return root.pool if root is not None else None

    @staticmethod
    def _need_move(vm: VirtualMachine, root_pool: StoragePool, pool: StoragePool) -> bool:
        """VolumeApiServiceImpl.needMoveVolume(ROOT volume, volume to attach): must the volume on ``pool`` move to
        the ROOT's pool? Zone-wide never; across scope types only where the VM's cluster or host cannot reach it."""
        if pool.scope == "ZONE":
            return False
        if pool.scope != root_pool.scope:
            if pool.scope == "CLUSTER":
                if root_pool.host is not None:
                    vm_cluster = root_pool.host.cluster
                else:
                    vm_cluster = vm.host.cluster if vm.host is not None else None
                return pool.cluster is not vm_cluster
            if pool.scope == "HOST" and vm.host is not None and pool.host is vm.host:
                return False  # the VM's (last) host is the one that has it
            raise invalid_value(f"Can't move volume between scope: {pool.scope} and {root_pool.scope}")
        # isSameScope compares the scope's id (cluster or host), not the pools themselves
        if pool.scope == "CLUSTER":
            return pool.cluster is not root_pool.cluster
        return pool.host is not root_pool.host

    def _pick_host(self, vm: VirtualMachine) -> Host:
        """The deployment planner: a host (in the requested cluster, if any) that reaches every pool the VM's
        volumes are on; none is InsufficientServerCapacityException."""
        pools = [v.pool for v in self.volumes_of(vm) if v.pool is not None]
        for host in self.hosts.values():
            if host.cluster.zone is not vm.zone:
                continue
            if vm.cluster_request is not None and host.cluster is not vm.cluster_request:
                continue
            if all(pool.reachable_from(host) for pool in pools):
                return host
        raise _no_deployment(vm)

    def _pool_for_new_volume(self, vm: VirtualMachine, host: Host) -> StoragePool:
        """Where a VM's Allocated volume is created at start: next to its other volumes, else the first pool the
        host reaches (the simulator's allocators keep insertion order)."""
        for volume in self.volumes_of(vm):
            if volume.pool is not None and volume.pool.reachable_from(host):
                return volume.pool
        for pool in self.pools.values():
            if pool.reachable_from(host) and not pool.managed:
                return pool
        raise _no_deployment(vm)

    def held_by_guest(self, volume: Volume) -> bool:
        """Whether a process on this machine (the lab hub's "guest") still has the volume's file open: KVM's detach
        waits for the guest to let go of the device, and fails when it does not."""
        try:
            target = self.volume_file(volume).stat()
        except FileNotFoundError:
            return False
        for fd_dir in Path("/proc").glob("[0-9]*/fd"):
            try:
                links = list(fd_dir.iterdir())
            except OSError:
                continue
            for link in links:
                try:
                    seen = link.stat()
                except OSError:
                    continue
                if (seen.st_dev, seen.st_ino) == (target.st_dev, target.st_ino):
                    return True
        return False

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

    def _materialize(self, volume: Volume, pool: StoragePool) -> None:
        """Put the volume on primary storage: a sparse file of its size; CloudStack then calls it Ready."""
        if volume.state != "Allocated":
            return
        volume.pool = pool
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
        # VolumeServiceImpl removes the volume's resource tags with it (ResourceTagDao.removeByIdAndType)
        self.delete_tags([volume.id], "Volume", {})
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
            self._validate_root_detach_attach(vm, volume)
            if any(v.device_id == 0 for v in self.volumes_of(vm)):
                raise invalid_value("Vm already has root volume attached to it")
        # checkNumberOfAttachedVolumes
        if device_id is None or device_id != 0:
            data_disks = [v for v in self.volumes_of(vm) if v.type == "DATADISK"]
            limit = self.max_data_volumes(vm)
            if len(data_disks) >= limit:
                raise invalid_value(
                    f"The specified VM already has the maximum number of data disks ({limit}) "
                    "attached. Please specify another VM."
                )
        # orchestrateAttachVolumeToVM: an Allocated volume is created on the pool of the VM's ROOT; one on
        # another pool moves there when needMoveVolume says so, which local storage refuses.
        root_pool = self.root_pool(vm) if device_id != 0 else None
        if root_pool is not None:
            if volume.pool is None:
                self._materialize(volume, root_pool)
            elif volume.pool is not root_pool and self._need_move(vm, root_pool, volume.pool):
                if volume.pool.local:
                    raise cloud_runtime_error(
                        f"Failed to attach local data volume {volume.name} to VM {vm.display_name} as migration of "
                        "local data volume is not allowed"
                    )
                volume.pool = root_pool  # migrateVolume: the file stands for the copy
        # sendAttachVolumeCommand -> getDeviceId (plain RuntimeExceptions, hence 530 in the job result)
        chosen = self._device_id(vm, device_id)
        volume.vm = vm
        volume.device_id = chosen
        volume.attached = now()
        if chosen == 0:
            volume.type = "ROOT"  # VolumeDaoImpl.attachVolume
        held = sum(1 for v in self.volumes_of(vm) if v.type == "DATADISK")
        self.data_volume_high_water[vm.id] = max(held, self.data_volume_high_water.get(vm.id, 0))
        self.sync_hub_links()
        return volume

    def _device_id(self, vm: VirtualMachine, device_id: int | None) -> int:
        max_device_id = self.max_data_volumes(vm) + 2 - 1  # "add 2 to consider devices root volume and cdrom"
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
    def _validate_root_detach_attach(vm: VirtualMachine, volume: Volume) -> None:
        """VolumeApiServiceImpl.validateRootVolumeDetachAttach (KVM passes the hypervisor check)."""
        # CloudStack's condition `!(state == Stopped) || (state == Destroyed)` lets only Stopped through.
        if vm.state != "Stopped":
            raise invalid_value("Root volume detach can happen only when vm is in states: Stopped or Destroyed")
        if volume.pool is not None and volume.pool.managed:
            raise invalid_value("Root volume detach is not supported for Managed DataStores")

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
            self._validate_root_detach_attach(vm, volume)
        if vm.id == self.seed.hub_vm_id and vm.state == "Running" and self.held_by_guest(volume):
            # LibvirtComputingResource detaches, then waits for the guest to release the disk  [U: agent text]
            raise cloud_runtime_error(
                f"Failed to detach volume {volume.name} from VM i-2-{vm.db_id}-VM: the guest did not release the "
                "device in time"
            )
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
        networks: list[tuple[Network, str | None]] | None = None,
        cluster: Cluster | None = None,
    ) -> VirtualMachine:
        """The synchronous half of deployVirtualMachine: a Stopped VM with its ROOT volume, both only allocated,
        and its NICs (``networks`` in order, each with an optional requested IP; none: the zone's default)."""
        requests = networks if networks else [(self.default_network(zone), None)]
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
            cluster_request=cluster,
        )
        self.allocate_nics(vm, requests)
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
        host = self._pick_host(vm)
        for volume in self.volumes_of(vm):
            if volume.state == "Allocated":
                self._materialize(volume, self._pool_for_new_volume(vm, host))
        vm.host = host
        self._power_on(vm)
        vm.state = "Running"
        self.sync_hub_links()
        return vm

    def _power_on(self, vm: VirtualMachine) -> None:
        if self.hypervisor is None or vm.id in self.hub_vm_ids:
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
        """Make ``dev/disk/by-id`` show exactly the volumes attached to the running hub(s), as udev would.

        The lab's hubs share one machine, so one directory shows what every hub of the pool sees."""
        wanted: dict[str, Path] = {}
        for hub_id in self.hub_vm_ids:
            hub = self.vms.get(hub_id)
            if hub is None or hub.state != "Running":
                continue
            for volume in self.volumes_of(hub):
                file = self.volume_file(volume)
                if file.exists():
                    wanted[HUB_DISK_PREFIX[self.hub_disk_bus] + self.serial_of(volume.id)] = file
        for link in self.by_id_dir.iterdir():
            target = wanted.get(link.name)
            if target is None or not link.is_symlink() or Path(os.readlink(link)) != target:
                link.unlink()
        for name, target in wanted.items():
            link = self.by_id_dir / name
            if not link.is_symlink():
                link.symlink_to(target)

    # ---- hypervisor capabilities and resource tags (issue 11) -------------------------------------------------

    @property
    def max_data_disks(self) -> int:
        """The lab hypervisor's data-volume limit (its "default" version row)."""
        return self.max_data_volumes(None)

    def max_data_volumes(self, vm: VirtualMachine | None) -> int:
        """HypervisorCapabilitiesDaoImpl.getMaxDataVolumesLimit for the VM's hypervisor: its version's row, else
        the "default" row; 6 (VolumeApiServiceImpl's fallback) only when neither has a value."""
        hypervisor = HYPERVISOR  # every simulated VM runs on the lab's one hypervisor
        rows = [c for c in self.hypervisor_capabilities if c.hypervisor.lower() == hypervisor.lower()]
        default = [c for c in rows if c.version == "default"]
        return (default or rows)[0].max_data_volumes_limit if rows else 6

    def set_max_data_volumes(self, hypervisor: str, limit: int) -> None:
        """An operator's updateHypervisorCapabilities maxdatavolumeslimit on the "default" version row."""
        for row in self.hypervisor_capabilities:
            if row.hypervisor.lower() == hypervisor.lower() and row.version == "default":
                row.max_data_volumes_limit = limit

    def list_hypervisor_capabilities(self, hypervisor: str | None) -> list[HypervisorCapabilities]:
        """ManagementServerImpl.listHypervisorCapabilities: HypervisorType.getType matches case-insensitively."""
        if hypervisor is None:
            return list(self.hypervisor_capabilities)
        return [c for c in self.hypervisor_capabilities if c.hypervisor.lower() == hypervisor.lower()]

    def resource_type(self, text: str) -> str:
        """ResourceManagerUtilImpl.getResourceType (ResourceObjectType.getResourceObjectType: case-insensitive)."""
        for name in TAGGABLE_TYPES:
            if name.lower() == text.lower():
                return name
        raise invalid_value(f"Invalid resource type {text}")

    def tags_of(self, resource_type: str, resource_id: str) -> list[ResourceTag]:
        return [t for t in self.resource_tags if t.resource_type == resource_type and t.resource_id == resource_id]

    def create_tags(
        self, resource_ids: list[str], resource_type: str, tags: dict[str, str | None], customer: str | None
    ) -> list[ResourceTag]:
        """TaggedResourceManagerImpl.createTags: all or nothing (one transaction); a key already on a resource
        is refused (the unique key on resource_tags), not overwritten."""
        kind = TAGGABLE_TYPES[resource_type]
        made: list[ResourceTag] = []
        for key, value in tags.items():
            for resource_id in resource_ids:
                entity = self.resolve(kind, resource_id)
                if entity is None or not self.is_live(entity):
                    # ResourceManagerUtilImpl.getResourceId
                    raise invalid_value(f"Unable to find resource by uuid {resource_id} and type {resource_type}")
                if not value:
                    raise invalid_value(f"Value for the key {key} is either null or empty")
                if any(t.key == key for t in self.tags_of(resource_type, resource_id)) or any(
                    t.key == key and t.resource_id == resource_id for t in made
                ):
                    raise cloud_runtime_error(f"tag {key} already on {resource_type} with id {resource_id}")
                made.append(ResourceTag(key, value, resource_type, resource_id, customer))
        self.resource_tags.extend(made)
        return made

    def delete_tags(self, resource_ids: list[str], resource_type: str, tags: dict[str, str | None]) -> bool:
        """TaggedResourceManagerImpl.deleteTags: keys and values compared case-insensitively; a key without a
        value removes whatever value it has; no tags given removes all. False when nothing matched."""
        doomed = []
        for tag in self.resource_tags:
            if tag.resource_type != resource_type or tag.resource_id not in resource_ids:
                continue
            if not tags or any(
                tag.key.lower() == key.lower() and (value is None or tag.value.lower() == value.lower())
                for key, value in tags.items()
            ):
                doomed.append(tag)
        for tag in doomed:
            self.resource_tags.remove(tag)
        return bool(doomed)

    @staticmethod
    def matches_any_tag(tags: list[ResourceTag], wanted: dict[str, str]) -> bool:
        """The tags filter of list calls (QueryManagerImpl: an OR of key=value pairs joined on resource_tags,
        compared by MySQL's case-insensitive collation): one matching pair is enough."""
        return any(
            t.key.lower() == key.lower() and t.value.lower() == value.lower()
            for t in tags
            for key, value in wanted.items()
        )

    def add_hub_vm(self, name: str) -> VirtualMachine:
        """Another running hub VM for the lab's hub pool (the lab has one machine, so they share dev/)."""
        seed_zone = self.zones[self.seed.zone_id]
        hub = self.allocate_vm(
            zone=seed_zone,
            service_offering=self.service_offerings[self.seed.service_offering_id],
            template=self.templates[self.seed.template_id],
            name=name,
            display_name=name,
        )
        self.hub_vm_ids.append(hub.id)
        return self.start_vm(hub)
