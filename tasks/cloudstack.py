"""CloudStack tasks: a disk's volume (created and tagged, or adopted only on proof), the hub's and the
destination's data-volume limits, and attaching a volume to a hub only while it is written.

Ownership: every volume vmferry creates carries resource tags naming its owner (this catalog's installation
id, the VM's instance UUID, the disk's catalog row and generation) and is recorded in the catalog. A volume
found by name is adopted only when its tags say it is ours for exactly that disk; a name proves nothing.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks.cloudstack import CloudStack
from catalog import default_catalog
from catalog.inventory import RecordedDisk, RecordedVM
from catalog.replication import (
    EMPTY,
    UNKNOWN,
    VolumeView,
    mark_tagged,
    record_attachment,
    record_volume,
    untagged_volumes,
    volume_for_disk,
)
from clients.cloudstack import CloudStackClient, CloudStackError, Volume, device_candidates, find_volume_device
from common.names import OWNER_TAG_KEYS, TAG_INSTALLATION, owner_tags, volume_name
from vmferry.errors import Refused, retry_unless_permanent

GiB = 2**30


class VolumeDeviceError(Exception):
    """An attached volume is not where CloudStack's answer says it must be; nothing is written to it."""


class VolumeRefused(Refused):
    """A replicated volume cannot be used as it is (another VM holds it, it is smaller than its disk, its name is
    ambiguous): our own refusal, not CloudStack's, and nothing was written."""


class VolumeOwnershipError(VolumeRefused):
    """A volume vmferry would write into is not proven ours for that disk; nothing was written."""


class ReplicationRefused(Refused):
    """The VM cannot be replicated as it is (too many disks for a hub or for the destination); nothing was made."""


def describe_owner(tags: dict[str, str]) -> str:
    found = {k: tags[k] for k in OWNER_TAG_KEYS if k in tags}
    if not found:
        return "no vmferry owner tags"
    return "owner tags " + ", ".join(f"{k}={v}" for k, v in found.items())


def proves(volume: Volume, wanted: dict[str, str]) -> bool:
    """The volume's owner tags say exactly ``wanted`` (other tags an operator added do not matter)."""
    tags = volume.tag_map
    return {key: tags.get(key) for key in OWNER_TAG_KEYS} == wanted


def _create_tagged(
    client: CloudStackClient, cloudstack: CloudStack, name: str, size_bytes: int, tags: dict[str, str]
) -> Volume:
    """createVolume then createTags; a volume whose tags could not be set is deleted again (it holds nothing)."""
    volume = client.create_volume(name, math.ceil(size_bytes / GiB), cloudstack.zone_id, cloudstack.disk_offering_id)
    try:
        client.create_tags("Volume", [volume.id], tags)
    except BaseException:
        try:
            client.delete_volume(volume.id)
        except CloudStackError:
            pass  # left untagged: the next run refuses it by name, naming it for the operator
        raise
    return volume


