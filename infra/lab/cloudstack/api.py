"""The API commands the simulator answers: their parameters (names and types as CloudStack's @Parameter
annotations), CloudStack's parameter processing (ParamProcessWorker) and what each command does.

A command's handler returns either a synchronous response body or an ``AsyncWork`` that the simulator runs as
an async job. As in ApiServer.queueCommand, parameter translation (missing parameter, unknown uuid) is always
synchronous; for the create-style commands (createVolume, deployVirtualMachine) so is the allocation step.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from infra.lab.cloudstack.cloud import (
    Cloud,
    Cluster,
    DiskOffering,
    Network,
    ServiceOffering,
    Template,
    VirtualMachine,
    Volume,
    Zone,
    cloud_runtime_error,
    invalid_value,
    param_error,
)

_LONG = re.compile(r"^[+-]?\d+$")
TEMPLATE_FILTERS = ("featured", "self", "selfexecutable", "sharedexecutable", "executable", "community", "all")


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # uuid, uuid_list, long, boolean, string, string_list, map, map_list, key_value_map
    required: bool = False
    entity: str | None = None
    admin_only: bool = False  # @Parameter(authorized = {RoleType.Admin}): ignored for anyone else


@dataclass
class AsyncWork:
    """The part of a command that runs in its async job; ``run`` returns the job result object."""

    run: Callable[[], dict[str, Any]]
    instance_type: str
    instance_id: str
    created_id: str | None = None  # BaseAsyncCreateCmd answers {"id", "jobid"}, the others {"jobid"}
    on_failure: Callable[[], None] | None = None


@dataclass(frozen=True)
class Command:
    name: str
    params: tuple[Param, ...]
    handler: Callable[[Cloud, dict[str, Any]], dict[str, Any] | AsyncWork]
    cmd_class: str | None = None  # the Java class an async job reports as "cmd"
    admin_only: bool = False  # only in the root admin's command set (e.g. the admin/storage package)

    @property
    def response_name(self) -> str:
        return self.name.lower() + "response"

    @property
    def is_async(self) -> bool:
        return self.cmd_class is not None


Resolver = Callable[[str, str], Any | None]


def process_parameters(
    command: Command, raw: dict[str, str], resolve: Resolver, *, admin: bool = True
) -> dict[str, Any]:
    """ParamProcessWorker.processParameters: lower-case names (the server lower-cased them, as ParamUnpackWorker
    does), required check, type and uuid translation, page/pagesize pairing.

    Unknown names are ignored, as CloudStack only logs them. A uuid that never existed is an error; one of a
    removed entity resolves to that entity, and the command decides (list commands show nothing).
    ``values["_full"]`` says whether the caller gets the root admin's response view.
    """
    short = command.response_name[: -len("response")]
    values: dict[str, Any] = {"_full": admin}
    for param in command.params:
        if param.admin_only and not admin:
            continue
        if param.type == "key_value_map":
            pairs = _key_value_entries(short, raw, param.name)
            if pairs:
                values[param.name] = pairs
            elif param.required:
                raise param_error(f"Unable to execute API command {short} due to missing parameter {param.name}")
            continue
        if param.type in ("map", "map_list"):
            groups = _map_groups(raw, param.name)
            if groups:
                # details: BaseCmd.convertDetailsToMap merges the groups; iptonetworklist keeps them in order
                values[param.name] = (
                    {k: v for group in groups for k, v in group.items()} if param.type == "map" else groups
                )
            elif param.required:
                raise param_error(f"Unable to execute API command {short} due to missing parameter {param.name}")
            continue
        value = raw.get(param.name)
        if value is None:
            if param.required:
                raise param_error(f"Unable to execute API command {short} due to missing parameter {param.name}")
            continue
        if param.type == "long":
            if not _LONG.match(value):
                raise param_error(
                    f"Unable to execute API command {short} due to invalid value {value} for parameter {param.name}"
                )
            values[param.name] = int(value)
        elif param.type == "boolean":
            values[param.name] = value.lower() == "true"  # Boolean.valueOf
        elif param.type == "string":
            values[param.name] = value
        elif param.type == "uuid":
            values[param.name] = _translate(short, param, value, resolve)
        elif param.type == "string_list":
            values[param.name] = [token for token in value.split(",") if token]
        elif param.type == "uuid_list":
            values[param.name] = [_translate(short, param, token, resolve) for token in value.split(",") if token]
        else:  # pragma: no cover - a typo in the table below
            raise AssertionError(param.type)
    _check_paging(short, raw)
    return values


_MAP_ENTRY = re.compile(r"^(?P<name>[a-z]+)\[(?P<index>\d+)\]\.(?P<key>\w+)$")


def _map_groups(raw: dict[str, str], name: str) -> list[dict[str, str]]:
    """A map parameter, ``details[0].cpuNumber=2&details[0].memory=2048``, one dict per index in index order.

    ParamUnpackWorker lower-cases only the map's own name; the keys inside stay exactly as sent, so
    ``details[0].cpunumber`` is not ``cpuNumber`` (UserVmManagerImpl looks the latter up).
    """
    groups: dict[int, dict[str, str]] = {}
    for key, value in raw.items():
        match = _MAP_ENTRY.match(key)
        if match and match["name"] == name:
            groups.setdefault(int(match["index"]), {})[match["key"]] = value
    return [groups[index] for index in sorted(groups)]


def _check_paging(short: str, raw: dict[str, str]) -> None:
    """ParamProcessWorker: page and pagesize come together (pagesize alone only as -1, unlimited)."""
    page, page_size = raw.get("page"), raw.get("pagesize")
    if page is None and page_size is not None and page_size != "-1":
        raise param_error('"page" parameter is required when "pagesize" is specified')
    if page_size is None and page is not None:
        raise param_error('"pagesize" parameter is required when "page" is specified')


# default.page.size, which is also the largest page BaseListCmd allows
DEFAULT_PAGE_SIZE = 500
PAGING = (Param("page", "long"), Param("pagesize", "long"))


_INDEXED_ENTRY = re.compile(r"^(?P<name>[a-z]+)\[(?P<index>\d+)\]\.(?P<field>\w+)$")


def _key_value_entries(short: str, raw: dict[str, str], name: str) -> dict[str, str | None]:
    """A key/value map parameter, ``tags[0].key=a&tags[0].value=b``: ParamUnpackWorker groups the fields by
    index, TaggedResources.parseKeyValueMap makes one key -> value per index (a later index wins a repeated
    key). A missing value is kept as None here; each command decides (list filters refuse it)."""
    grouped: dict[int, dict[str, str]] = {}
    for key, value in raw.items():
        match = _INDEXED_ENTRY.match(key)
        if match and match["name"] == name:
            grouped.setdefault(int(match["index"]), {})[match["field"]] = value
    pairs: dict[str, str | None] = {}
    for index in sorted(grouped):
        entry = grouped[index]
        if "key" not in entry:
            raise param_error(f"Unable to execute API command {short} due to missing key for {name}[{index}]")  # [U]
        pairs[entry["key"]] = entry.get("value")
    return pairs


def _tag_filter(p: dict[str, Any]) -> dict[str, str] | None:
    """BaseListTaggedResourcesCmd.getTags: every filter pair needs a value."""
    tags: dict[str, str | None] | None = p.get("tags")
    if not tags:
        return None
    for key, value in tags.items():
        if value is None:
            raise invalid_value(f"No value is passed in for key {key}")
    return {k: v for k, v in tags.items() if v is not None}


def _translate(short: str, param: Param, value: str, resolve: Resolver) -> Any:
    assert param.entity is not None
    found = resolve(param.entity, value)
    if found is None:
        raise param_error(
            f"Unable to execute API command {short} due to invalid value. Invalid parameter {param.name} "
            f"value={value} due to incorrect long value format, or entity does not exist or due to incorrect "
            "parameter annotation for the field in api cmd class."
        )
    return found


def list_body(object_name: str, items: list[dict[str, Any]], p: dict[str, Any] | None = None) -> dict[str, Any]:
    """One page of a list (BaseListCmd page/pagesize, default.page.size when none is given); ``count`` is the
    total. ApiResponseSerializer: an empty list is ``{}``, with neither ``count`` nor the object key."""
    total = len(items)
    if p is not None:
        items = _page(items, p)
    if not total:
        return {}
    return {"count": total, object_name: items} if items else {"count": total}


def _page(items: list[Any], p: dict[str, Any]) -> list[Any]:
    page_size = p.get("pagesize", p.get("_page_size", DEFAULT_PAGE_SIZE))
    page = p.get("page", 1)
    max_size = p.get("_page_size", DEFAULT_PAGE_SIZE)
    if page_size == -1:  # PAGESIZE_UNLIMITED
        if "page" in p:
            raise invalid_value("Can't specify page parameter when pagesize is -1 (Unlimited)")
        return items
    if page_size > max_size:
        raise invalid_value(f"Page size can't exceed max allowed page size value: {max_size}")
    if page_size < 1 or page < 1:
        raise invalid_value("Page and pagesize must be positive")  # [U]
    start = page_size * (page - 1)
    return items[start : start + page_size]


# ---- volumes -----------------------------------------------------------------------------------------------


def _create_volume(cloud: Cloud, p: dict[str, Any]) -> AsyncWork:
    zone: Zone | None = p.get("zoneid")
    offering: DiskOffering | None = p.get("diskofferingid")
    volume = cloud.alloc_volume(
        name=p.get("name"),
        zone=zone,
        disk_offering=offering,
        snapshot_id=p.get("snapshotid"),
        size_gb=p.get("size"),
    )
    return AsyncWork(
        run=lambda: {"volume": volume.response(cloud, full=p["_full"])},
        instance_type="Volume",
        instance_id=volume.id,
        created_id=volume.id,
    )


def _delete_volume(cloud: Cloud, p: dict[str, Any]) -> dict[str, Any]:
    volume: Volume = p["id"]
    if not cloud.is_live(volume):
        raise invalid_value(f"Unable to find volume with ID: {volume.db_id}")
    cloud.delete_volume(volume)
    return {"success": True}


def _list_volumes(cloud: Cloud, p: dict[str, Any]) -> dict[str, Any]:
    items = list(cloud.volumes.values())
    if "id" in p:
        items = [v for v in items if v is p["id"]]
    if "virtualmachineid" in p:
        items = [v for v in items if v.vm is p["virtualmachineid"]]
    if "type" in p:
        items = [v for v in items if v.type.lower() == p["type"].lower()]
    if "name" in p:
        items = [v for v in items if v.name == p["name"]]
    if "zoneid" in p:
        items = [v for v in items if v.zone is p["zoneid"]]
    if "keyword" in p:
        items = [v for v in items if p["keyword"].lower() in v.name.lower()]
    wanted = _tag_filter(p)
    if wanted:
        items = [v for v in items if cloud.matches_any_tag(cloud.tags_of("Volume", v.id), wanted)]
    return list_body("volume", [v.response(cloud, full=p["_full"]) for v in items], p)


def _attach_volume(cloud: Cloud, p: dict[str, Any]) -> AsyncWork:
    volume: Volume = p["id"]
    vm: VirtualMachine = p["virtualmachineid"]
    device_id: int | None = p.get("deviceid")

    def run() -> dict[str, Any]:
        if not cloud.is_live(volume):
            # volFactory.getVolume returns null for a removed volume
            raise invalid_value("Please specify a volume with the valid type: ROOT or DATADISK")
        live_vm = vm if cloud.is_live(vm) else None
        return {"volume": cloud.attach_volume(volume, live_vm, device_id).response(cloud, full=p["_full"])}

    return AsyncWork(run=run, instance_type="Volume", instance_id=volume.id)


def _detach_volume(cloud: Cloud, p: dict[str, Any]) -> AsyncWork:
    volume: Volume | None = p.get("id")
    vm: VirtualMachine | None = p.get("virtualmachineid")

    def run() -> dict[str, Any]:
        if volume is not None and not cloud.is_live(volume):
            raise invalid_value(f"Unable to find volume with ID: {volume.db_id}")
        detached = cloud.detach_volume(
            volume_param=volume,
            volume_id_given="id" in p,
            vm_param=vm if vm is not None and cloud.is_live(vm) else None,
            vm_id_given="virtualmachineid" in p,
            device_id=p.get("deviceid"),
        )
        return {"volume": detached.response(cloud, full=p["_full"])}

    return AsyncWork(run=run, instance_type="Volume", instance_id=volume.id if volume is not None else "")


# ---- virtual machines --------------------------------------------------------------------------------------


def _custom_parameters(offering: ServiceOffering, details: dict[str, str]) -> dict[str, int]:
    """UserVmManagerImpl.validateCustomParameters, with its texts (min CPU 1, min memory 32 MiB by default)."""
    wanted = {k: details[k] for k in ("cpuNumber", "cpuSpeed", "memory") if k in details}
    if not offering.customized:
        for key, what in (("cpuNumber", "cpu cores"), ("cpuSpeed", "cpu speed"), ("memory", "memory")):
            if key in wanted:
                raise invalid_value(
                    f"The {what} of this offering id:{offering.id} is not customizable. This is predefined in the "
                    "template."
                )
        return {}
    if not wanted:
        raise invalid_value(
            "Need to specify custom parameter values cpu, cpu speed and memory when using custom offering"
        )

    def number(key: str) -> int:
        text = wanted.get(key, "")
        return int(text) if _LONG.match(text) else -1

    custom = {"cpuNumber": number("cpuNumber"), "cpuSpeed": number("cpuSpeed"), "memory": number("memory")}
    if custom["cpuNumber"] < 1:
        raise invalid_value(f"Invalid cpu cores value, specify a value between 1 and {2**31 - 1}")
    if custom["cpuSpeed"] <= 0:
        raise invalid_value(f"Invalid cpu speed value, specify a value between 1 and {2**31 - 1}")
    if custom["memory"] < 32:
        raise invalid_value(f"Invalid memory value, specify a value between 32 and {2**31 - 1}")
    return custom


def _requested_networks(cloud: Cloud, p: dict[str, Any]) -> list[tuple[Network, str | None]]:
    """BaseDeployVMCmd.getNetworkIds / getIpToNetworkMap: networkids in order, or iptonetworklist entries in
    index order each with an optional ``ip``; never both. Empty: the zone's default network."""
    by_ids: list[Network] = p.get("networkids", [])
    entries: list[dict[str, str]] = p.get("iptonetworklist", [])
    if entries and (by_ids or "ipaddress" in p):
        raise invalid_value("ipToNetworkMap can't be specified along with networkIds or ipAddress")
    if not entries:
        return [(network, None) for network in by_ids]
    requested: dict[str, tuple[Network, str | None]] = {}  # keyed by network: a LinkedHashMap in CloudStack
    for entry in entries:
        network_id = entry.get("networkid")
        network = cloud.resolve("network", network_id) if network_id else None
        if network is None:
            raise invalid_value(f"Unable to find specified network by uuid {network_id}")  # [U]
        requested[network.id] = (network, entry.get("ip"))
    return list(requested.values())


