"""The failover's guest preparation step (tasks/guest_prep.py), kept apart from the failover flow's own steps."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger

from catalog import default_catalog
from catalog.inventory import RecordedVM
from catalog.replication import VolumeView, forget_change_id
from tasks.guest_prep import GuestPreparation, prepare_guest_for_kvm
from vmferry.failover_plan import PlannedAttachment


def prepare_os_volume(
    recorded: RecordedVM,
    plan: list[PlannedAttachment],
    volumes: dict[int, VolumeView],
    *,
    enabled: bool,
    virtio_win: str | None,
) -> GuestPreparation | None:
    """Prepare the OS volume on the hub for KVM, before it moves to the destination VM; None when turned off."""
    logger = get_run_logger()
    root = next(item for item in plan if item.is_root)
    if not enabled:
        logger.info("guest preparation of %s skipped: turned off for this VM (prepare_guest=false)", recorded.name)
        return None
    volume = volumes[root.vm_disk_id]
    if not volume.device_path:
        raise ValueError(
            f"VM {recorded.name!r}: OS volume {volume.volume_id} has no device on the hub; replicate the VM again"
        )
    # virt-v2v writes blocks the source's CBT never hears of, and an interrupted run leaves them unknown: from
    # here on the next sync of this volume compares every block instead of trusting changed areas.
    forget_change_id(default_catalog(), volume.volume_id)
    return prepare_guest_for_kvm(
        recorded.name,
        recorded.vm_context_id,
        volume.volume_id,
        Path(volume.device_path),
        Path(virtio_win) if virtio_win else None,
    )
