"""The failover's guest preparation step (tasks/guest_prep.py), kept apart from the failover flow's own steps."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger

from blocks.cloudstack import CloudStack
from catalog.inventory import RecordedVM
from catalog.replication import VolumeView
from common.names import hub_limit_name
from orchestration.limits import first_free
from tasks.cloudstack import attach_to_hub, detach_from_hub
from tasks.guest_prep import GuestPreparation, prepare_guest_for_kvm
from tasks.records import forget_volume_change_id
from vmferry.compensation import quietly
from vmferry.failover_plan import PlannedAttachment


def prepare_os_volume(
    cloud: CloudStack,
    recorded: RecordedVM,
    plan: list[PlannedAttachment],
    volumes: dict[int, VolumeView],
    *,
    enabled: bool,
    virtio_win: str | None,
) -> GuestPreparation | None:
    """Prepare the OS volume for KVM before it moves to the destination VM; None when turned off.

    Volumes rest detached between syncs: the OS volume goes onto a hub of the pool (one of that hub's slots) only
    while virt-v2v-in-place works on it."""
    logger = get_run_logger()
    root = next(item for item in plan if item.is_root)
    if not enabled:
        logger.info("guest preparation of %s skipped: turned off for this VM (prepare_guest=false)", recorded.name)
        return None
    volume = volumes[root.vm_disk_id]
    capacity = next(d.capacity_bytes for d in recorded.present_disks() if d.vm_disk_id == root.vm_disk_id)
    # virt-v2v writes blocks the source's CBT never hears of, and an interrupted run leaves them unknown: from
    # here on the next sync of this volume compares every block instead of trusting changed areas.
    forget_volume_change_id(volume.volume_id)
    hubs = {hub_limit_name(hub): hub for hub in cloud.hub_ids()}
    with first_free(list(hubs), 1, logger) as limit_name:
        attached = attach_to_hub(cloud, hubs[limit_name], volume, capacity)
        try:
            prepared = prepare_guest_for_kvm(
                recorded.name,
                recorded.vm_context_id,
                volume.volume_id,
                Path(attached.device_path or ""),
                Path(virtio_win) if virtio_win else None,
            )
        except BaseException:
            quietly(detach_from_hub, cloud, volume.volume_id)()
            raise
        detach_from_hub(cloud, volume.volume_id)  # a failure here fails the failover before anything is deployed
    return prepared