def _deploy_vm(cloud: Cloud, p: dict[str, Any]) -> AsyncWork:
    zone: Zone = p["zoneid"]
    offering: ServiceOffering = p["serviceofferingid"]
    template: Template = p["templateid"]
    root_gb: int | None = p.get("rootdisksize")
    if root_gb is not None and root_gb < 1:
        raise invalid_value(f"Root disk size should be a positive number, but got {root_gb}")  # [U]
    custom = _custom_parameters(offering, p.get("details", {}))
    networks = _requested_networks(cloud, p)
    vm = cloud.allocate_vm(
        zone=zone,
        service_offering=offering,
        template=template,
        name=p.get("name"),
        display_name=p.get("displayname"),
        root_disk_size_gb=root_gb,
        custom=custom,
        networks=networks,
        cluster=p.get("clusterid"),
    )
    start = p.get("startvm", True)

    def run() -> dict[str, Any]:
        if start:
            cloud.start_vm(vm)
        return {"virtualmachine": vm.response()}

    return AsyncWork(
        run=run,
        instance_type="VirtualMachine",
        instance_id=vm.id,
        created_id=vm.id,
        on_failure=lambda: cloud.mark_vm_error(vm),
    )


def _live_vm(cloud: Cloud, vm: VirtualMachine) -> VirtualMachine:
    if not cloud.is_live(vm):
        raise invalid_value(f"Unable to find a virtual machine with specified vmId {vm.db_id}")  # [U]
    return vm


