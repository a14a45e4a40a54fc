"""The hub's CloudStack API client, on httpx. Knows nothing of Prefect.

Signing follows CloudStack's ApiServer.verifyRequest: every parameter but ``signature``, sorted by name,
``name=value`` with values URL-encoded as Java's URLEncoder does (spaces as ``%20``, ``~`` as ``%7E``, ``*`` kept),
joined with ``&``, lower-cased, HMAC-SHA1 with the secret key, Base64. Top-level parameter names are sent in lower
case so CloudStack's case-sensitive sort and the documented lower-then-sort give the same string; the keys inside
a map parameter (``details[0].cpuNumber``) are sent exactly as CloudStack looks them up, because ParamUnpackWorker
keeps them as they are. Requests carry ``signatureVersion=3`` and an ``expires`` a few minutes ahead, so a captured
request cannot be replayed later.

List commands page (``page``/``pagesize``) until a short page: CloudStack answers at most ``default.page.size``
(500) items per call, whatever ``listall`` says.

Only reads (``list*``, ``queryAsyncJobResult``) are retried here (REMOTE_ATTEMPTS in all, and the error then says
so in ``client_attempts``, so a task does not retry them again); a command that changes something is sent once,
and when its answer is lost the calling task looks before trying again (see CloudStackUnreachable). Refusals
(401, 431, 432, not found) are marked ``retryable = False``.

Errors quote CloudStack's own ``errortext`` and carry its ``errorcode`` / ``cserrorcode`` and the command.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field

from clients.tls import shared_ssl_context
from vmferry.errors import REMOTE_ATTEMPTS, VmferryError

SAFE_READ_PREFIXES = ("list", "query")
RETRY_STATUSES = frozenset({502, 503, 504})
# ApiErrorCode.UNSUPPORTED_ACTION_ERROR: an unknown command, or one the caller's role may not use
UNSUPPORTED_ACTION = 432
# ApiErrorCode.PARAM_ERROR (InvalidParameterValueException): the request itself is refused; a retry repeats it
PARAM_ERROR = 431
# default.page.size, also the largest page CloudStack serves
PAGE_SIZE = 500
# What only a root admin may call; a plain account gets 432 for them.
_MAX_PAGE_SIZE = re.compile(r"Page size can't exceed max allowed page size value: (\d+)")
ADMIN_ONLY_COMMANDS = frozenset({"listStoragePools", "listHypervisorCapabilities", "listClusters", "listHosts"})


class CloudStackError(VmferryError):
    """CloudStack refused or failed a command; ``errortext`` is CloudStack's own words."""

    def __init__(
        self,
        command: str,
        errortext: str,
        *,
        errorcode: int | None = None,
        cserrorcode: int | None = None,
        http_status: int | None = None,
        job_id: str | None = None,
    ) -> None:
        codes = [f"errorcode {errorcode}" if errorcode is not None else None]
        codes.append(f"cserrorcode {cserrorcode}" if cserrorcode is not None else None)
        codes.append(f"job {job_id}" if job_id else None)
        detail = ", ".join(c for c in codes if c)
        super().__init__(f'CloudStack {command} failed{f" ({detail})" if detail else ""}: "{errortext}"')
        self.command = command
        self.errortext = errortext
        self.errorcode = errorcode
        self.cserrorcode = cserrorcode
        self.http_status = http_status
        self.job_id = job_id


class CloudStackAuthError(CloudStackError):
    """401: wrong keys, a clock far off (signatureVersion 3 expiry) or a signing bug. Not retried."""

    retryable = False


class CloudStackNotFound(CloudStackError):
    """The id names nothing (never existed, or was removed). Not retried."""

    retryable = False


class CloudStackJobFailed(CloudStackError):
    """The async job ended with jobstatus 2; errorcode is its jobresultcode (431 bad parameter, 530 other)."""


class CloudStackTimeout(CloudStackError):
    """An async job was still pending when we stopped waiting. It may still complete: look before retrying."""