@task(
    retries=2,
    retry_delay_seconds=2,
    cache_policy=NO_CACHE,
    retry_condition_fn=retry_unless_permanent,
    task_run_name="volume-{disk.disk_id}",
)
def ensure_volume(
    cloudstack: CloudStack, installation_id: str, vm: RecordedVM, disk: RecordedDisk, job_id: str
) -> VolumeView:
    """The disk's volume: the recorded one, else one an interrupted run created and tagged for exactly this
    disk, else a new one (created empty by ``job_id``)."""
    recorded = volume_for_disk(default_catalog(), disk.vm_disk_id)
    if recorded is not None and recorded.retired_at is not None:
        raise VolumeOwnershipError(
            f"VM {vm.name!r} disk {disk.disk_id} is back, but its volume {recorded.volume_id} was retired when the "
            "disk went away and is never written again; delete that volume in CloudStack and its replicated_volumes "
            "row, then replicate again",
        )
    if recorded is not None:
        if recorded.disk_generation != disk.generation or recorded.size_bytes < disk.capacity_bytes:
            raise VolumeRefused(
                f"VM {vm.name!r} disk {disk.disk_id} changed size since volume {recorded.volume_id} was made for "
                "it; resize the volume in CloudStack (or delete it and its catalog row) before replicating again",
            )
        return recorded
    name = volume_name(installation_id, vm.vm_context_id, disk.disk_id, disk.vm_disk_id)
    wanted = owner_tags(installation_id, vm.instance_uuid, disk.vm_disk_id, disk.generation)
    with cloudstack.client() as client:
        existing = [v for v in client.list_volumes(name=name) if v.name == name]
        strangers = [v for v in existing if not proves(v, wanted)]
        if strangers:
            volume = strangers[0]
            raise VolumeOwnershipError(
                f"VM {vm.name!r} disk {disk.disk_id}: volume {volume.id} is named {name} but carries "
                f"{describe_owner(volume.tag_map)}, not this installation's proof for that disk; it was left "
                "untouched. Delete or rename it in CloudStack if it is not in use, then replicate again",
            )
        if len(existing) > 1:
            raise VolumeRefused(
                f"VM {vm.name!r} disk {disk.disk_id}: {len(existing)} CloudStack volumes are named {name} and carry "
                "its owner tags; delete all but one in CloudStack, then replicate again"
            )
        if existing:
            # created and tagged by an earlier run that died before recording it: what it holds is not known
            volume, state, creator = existing[0], UNKNOWN, None
        else:
            volume = _create_tagged(client, cloudstack, name, disk.capacity_bytes, wanted)
            state, creator = EMPTY, job_id
    return record_volume(
        default_catalog(),
        vm_disk_id=disk.vm_disk_id,
        volume_id=volume.id,
        zone_id=cloudstack.zone_id,
        size_bytes=volume.size,
        disk_generation=disk.generation,
        name=name,
        content_state=state,
        content_job_id=creator,
    )


# ---- limits from CloudStack ---------------------------------------------------------------------------------


def data_volume_limit(client: CloudStackClient, hypervisor: str | None, fallback: int | None, what: str) -> int:
    """listHypervisorCapabilities' maxdatavolumeslimit for ``hypervisor``: the smallest over its versions (which
    host version a VM lands on is CloudStack's choice). The block's fallback only when CloudStack does not say."""
    reason = f"VM {what} reports no hypervisor"
    if hypervisor:
        try:
            limits = [c.max_data_volumes for c in client.hypervisor_capabilities(hypervisor) if c.max_data_volumes]
        except CloudStackError as exc:
            limits, reason = [], f"listHypervisorCapabilities failed ({exc.errortext})"
        else:
            reason = f"listHypervisorCapabilities has no maxdatavolumeslimit for {hypervisor}"
        if limits:
            return min(limits)
    if fallback is not None:
        get_run_logger().warning("%s; using the block's max_data_volumes_fallback %d for %s", reason, fallback, what)
        return fallback
    raise ReplicationRefused(
        f"the data-volume limit of {what} is unknown: {reason}. Give the API key root-admin rights or set "
        "max_data_volumes_fallback on the CloudStack block"
    )


def hub_capacity(client: CloudStackClient, cloudstack: CloudStack, hub_vm_id: str, installation_id: str) -> int:
    """Volumes vmferry may have on the hub at once: its data-volume limit less the data volumes not ours."""
    hub = client.get_vm(hub_vm_id)
    limit = data_volume_limit(client, hub.hypervisor, cloudstack.max_data_volumes_fallback, f"hub {hub_vm_id}")
    others = [
        v
        for v in client.list_volumes(virtual_machine_id=hub_vm_id)
        if v.type == "DATADISK" and v.tag_map.get(TAG_INSTALLATION) != installation_id
    ]
    return max(0, limit - len(others))


def destination_limit(client: CloudStackClient, cloudstack: CloudStack) -> int:
    """Data volumes a failover VM takes: the limit of the hypervisor its template deploys on."""
    hypervisor = client.template_hypervisor(cloudstack.template_id)
    return data_volume_limit(
        client, hypervisor, cloudstack.max_data_volumes_fallback, f"the destination (template {cloudstack.template_id})"
    )


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE, retry_condition_fn=retry_unless_permanent)
def plan_hub_capacity(cloudstack: CloudStack, installation_id: str, vm: RecordedVM) -> dict[str, int]:
    """Each hub's capacity; refuses, before anything is created, a VM that no hub or no destination can take."""
    disks = len(vm.present_disks())
    with cloudstack.client() as client:
        capacities = {hub: hub_capacity(client, cloudstack, hub, installation_id) for hub in cloudstack.hub_ids()}
        destination = destination_limit(client, cloudstack)
    if disks - 1 > destination:
        raise ReplicationRefused(
            f"VM {vm.name!r} has {disks} disks: 1 OS disk and {disks - 1} data disks, but a CloudStack VM of this "
            f"destination takes at most {destination} data volumes; nothing was created. Remove disks from the VM or "
            "raise maxdatavolumeslimit (updateHypervisorCapabilities)"
        )
    if disks > max(capacities.values()):
        raise ReplicationRefused(
            f"VM {vm.name!r} has {disks} disks, but the largest hub takes {max(capacities.values())} volumes at once "
            f"(hubs: {', '.join(f'{h}={c}' for h, c in capacities.items())}); nothing was created. Add a hub with "
            "room, or free data-volume slots on one"
        )
    return capacities


