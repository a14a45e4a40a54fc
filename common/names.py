"""Every name vmferry derives deterministically, and the parsers of the few it reads back. Domain core:
standard library only, no Prefect, no I/O.

A deterministic name lets a retried or interrupted run find what an earlier attempt made (a volume, a
destination VM, a snapshot, a repository directory). It never proves who made it: ownership is proven by
the catalog and, in CloudStack, by owner tags (docs/replication-ownership.md). The parsers here only say
what a name *claims*; the callers check the claim against the catalog.

Names that reach the outside world are built from catalog ids, never from a VM's or a disk's name, so no
VM name ever lands in a path, a command line or a CloudStack name. The exceptions are labels for people in
Prefect (artifact keys, run tags, flow run names), which Prefect stores as data.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

# --- disks ----------------------------------------------------------------------------------------------

_DISK_ID = re.compile(r"^disk-(\d+)$")
_RETIRED = "~"


def disk_id(device_key: int) -> str:
    """The catalog's disk id: the real vSphere device key, never an index or ``unit + 2000``."""
    return f"disk-{int(device_key)}"


def is_disk_id(text: str) -> bool:
    return _DISK_ID.match(text) is not None


def device_key_of(text: str) -> int:
    """``disk-2000`` -> 2000; anything else (a retired id, a path, a name) is refused."""
    match = _DISK_ID.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a catalog disk id like disk-2000")
    return int(match[1])


def retired_disk_id(current: str, vm_disk_id: int) -> str:
    """What a disk row is renamed to when its device key now names another disk: unique, history kept."""
    return f"{current}{_RETIRED}{int(vm_disk_id)}"


def original_disk_id(text: str) -> str:
    """The disk id a (possibly retired) row had while its disk was present."""
    return text.split(_RETIRED, 1)[0]


# --- hub exports, CloudStack volumes and VMs ----------------------------------------------------------


def export_name(vm_context_id: int, disk: str) -> str:
    """The qemu-nbd export of a disk's target: catalog ids only."""
    device_key_of(disk)  # a retired or foreign id never names an export
    return f"vm{int(vm_context_id)}-{disk}"


def volume_name(installation_id: str, vm_context_id: int, disk: str, vm_disk_id: int) -> str:
    """A label for people (ids only): the row id makes a replaced disk's volume another one; the installation
    prefix tells two catalogs' volumes apart at a glance. The owner tags, not this name, prove ownership."""
    device_key_of(disk)
    return f"vmferry-vm{int(vm_context_id)}-{disk}-r{int(vm_disk_id)}-{installation_id[:8]}"


def destination_vm_name(vm_context_id: int, mode: str) -> str:
    """A failover's destination VM: deterministic, so cleanup finds a VM an interrupted failover created."""
    if mode not in ("test", "live"):
        raise ValueError(f"failover mode {mode!r} is neither 'test' nor 'live'")
    return f"vmferry-vm{int(vm_context_id)}-{mode}"


def export_log_file_name(disk: str) -> str:
    """The qemu-nbd log of a disk's export, in the job's private log directory."""
    device_key_of(disk)
    return f"qemu-nbd-{disk}.log"


# --- CloudStack owner tags ------------------------------------------------------------------------------

TAG_INSTALLATION = "vmferry-installation"
TAG_VM = "vmferry-vm-instance-uuid"
TAG_DISK = "vmferry-disk-row"
TAG_GENERATION = "vmferry-disk-generation"
OWNER_TAG_KEYS = (TAG_INSTALLATION, TAG_VM, TAG_DISK, TAG_GENERATION)


def owner_tags(installation_id: str, instance_uuid: str, vm_disk_id: int, generation: int) -> dict[str, str]:
    return {
        TAG_INSTALLATION: installation_id,
        TAG_VM: instance_uuid,
        TAG_DISK: str(int(vm_disk_id)),
        TAG_GENERATION: str(int(generation)),
    }


def tagged_disk(tags: dict[str, str], installation_id: str) -> int | None:
    """The disk row a volume's owner tags name, when they name this installation; else None.

    Only a claim: the caller compares it with its catalog (a row of another VM, or none, proves nothing)."""
    if tags.get(TAG_INSTALLATION) != installation_id:
        return None
    row = tags.get(TAG_DISK, "")
    return int(row) if row.isdigit() else None


# --- vSphere snapshots ------------------------------------------------------------------------------------

SNAPSHOT_PREFIX = "vmferry-"
CBT_ENABLE_SNAPSHOT = f"{SNAPSHOT_PREFIX}cbt-enable"


def job_snapshot_name(job_id: str) -> str:
    """The one snapshot an agent job takes (docs/agent-contract.md): ``vmferry-<job id>``."""
    return f"{SNAPSHOT_PREFIX}{job_id}"


def job_snapshot_description(job_id: str) -> str:
    return f"vmferry job={job_id}"


def job_of_snapshot(name: str) -> str | None:
    """The job a snapshot's name claims, or None for a name of nobody's job of ours."""
    if not name.startswith(SNAPSHOT_PREFIX) or len(name) == len(SNAPSHOT_PREFIX):
        return None
    return name[len(SNAPSHOT_PREFIX) :]


# --- backup repository layout -----------------------------------------------------------------------------