def _start_vm(cloud: Cloud, p: dict[str, Any]) -> AsyncWork:
    vm: VirtualMachine = p["id"]
    return AsyncWork(
        run=lambda: {"virtualmachine": cloud.start_vm(_live_vm(cloud, vm)).response()},
        instance_type="VirtualMachine",
        instance_id=vm.id,
    )


def _stop_vm(cloud: Cloud, p: dict[str, Any]) -> AsyncWork:
    vm: VirtualMachine = p["id"]
    return AsyncWork(
        run=lambda: {"virtualmachine": cloud.stop_vm(_live_vm(cloud, vm)).response()},
        instance_type="VirtualMachine",
        instance_id=vm.id,
    )


def _destroy_vm(cloud: Cloud, p: dict[str, Any]) -> AsyncWork:
    vm: VirtualMachine = p["id"]
    expunge: bool = p.get("expunge", False)
    volumes: list[Volume] = p.get("volumeids", [])

    def run() -> dict[str, Any]:
        live = _live_vm(cloud, vm)
        return {"virtualmachine": cloud.destroy_vm(live, expunge=expunge, volumes=volumes).response()}

    return AsyncWork(run=run, instance_type="VirtualMachine", instance_id=vm.id)


def _list_vms(cloud: Cloud, p: dict[str, Any]) -> dict[str, Any]:
    items = list(cloud.vms.values())
    if "id" in p:
        items = [vm for vm in items if vm is p["id"]]
    if "name" in p:
        items = [vm for vm in items if vm.name == p["name"]]
    if "state" in p:
        items = [vm for vm in items if vm.state.lower() == p["state"].lower()]
    if "zoneid" in p:
        items = [vm for vm in items if vm.zone is p["zoneid"]]
    if "keyword" in p:
        items = [vm for vm in items if p["keyword"].lower() in vm.name.lower()]
    return list_body("virtualmachine", [vm.response() for vm in items], p)