class CloudStackAdminRequired(CloudStackError):
    """The step needs a root admin's view (an admin-only command or response field) and the key is not one."""

    retryable = False


class CloudStackUnreachable(CloudStackError):
    """No (usable) answer from the management server. For a command that changes something, it may or may not
    have been carried out."""


def encode_value(value: str) -> str:
    """A value as Java's URLEncoder encodes it, with CloudStack's ``+`` -> ``%20``."""
    return quote(value, safe="*").replace("~", "%7E")


def signing_string(params: Mapping[str, str]) -> str:
    """The string CloudStack signs (already lower-cased). ``params`` must not hold ``signature``."""
    pairs = sorted((name.lower(), encode_value(value)) for name, value in params.items())
    return "&".join(f"{name}={value}" for name, value in pairs).lower()


def sign(params: Mapping[str, str], secret_key: str) -> str:
    digest = hmac.new(secret_key.encode("utf-8"), signing_string(params).encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def volume_serial(volume_id: str) -> str:
    """The disk serial a KVM guest sees for a CloudStack volume: its uuid without dashes, first 20 characters."""
    return volume_id.replace("-", "")[:20]


def device_candidates(dev_root: Path, volume_id: str) -> list[Path]:
    """Every name udev gives an attached volume in the hub, by the disk controller the offering chose:
    virtio-blk ``virtio-<serial>``, virtio-scsi ``scsi-0QEMU_QEMU_HARDDISK_<serial>``."""
    by_id = Path(dev_root) / "disk" / "by-id"
    serial = volume_serial(volume_id)
    return [by_id / f"virtio-{serial}", by_id / f"scsi-0QEMU_QEMU_HARDDISK_{serial}"]


def find_volume_device(dev_root: Path, volume_id: str) -> Path | None:
    """The hub's device for an attached volume, whichever bus it is on; None while none has appeared."""
    return next((path for path in device_candidates(dev_root, volume_id) if path.exists()), None)


def device_path_for_volume(dev_root: Path, volume_id: str) -> Path:
    """Where the hub finds an attached volume: ``<dev_root>/disk/by-id/virtio-<serial>``.

    Production passes ``/dev``; never guess ``/dev/vdX``, whose letters follow attach order, not device ids.
    """
    return Path(dev_root) / "disk" / "by-id" / f"virtio-{volume_serial(volume_id)}"


class ResourceTag(BaseModel):
    """The ResourceTagResponse fields vmferry uses."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    key: str
    value: str
    resource_type: str | None = Field(default=None, alias="resourcetype")
    resource_id: str | None = Field(default=None, alias="resourceid")


class HypervisorCapability(BaseModel):
    """The HypervisorCapabilitiesResponse fields vmferry uses."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    hypervisor: str
    version: str | None = Field(default=None, alias="hypervisorversion")
    max_data_volumes: int | None = Field(default=None, alias="maxdatavolumeslimit")


class Volume(BaseModel):
    """The VolumeResponse fields vmferry uses."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    id: str
    name: str
    type: str  # ROOT or DATADISK
    state: str  # Allocated, Ready, Destroy, ...
    size: int  # bytes
    zone_id: str | None = Field(default=None, alias="zoneid")
    device_id: int | None = Field(default=None, alias="deviceid")  # absent when detached
    virtual_machine_id: str | None = Field(default=None, alias="virtualmachineid")
    vm_name: str | None = Field(default=None, alias="vmname")
    vm_state: str | None = Field(default=None, alias="vmstate")
    path: str | None = None  # root admins only
    storage_id: str | None = Field(default=None, alias="storageid")  # root admins only
    storage: str | None = None  # root admins only
    storage_type: str | None = Field(default=None, alias="storagetype")  # shared or local
    disk_offering_id: str | None = Field(default=None, alias="diskofferingid")
    tags: tuple[ResourceTag, ...] = ()

    @property
    def attached(self) -> bool:
        return self.virtual_machine_id is not None

    @property
    def tag_map(self) -> dict[str, str]:
        return {tag.key: tag.value for tag in self.tags}


class Nic(BaseModel):
    """The NicResponse fields vmferry uses."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    id: str
    network_id: str = Field(alias="networkid")
    network_name: str | None = Field(default=None, alias="networkname")
    ip_address: str | None = Field(default=None, alias="ipaddress")
    mac_address: str | None = Field(default=None, alias="macaddress")
    device_id: int | None = Field(default=None, alias="deviceid")
    is_default: bool = Field(default=False, alias="isdefault")


class Network(BaseModel):
    """The NetworkResponse fields vmferry uses."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    id: str
    name: str
    zone_id: str | None = Field(default=None, alias="zoneid")
    type: str | None = None  # Isolated, Shared, L2
    cidr: str | None = None


class StoragePool(BaseModel):
    """The StoragePoolResponse fields vmferry uses (listStoragePools is for root admins)."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    id: str
    name: str
    scope: str  # HOST, CLUSTER or ZONE
    zone_id: str | None = Field(default=None, alias="zoneid")
    cluster_id: str | None = Field(default=None, alias="clusterid")
    managed: bool = False


class VirtualMachine(BaseModel):
    """The UserVmResponse fields vmferry uses."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    id: str
    name: str
    state: str  # Stopped, Starting, Running, Stopping, Destroyed, Expunging, Error
    display_name: str | None = Field(default=None, alias="displayname")
    zone_id: str | None = Field(default=None, alias="zoneid")
    template_id: str | None = Field(default=None, alias="templateid")
    service_offering_id: str | None = Field(default=None, alias="serviceofferingid")
    cpu_number: int | None = Field(default=None, alias="cpunumber")
    memory_mb: int | None = Field(default=None, alias="memory")
    nics: list[Nic] = Field(default_factory=list, alias="nic")
    hypervisor: str | None = None


class ServiceOffering(BaseModel):
    """The ServiceOfferingResponse fields vmferry uses."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    id: str
    name: str
    customized: bool = Field(default=False, alias="iscustomized")
    cpu_number: int | None = Field(default=None, alias="cpunumber")
    cpu_speed: int | None = Field(default=None, alias="cpuspeed")
    memory_mb: int | None = Field(default=None, alias="memory")


class CloudStackClient:
    """One management server, one key pair. ``endpoint`` is the API URL, e.g. https://cloud.example/client/api."""

    def __init__(
        self,
        endpoint: str,
        api_key: str,
        secret_key: str,
        *,
        timeout: float = 30.0,
        verify: bool | str = True,
        read_attempts: int = REMOTE_ATTEMPTS,
        expires_after: float = 600.0,
        poll_interval: float = 0.2,
        max_poll_interval: float = 5.0,
        job_timeout: float = 600.0,
        page_size: int = PAGE_SIZE,
    ) -> None:
        self.endpoint = endpoint
        self.page_size = page_size
        self.read_attempts = max(1, read_attempts)
        self.expires_after = expires_after
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.job_timeout = job_timeout
        self._api_key = api_key
        self._secret_key = secret_key
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)), verify=shared_ssl_context(verify)
        )

    def __enter__(self) -> CloudStackClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ---- the wire --------------------------------------------------------------------------------------------

    def signed_body(self, command: str, params: Mapping[str, object]) -> str:
        """The form body of one request: top-level names lower-case, map keys as given, values encoded as they
        were signed."""
        expires = datetime.now(UTC) + timedelta(seconds=self.expires_after)
        fields: dict[str, str] = {
            "command": command,
            "response": "json",
            "apikey": self._api_key,
            "signatureversion": "3",
            "expires": expires.strftime("%Y-%m-%dT%H:%M:%S+0000"),
        }
        for name, value in params.items():
            if value is None:
                continue
            fields[_wire_name(name)] = _text(value)
        pairs = [f"{name}={encode_value(value)}" for name, value in fields.items()]
        pairs.append("signature=" + quote(sign(fields, self._secret_key), safe=""))
        return "&".join(pairs)

    def call(self, command: str, **params: object) -> dict[str, Any]:
        """A command's answer, the object inside ``<command>response``. Reads are retried, other commands not."""
        attempts = self.read_attempts if command.startswith(SAFE_READ_PREFIXES) else 1
        for attempt in range(1, attempts + 1):
            try:
                # signed afresh on every attempt: the signature covers ``expires``
                response = self._http.post(
                    self.endpoint,
                    content=self.signed_body(command, params).encode("utf-8"),
                    headers={"Content-Type": "application/x-www-form-urlencoded"},
                )
            except httpx.TransportError as exc:
                if attempt < attempts:
                    time.sleep(min(0.5 * attempt, 2.0))
                    continue
                unreachable = CloudStackUnreachable(
                    command, f"no answer from {self.endpoint}: {type(exc).__name__}: {exc}"
                )
                unreachable.client_attempts = attempts
                raise unreachable from exc
            if response.status_code in RETRY_STATUSES and attempt < attempts:
                time.sleep(min(0.5 * attempt, 2.0))
                continue
            try:
                return self._parse(command, response)
            except CloudStackError as exc:
                exc.client_attempts = attempt  # a read's transient error was tried ``attempts`` times already
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _parse(self, command: str, response: httpx.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise CloudStackUnreachable(
                command,
                f"HTTP {response.status_code} without a CloudStack answer: {response.text[:200]}",
                http_status=response.status_code,
            )
        # the name is <command>response in lower case, or errorresponse when CloudStack did not know the command
        inner = body.get(command.lower() + "response")
        if inner is None and len(body) == 1:
            inner = next(iter(body.values()))
        if not isinstance(inner, dict):
            raise CloudStackUnreachable(
                command,
                f"HTTP {response.status_code}, not a CloudStack answer: {str(body)[:200]}",
                http_status=response.status_code,
            )
        if response.status_code >= 400 or "errorcode" in inner:
            errortext = str(inner.get("errortext") or f"HTTP {response.status_code}")
            kind = CloudStackAuthError if response.status_code == 401 else CloudStackError
            if response.status_code == UNSUPPORTED_ACTION and command in ADMIN_ONLY_COMMANDS:
                kind = CloudStackAdminRequired
                errortext = (
                    f"{errortext} ({command} is for root admins only: give vmferry a root admin's API key, or "
                    "turn off the step that needs it)"
                )
            error = kind(
                command,
                errortext,
                errorcode=inner.get("errorcode", response.status_code),
                cserrorcode=inner.get("cserrorcode"),
                http_status=response.status_code,
            )
            if error.errorcode in (PARAM_ERROR, UNSUPPORTED_ACTION):
                error.retryable = False  # CloudStack refused the request itself
            raise error
        return inner

    def list_all(self, command: str, item_key: str, **params: object) -> list[dict[str, Any]]:
        """Every item of a list command: ``page`` 1, 2, ... of ``page_size`` until a short (or empty) page. A
        cloud whose default.page.size is below ours says so (431) and we page at its size."""
        items: list[dict[str, Any]] = []
        page = 1
        while True:
            try:
                answer = self.call(command, page=page, pagesize=self.page_size, **params)
            except CloudStackError as exc:
                limit = _MAX_PAGE_SIZE.search(exc.errortext) if exc.errorcode == 431 else None
                if limit is None or int(limit[1]) >= self.page_size or page > 1:
                    raise
                self.page_size = int(limit[1])
                continue
            batch = answer.get(item_key, [])
            items.extend(batch)
            if len(batch) < self.page_size:
                return items
            page += 1

    def submit(self, command: str, **params: object) -> dict[str, Any]:
        """Start an async command; the answer holds ``jobid`` (and ``id`` for create-style commands)."""
        answer = self.call(command, **params)
        if "jobid" not in answer:
            raise CloudStackError(command, f"expected an async job id, got {answer}")
        return answer

    def wait_job(self, job_id: str, *, command: str = "async job", timeout: float | None = None) -> dict[str, Any]:
        """Poll queryAsyncJobResult with backoff until the job ends; its ``jobresult`` on success."""
        limit = self.job_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        interval = self.poll_interval
        while True:
            job = self.call("queryAsyncJobResult", jobid=job_id)
            status = int(job.get("jobstatus", 0))
            if status == 1:
                result: dict[str, Any] = job.get("jobresult") or {}
                return result
            if status != 0:
                failure = job.get("jobresult") or {}
                failed = CloudStackJobFailed(
                    command,
                    str(failure.get("errortext") or f"job ended with jobstatus {status}"),
                    errorcode=failure.get("errorcode", job.get("jobresultcode")),
                    job_id=job_id,
                )
                # 431: the job refused its parameters; 530 (anything else) may pass on a retry
                failed.retryable = failed.errorcode != PARAM_ERROR
                raise failed
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CloudStackTimeout(
                    command,
                    f"job still pending after {limit:g} s; it may still complete, check before retrying",
                    job_id=job_id,
                )
            time.sleep(min(interval, remaining))
            interval = min(interval * 1.5, self.max_poll_interval)

    def call_async(self, command: str, *, timeout: float | None = None, **params: object) -> dict[str, Any]:
        """Run an async command to its end: its ``jobresult`` (e.g. ``{"volume": {...}}``)."""
        job_id = self.submit(command, **params)["jobid"]
        return self.wait_job(job_id, command=command, timeout=timeout)

    # ---- volumes ---------------------------------------------------------------------------------------------

    def create_volume(
        self, name: str, size_gb: int | None, zone_id: str, disk_offering_id: str, *, timeout: float | None = None
    ) -> Volume:
        """``size_gb`` only for a custom-size offering (CloudStack refuses it for a fixed one)."""
        result = self.call_async(
            "createVolume", timeout=timeout, name=name, size=size_gb, zoneid=zone_id, diskofferingid=disk_offering_id
        )
        return Volume.model_validate(result["volume"])

    def delete_volume(self, volume_id: str) -> None:
        self.call("deleteVolume", id=volume_id)

    def list_volumes(
        self,
        *,
        virtual_machine_id: str | None = None,
        volume_id: str | None = None,
        name: str | None = None,
        type: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> list[Volume]:
        """``tags`` filters as CloudStack does: a volume carrying ANY of the pairs is listed."""
        answer = self.list_all(
            "listVolumes",
            "volume",
            id=volume_id,
            virtualmachineid=virtual_machine_id,
            name=name,
            type=type,
            listall=True,
            **key_value_map("tags", tags or {}),
        )
        return [Volume.model_validate(v) for v in answer]

    def get_volume(self, volume_id: str) -> Volume:
        found = self._get("volume", lambda: self.list_volumes(volume_id=volume_id), volume_id)
        assert isinstance(found, Volume)
        return found

    def attach_volume(
        self, volume_id: str, vm_id: str, device_id: int | None = None, *, timeout: float | None = None
    ) -> Volume:
        """``device_id`` 0 attaches as ROOT (VM stopped); None lets CloudStack choose (never 3: the CD-ROM's)."""
        result = self.call_async(
            "attachVolume", timeout=timeout, id=volume_id, virtualmachineid=vm_id, deviceid=device_id
        )
        return Volume.model_validate(result["volume"])

    def detach_volume(self, volume_id: str, *, timeout: float | None = None) -> Volume:
        result = self.call_async("detachVolume", timeout=timeout, id=volume_id)
        return Volume.model_validate(result["volume"])

    # ---- virtual machines ------------------------------------------------------------------------------------

    def deploy_vm(
        self,
        *,
        zone_id: str,
        service_offering_id: str,
        template_id: str,
        name: str | None = None,
        display_name: str | None = None,
        startvm: bool = False,
        root_disk_size_gb: int | None = None,
        cpu_number: int | None = None,
        cpu_speed_mhz: int | None = None,
        memory_mb: int | None = None,
        networks: list[tuple[str, str | None]] | None = None,
        cluster_id: str | None = None,
        timeout: float | None = None,
        on_submitted: Callable[[str], None] | None = None,
    ) -> VirtualMachine:
        """CPU and memory go as ``details[0].cpuNumber/cpuSpeed/memory``: only a custom offering takes them.

        ``networks``: ``(network id, static IP or None)`` per NIC, in NIC order (the first is the default NIC);
        None lets CloudStack choose (an Advanced zone's only Isolated network). ``cluster_id`` (root admins)
        pins the VM to a cluster.

        ``on_submitted`` gets the new VM's id as soon as CloudStack has allocated it, before the deploy job ends
        (a failed job leaves that VM in state Error), so a caller can record it first.
        """
        custom = {
            "details[0].cpuNumber": cpu_number,
            "details[0].cpuSpeed": cpu_speed_mhz,
            "details[0].memory": memory_mb,
            **_network_params(networks or []),
        }
        answer = self.submit(
            "deployVirtualMachine",
            zoneid=zone_id,
            serviceofferingid=service_offering_id,
            templateid=template_id,
            name=name,
            displayname=display_name,
            startvm=startvm,
            rootdisksize=root_disk_size_gb,
            clusterid=cluster_id,
            **{key: value for key, value in custom.items() if value is not None},
        )
        if on_submitted is not None and answer.get("id"):
            on_submitted(str(answer["id"]))
        result = self.wait_job(answer["jobid"], command="deployVirtualMachine", timeout=timeout)
        return VirtualMachine.model_validate(result["virtualmachine"])

    def start_vm(self, vm_id: str, *, timeout: float | None = None) -> VirtualMachine:
        result = self.call_async("startVirtualMachine", timeout=timeout, id=vm_id)
        return VirtualMachine.model_validate(result["virtualmachine"])

    def stop_vm(self, vm_id: str, *, forced: bool = False, timeout: float | None = None) -> VirtualMachine:
        result = self.call_async("stopVirtualMachine", timeout=timeout, id=vm_id, forced=forced)
        return VirtualMachine.model_validate(result["virtualmachine"])

    def destroy_vm(
        self,
        vm_id: str,
        *,
        expunge: bool = True,
        volume_ids: list[str] | None = None,
        timeout: float | None = None,
    ) -> None:
        """Destroy (and by default expunge) a VM. Its ROOT volume goes with it; data volumes listed in
        ``volume_ids`` are deleted, the others are detached and survive."""
        self.call_async(
            "destroyVirtualMachine",
            timeout=timeout,
            id=vm_id,
            expunge=expunge,
            volumeids=",".join(volume_ids) if volume_ids else None,
        )

    def get_service_offering(self, offering_id: str) -> ServiceOffering:
        offerings = self.list_all("listServiceOfferings", "serviceoffering", id=offering_id)
        if not offerings:
            raise CloudStackNotFound("listServiceOfferings", f"no service offering {offering_id}")
        return ServiceOffering.model_validate(offerings[0])

    def list_networks(self, *, zone_id: str | None = None, network_id: str | None = None) -> list[Network]:
        answer = self.list_all("listNetworks", "network", zoneid=zone_id, id=network_id, listall=True)
        return [Network.model_validate(n) for n in answer]

    def list_storage_pools(self, *, zone_id: str | None = None) -> list[StoragePool]:
        """Root admins only (CloudStackAdminRequired otherwise)."""
        return [StoragePool.model_validate(p) for p in self.list_all("listStoragePools", "storagepool", zoneid=zone_id)]

    def list_vms(self, *, vm_id: str | None = None, name: str | None = None) -> list[VirtualMachine]:
        answer = self.list_all("listVirtualMachines", "virtualmachine", id=vm_id, name=name, listall=True)
        return [VirtualMachine.model_validate(v) for v in answer]

    def get_vm(self, vm_id: str) -> VirtualMachine:
        found = self._get("virtual machine", lambda: self.list_vms(vm_id=vm_id), vm_id)
        assert isinstance(found, VirtualMachine)
        return found

    def _get(self, what: str, lookup: Any, entity_id: str) -> Volume | VirtualMachine:
        try:
            items = lookup()
        except CloudStackError as exc:
            # an id that never existed fails uuid translation: "Invalid parameter id value=... entity does not exist"
            if exc.errorcode == 431 and "Invalid parameter id value=" in exc.errortext:
                raise CloudStackNotFound(
                    exc.command, exc.errortext, errorcode=431, http_status=exc.http_status
                ) from exc
            raise
        if not items:
            raise CloudStackNotFound("list", f"no {what} with id {entity_id} (removed?)")
        first: Volume | VirtualMachine = items[0]
        return first

    # ---- resource tags and hypervisor capabilities ------------------------------------------------------------

    def create_tags(self, resource_type: str, resource_ids: list[str], tags: Mapping[str, str]) -> None:
        """createTags (async). CloudStack refuses a key the resource already has ("tag ... already on ...")."""
        self.call_async(
            "createTags",
            resourcetype=resource_type,
            resourceids=",".join(resource_ids),
            **key_value_map("tags", tags),
        )

    def delete_tags(self, resource_type: str, resource_ids: list[str], keys: list[str]) -> None:
        """deleteTags (async) of the given keys, whatever their values."""
        params = {f"tags[{index}].key": key for index, key in enumerate(keys)}
        self.call_async("deleteTags", resourcetype=resource_type, resourceids=",".join(resource_ids), **params)

    def list_tags(self, resource_type: str, resource_id: str) -> dict[str, str]:
        answer = self.list_all("listTags", "tag", resourcetype=resource_type, resourceid=resource_id, listall=True)
        return {tag.key: tag.value for tag in (ResourceTag.model_validate(t) for t in answer)}

    def hypervisor_capabilities(self, hypervisor: str) -> list[HypervisorCapability]:
        """listHypervisorCapabilities (root admin) for one hypervisor: one row per hypervisor version."""
        answer = self.list_all("listHypervisorCapabilities", "hypervisorCapabilities", hypervisor=hypervisor)
        return [HypervisorCapability.model_validate(c) for c in answer]

    def template_hypervisor(self, template_id: str) -> str | None:
        templates = self.list_all("listTemplates", "template", templatefilter="executable", id=template_id)
        return str(templates[0].get("hypervisor")) if templates and templates[0].get("hypervisor") else None


def key_value_map(name: str, pairs: Mapping[str, str]) -> dict[str, str]:
    """A CloudStack key/value map parameter: ``tags[0].key=a&tags[0].value=b``."""
    params: dict[str, str] = {}
    for index, (key, value) in enumerate(pairs.items()):
        params[f"{name}[{index}].key"] = key
        params[f"{name}[{index}].value"] = value
    return params


def require_admin_field(volume: Volume, field: str, why: str) -> str:
    """A root-admin-only field of a volume (``path``, ``storage``, ``storage_id``), or a clear refusal."""
    value = getattr(volume, field)
    if value is None:
        raise CloudStackAdminRequired(
            "listVolumes",
            f"volume {volume.id} shows no {field}: CloudStack shows it to root admins only, and {why}; give vmferry "
            "a root admin's API key",
        )
    return str(value)


def _network_params(networks: list[tuple[str, str | None]]) -> dict[str, str]:
    """``networkids`` keeps NIC order exactly; ``iptonetworklist[n]`` (needed for static IPs) cannot be mixed
    with it (BaseDeployVMCmd.getIpToNetworkMap)."""
    if not networks:
        return {}
    if all(ip is None for _, ip in networks):
        return {"networkids": ",".join(network_id for network_id, _ in networks)}
    params: dict[str, str] = {}
    for index, (network_id, ip) in enumerate(networks):
        params[f"iptonetworklist[{index}].networkid"] = network_id
        if ip is not None:
            params[f"iptonetworklist[{index}].ip"] = ip
    return params


def _wire_name(name: str) -> str:
    """ParamUnpackWorker lower-cases a top-level name, and only the map's name in ``details[0].cpuNumber``."""
    head, bracket, rest = name.partition("[")
    return head.lower() + bracket + rest


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