PARTIAL_SUFFIX = ".partial"
PARTIAL_GLOB = f"vm-*/point-*{PARTIAL_SUFFIX}"
_VM_DIR = re.compile(r"^vm-(\d+)$")
_POINT_DIR = re.compile(rf"^point-(\d+)({re.escape(PARTIAL_SUFFIX)})?$")


def vm_dir_name(vm_context_id: int) -> str:
    return f"vm-{int(vm_context_id)}"


def point_dir_name(point_id: int, *, partial: bool = False) -> str:
    return f"point-{int(point_id)}{PARTIAL_SUFFIX if partial else ''}"


def disk_file_name(disk: str) -> str:
    """``disk-2000.qcow2``; raises ValueError for anything but a catalog disk id."""
    device_key_of(disk)
    return f"{disk}.qcow2"


def parse_vm_dir(name: str) -> int | None:
    """``vm-12`` -> 12, else None."""
    match = _VM_DIR.match(name)
    return int(match[1]) if match else None


def parse_point_dir(name: str) -> tuple[int, bool] | None:
    """``point-7`` -> (7, False), ``point-7.partial`` -> (7, True), else None."""
    match = _POINT_DIR.match(name)
    return (int(match[1]), match[2] is not None) if match else None


# --- Prefect: artifact keys, run tags, flow run names, concurrency limits -------------------------------

_NOT_KEY = re.compile(r"[^a-z0-9]+")
MAX_SLUG = 100  # artifact keys are shown in lists and URLs; the hash keeps long names apart


def slug(text: str) -> str:
    """Lowercase ASCII letters, digits and dashes: what Prefect accepts in an artifact key.

    ASCII names keep their readable slug (``DB 3/prod`` -> ``db-3-prod``). A name with other letters, or one
    too long, gets a short hash of the whole name appended, so two such VMs never share a key."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    readable = _NOT_KEY.sub("-", folded.lower()).strip("-")
    if text.isascii() and 0 < len(readable) <= MAX_SLUG:
        return readable
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    readable = readable[:MAX_SLUG].rstrip("-")
    return f"{readable}-{digest}" if readable else f"unnamed-{digest}" if text else "unnamed"


def artifact_key(kind: str, vm_name: str) -> str:
    """The artifact key of a flow's result for one VM: ``backup-db3``, so the UI's artifact history is per VM."""
    return f"{slug(kind)}-{slug(vm_name)}"


def log_artifact_key(key: str) -> str:
    """The artifact holding the log that goes with the result artifact ``key``."""
    return f"{key}-log"


def boot_verify_artifact_key(point_id: int) -> str:
    return f"boot-verify-point-{int(point_id)}"


def vm_tag(vm_name: str) -> str:
    """The run tag the UI filters a VM's runs by (a tag is data: any name is fine)."""
    return f"vm:{vm_name}"


def policy_run_key(flow_run_id: str, instance_uuid: str) -> str:
    """Idempotency key of the deployment run a policy run starts for one VM: a retried task starts it once."""
    return f"{flow_run_id}-{instance_uuid}"


# flow run name templates: Prefect fills them from the flow's parameters
BACKUP_RUN = "backup-{vm}-{kind}"
REPLICATE_RUN = "replicate-{vm}-{kind}"
COPY_RUN = "copy-{vm}-{kind}"
FAILOVER_RUN = "failover-{vm}-{mode}"
CLEANUP_RUN = "cleanup-{vm}"
COMMIT_RUN = "commit-{vm}"
REVERT_RUN = "revert-{vm}"
PRUNE_RUN = "prune-{vm}"
POLICY_RUN = "policy-{policy}-{action}"


def disk_event_resource(instance_uuid: str, device_key: int) -> str:
    """The Prefect event resource id of one source disk (CBT check reports)."""
    return f"vmferry.vm.{instance_uuid}.disk.{int(device_key)}"


def verify_run_name(point_id: int | None, vm: str | None, boot: bool) -> str:
    if point_id is not None:
        return f"verify-point-{int(point_id)}"
    return f"verify-{vm or 'newest'}{'-boot' if boot else ''}"


# Prefect refuses / % & > < in limit names; vCenter hosts are DNS names or addresses (IPv6 has colons).
_UNSAFE = re.compile(r"[^a-z0-9.-]+")
_BANNED = re.compile(r"[/%&><]+")


def repository_limit_name(repository_name: str) -> str:
    # only the characters Prefect refuses are replaced: a limit an earlier release created keeps its name
    return f"repo-backup-{_BANNED.sub('-', repository_name)}"


def vcenter_limit_name(host: str, port: int = 443) -> str:
    name = _UNSAFE.sub("-", host.strip().lower()).strip("-")
    suffix = "" if port == 443 else f"-{port}"
    return f"vcenter-snapshots-{name}{suffix}"


def vm_limit_name(instance_uuid: str) -> str:
    return f"vm-{_UNSAFE.sub('-', instance_uuid.strip().lower()).strip('-')}"


def hub_limit_name(hub_vm_id: str) -> str:
    return f"hub-volumes-{_UNSAFE.sub('-', hub_vm_id.lower())}"


def vm_volumes_limit_name(installation_id: str, vm_context_id: int) -> str:
    return f"vm-volumes-{installation_id[:8]}-{int(vm_context_id)}"