# ---- resource tags and hypervisor capabilities (issue 11) ---------------------------------------------------


def _create_tags(cloud: Cloud, p: dict[str, Any]) -> AsyncWork:
    """CreateTagsCmd (async): the type is checked when the command is built, the tags in its job."""
    resource_type = cloud.resource_type(p["resourcetype"])
    ids: list[str] = p["resourceids"]
    tags: dict[str, str | None] = p["tags"]

    def run() -> dict[str, Any]:
        cloud.create_tags(ids, resource_type, tags, p.get("customer"))
        return {"success": True}

    return AsyncWork(run=run, instance_type="None", instance_id="")


def _delete_tags(cloud: Cloud, p: dict[str, Any]) -> AsyncWork:
    """DeleteTagsCmd (async): ``tags`` optional; nothing matched fails the job ("Failed to delete tags")."""
    resource_type = cloud.resource_type(p["resourcetype"])
    ids: list[str] = p["resourceids"]
    tags: dict[str, str | None] = p.get("tags", {})

    def run() -> dict[str, Any]:
        if not cloud.delete_tags(ids, resource_type, tags):
            raise cloud_runtime_error("Failed to delete tags")
        return {"success": True}

    return AsyncWork(run=run, instance_type="None", instance_id="")


def _list_tags(cloud: Cloud, p: dict[str, Any]) -> dict[str, Any]:
    """ListTagsCmd (QueryManagerImpl.listTags): exact filters on type, resource id, key, value and customer."""
    items = list(cloud.resource_tags)
    if "resourcetype" in p:
        resource_type = cloud.resource_type(p["resourcetype"])
        items = [t for t in items if t.resource_type == resource_type]
    fields = (("resourceid", "resource_id"), ("key", "key"), ("value", "value"), ("customer", "customer"))
    for param, attribute in fields:
        if param in p:
            items = [t for t in items if getattr(t, attribute) == p[param]]
    return list_body("tag", [t.response() for t in items], p)