# ---- attach only while writing ------------------------------------------------------------------------------


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
def attach_to_hub(cloudstack: CloudStack, hub_vm_id: str, volume: VolumeView, capacity_bytes: int) -> VolumeView:
    """Attach the volume to ``hub_vm_id`` (moving it off another hub of the pool an interrupted sync left it on)
    and find its device from CloudStack's answer."""
    with cloudstack.client() as client:
        current = client.get_volume(volume.volume_id)
        if current.virtual_machine_id not in (None, *cloudstack.hub_ids()):
            raise VolumeRefused(
                f"volume {volume.volume_id} is attached to VM {current.virtual_machine_id}, not a hub: it is not "
                "replication's to write; if a failover put it there, clean that up (test) or revert it (live) first"
            )
        if current.virtual_machine_id not in (None, hub_vm_id):
            client.detach_volume(volume.volume_id)
            current = client.get_volume(volume.volume_id)
        if current.virtual_machine_id is None:
            current = client.attach_volume(volume.volume_id, hub_vm_id)
    device = wait_for_device(cloudstack.device_root_path(), volume.volume_id, capacity_bytes)
    return record_attachment(
        default_catalog(),
        volume.volume_id,
        vm_id=hub_vm_id,
        device_id=current.device_id,
        device_path=str(device),
        state="attached-to-hub",
    )


@task(
    retries=2,
    retry_delay_seconds=2,
    cache_policy=NO_CACHE,
    retry_condition_fn=retry_unless_permanent,
    task_run_name="detach-from-hub-{volume_id}",
)
def detach_from_hub(cloudstack: CloudStack, volume_id: str) -> VolumeView:
    """Take the volume off whichever hub holds it: between syncs volumes are detached (Ready)."""
    with cloudstack.client() as client:
        current = client.get_volume(volume_id)
        if current.virtual_machine_id in cloudstack.hub_ids():
            client.detach_volume(volume_id)
    return record_attachment(
        default_catalog(), volume_id, vm_id=None, device_id=None, device_path=None, state="detached"
    )


# ---- the first run after the upgrade ---------------------------------------------------------------------------


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE, retry_condition_fn=retry_unless_permanent)
def upgrade_recorded_volumes(cloudstack: CloudStack, installation_id: str) -> list[str]:
    """Volumes recorded before volumes carried owner tags: the catalog's record is the proof, so tag them,
    and take them off the hub (they stay attached only while written now). Refuses a volume whose tags name
    another owner. Runs until no recorded volume is left untagged; returns the volumes it upgraded."""
    catalog = default_catalog()
    done = []
    with cloudstack.client() as client:
        for item in untagged_volumes(catalog):
            view = item.volume
            wanted = owner_tags(installation_id, item.instance_uuid, view.vm_disk_id, view.disk_generation)
            volume = client.get_volume(view.volume_id)
            if not any(key in volume.tag_map for key in OWNER_TAG_KEYS):
                client.create_tags("Volume", [volume.id], wanted)
            elif not proves(volume, wanted):
                raise VolumeOwnershipError(
                    f"volume {volume.id} is recorded for catalog disk {view.vm_disk_id} but carries "
                    f"{describe_owner(volume.tag_map)}; two installations claim it. Find out which one wrote it last "
                    "and remove the other's catalog row",
                )
            if volume.virtual_machine_id in cloudstack.hub_ids():
                client.detach_volume(volume.id)
                record_attachment(catalog, volume.id, vm_id=None, device_id=None, device_path=None, state="detached")
            mark_tagged(catalog, volume.id)
            done.append(volume.id)
    if done:
        get_run_logger().info("upgrade: tagged and detached %d recorded volume(s): %s", len(done), ", ".join(done))
    return done