def _list_hypervisor_capabilities(cloud: Cloud, p: dict[str, Any]) -> dict[str, Any]:
    """ListHypervisorCapabilitiesCmd: each row's object name is "hypervisorCapabilities"."""
    items = cloud.list_hypervisor_capabilities(p.get("hypervisor"))
    if "id" in p:
        items = [c for c in items if c.id == p["id"]]
    return list_body("hypervisorCapabilities", [c.response() for c in items], p)


# ---- what a client resolves names with ---------------------------------------------------------------------


def _list_zones(cloud: Cloud, p: dict[str, Any]) -> dict[str, Any]:
    items = [z for z in cloud.zones.values() if ("id" not in p or z is p["id"]) and p.get("name", z.name) == z.name]
    return list_body("zone", [z.response() for z in items], p)


def _list_disk_offerings(cloud: Cloud, p: dict[str, Any]) -> dict[str, Any]:
    items = [
        d for d in cloud.disk_offerings.values() if ("id" not in p or d is p["id"]) and p.get("name", d.name) == d.name
    ]
    return list_body("diskoffering", [d.response() for d in items], p)


def _list_service_offerings(cloud: Cloud, p: dict[str, Any]) -> dict[str, Any]:
    items = [
        s
        for s in cloud.service_offerings.values()
        if ("id" not in p or s is p["id"]) and p.get("name", s.name) == s.name
    ]
    return list_body("serviceoffering", [s.response() for s in items], p)


def _list_templates(cloud: Cloud, p: dict[str, Any]) -> dict[str, Any]:
    if p["templatefilter"] not in TEMPLATE_FILTERS:
        raise invalid_value(f"Please specify a valid template filter: {', '.join(TEMPLATE_FILTERS)}")  # [U]
    items = [t for t in cloud.templates.values() if ("id" not in p or t is p["id"]) and p.get("name", t.name) == t.name]
    if "zoneid" in p:
        items = [t for t in items if t.zone is p["zoneid"]]
    if p["templatefilter"] == "featured":
        items = [t for t in items if t.featured]
    return list_body("template", [t.response() for t in items], p)


def _in_id_and_zone(items: Iterable[Any], p: dict[str, Any]) -> list[Any]:
    """The ``id`` and ``zoneid`` filters every list command shares."""
    return [x for x in items if ("id" not in p or x is p["id"]) and ("zoneid" not in p or x.zone is p["zoneid"])]


def _list_networks(cloud: Cloud, p: dict[str, Any]) -> dict[str, Any]:
    items = _in_id_and_zone(cloud.networks.values(), p)
    if "type" in p:
        items = [n for n in items if n.guest_type.lower() == p["type"].lower()]
    if "keyword" in p:
        items = [n for n in items if p["keyword"].lower() in n.name.lower()]
    return list_body("network", [n.response() for n in items], p)


def _list_storage_pools(cloud: Cloud, p: dict[str, Any]) -> dict[str, Any]:
    items = _in_id_and_zone(cloud.pools.values(), p)
    if "clusterid" in p:
        cluster: Cluster = p["clusterid"]
        items = [s for s in items if s.cluster is cluster or (s.host is not None and s.host.cluster is cluster)]
    if "scope" in p:
        items = [s for s in items if s.scope == p["scope"].upper()]
    if "name" in p:
        items = [s for s in items if s.name == p["name"]]
    return list_body("storagepool", [s.response() for s in items], p)


_ADMIN_VOLUME = "org.apache.cloudstack.api.command.admin.volume."
_ADMIN_VM = "org.apache.cloudstack.api.command.admin.vm."

COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command(
            "createVolume",
            (
                Param("name", "string"),
                Param("zoneid", "uuid", entity="zone"),
                Param("diskofferingid", "uuid", entity="diskoffering"),
                Param("size", "long"),
                Param("snapshotid", "uuid", entity="snapshot"),
            ),
            _create_volume,
            _ADMIN_VOLUME + "CreateVolumeCmdByAdmin",
        ),
        Command("deleteVolume", (Param("id", "uuid", True, "volume"),), _delete_volume),
        Command(
            "listVolumes",
            (
                Param("id", "uuid", entity="volume"),
                Param("virtualmachineid", "uuid", entity="vm"),
                Param("type", "string"),
                Param("name", "string"),
                Param("zoneid", "uuid", entity="zone"),
                Param("keyword", "string"),
                Param("listall", "boolean"),
                *PAGING,
                Param("tags", "key_value_map"),
            ),
            _list_volumes,
        ),
        Command(
            "createTags",
            (
                Param("tags", "key_value_map", True),
                Param("resourcetype", "string", True),
                Param("resourceids", "string_list", True),
                Param("customer", "string"),
            ),
            _create_tags,
            "org.apache.cloudstack.api.command.user.tag.CreateTagsCmd",
        ),
        Command(
            "deleteTags",
            (
                Param("tags", "key_value_map"),
                Param("resourcetype", "string", True),
                Param("resourceids", "string_list", True),
            ),
            _delete_tags,
            "org.apache.cloudstack.api.command.user.tag.DeleteTagsCmd",
        ),
        Command(
            "listTags",
            (
                Param("resourcetype", "string"),
                Param("resourceid", "string"),
                Param("key", "string"),
                Param("value", "string"),
                Param("customer", "string"),
                Param("listall", "boolean"),
                *PAGING,
            ),
            _list_tags,
        ),
        Command(
            "listHypervisorCapabilities",
            (Param("id", "string"), Param("hypervisor", "string"), Param("keyword", "string"), *PAGING),
            _list_hypervisor_capabilities,
            admin_only=True,  # ListHypervisorCapabilitiesCmd sits in the admin package
        ),
        Command(
            "attachVolume",
            (
                Param("id", "uuid", True, "volume"),
                Param("virtualmachineid", "uuid", True, "vm"),
                Param("deviceid", "long"),
            ),
            _attach_volume,
            _ADMIN_VOLUME + "AttachVolumeCmdByAdmin",
        ),
        Command(
            "detachVolume",
            (
                Param("id", "uuid", entity="volume"),
                Param("deviceid", "long"),
                Param("virtualmachineid", "uuid", entity="vm"),
            ),
            _detach_volume,
            _ADMIN_VOLUME + "DetachVolumeCmdByAdmin",
        ),
        Command(
            "deployVirtualMachine",
            (
                Param("zoneid", "uuid", True, "zone"),
                Param("serviceofferingid", "uuid", True, "serviceoffering"),
                Param("templateid", "uuid", True, "template"),
                Param("name", "string"),
                Param("displayname", "string"),
                Param("startvm", "boolean"),
                Param("rootdisksize", "long"),
                Param("details", "map"),
                Param("networkids", "uuid_list", entity="network"),
                Param("iptonetworklist", "map_list"),
                Param("ipaddress", "string"),
                Param("clusterid", "uuid", entity="cluster", admin_only=True),
            ),
            _deploy_vm,
            _ADMIN_VM + "DeployVMCmdByAdmin",
        ),
        Command("startVirtualMachine", (Param("id", "uuid", True, "vm"),), _start_vm, _ADMIN_VM + "StartVMCmdByAdmin"),
        Command(
            "stopVirtualMachine",
            (Param("id", "uuid", True, "vm"), Param("forced", "boolean")),
            _stop_vm,
            _ADMIN_VM + "StopVMCmdByAdmin",
        ),
        Command(
            "destroyVirtualMachine",
            (
                Param("id", "uuid", True, "vm"),
                Param("expunge", "boolean"),
                Param("volumeids", "uuid_list", entity="volume"),
            ),
            _destroy_vm,
            _ADMIN_VM + "DestroyVMCmdByAdmin",
        ),
        Command(
            "listVirtualMachines",
            (
                Param("id", "uuid", entity="vm"),
                Param("name", "string"),
                Param("state", "string"),
                Param("zoneid", "uuid", entity="zone"),
                Param("keyword", "string"),
                Param("listall", "boolean"),
                *PAGING,
            ),
            _list_vms,
        ),
        Command(
            "listZones",
            (Param("id", "uuid", entity="zone"), Param("name", "string"), Param("available", "boolean"), *PAGING),
            _list_zones,
        ),
        Command(
            "listDiskOfferings",
            (
                Param("id", "uuid", entity="diskoffering"),
                Param("name", "string"),
                Param("zoneid", "uuid", entity="zone"),
                *PAGING,
            ),
            _list_disk_offerings,
        ),
        Command(
            "listServiceOfferings",
            (Param("id", "uuid", entity="serviceoffering"), Param("name", "string"), *PAGING),
            _list_service_offerings,
        ),
        Command(
            "listTemplates",
            (
                Param("templatefilter", "string", True),
                Param("id", "uuid", entity="template"),
                Param("name", "string"),
                Param("zoneid", "uuid", entity="zone"),
                *PAGING,
            ),
            _list_templates,
        ),
        Command(
            "listNetworks",
            (
                Param("id", "uuid", entity="network"),
                Param("zoneid", "uuid", entity="zone"),
                Param("type", "string"),
                Param("keyword", "string"),
                Param("listall", "boolean"),
                *PAGING,
            ),
            _list_networks,
        ),
        Command(
            "listStoragePools",
            (
                Param("id", "uuid", entity="storagepool"),
                Param("zoneid", "uuid", entity="zone"),
                Param("clusterid", "uuid", entity="cluster"),
                Param("scope", "string"),
                Param("name", "string"),
                *PAGING,
            ),
            _list_storage_pools,
            admin_only=True,
        ),
    )
}
