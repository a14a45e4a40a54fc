"""The first run after the upgrade: volumes an earlier release recorded (untagged, left on the hub) are tagged
and detached because the catalog proves them ours, and replication carries on into the same volumes."""

from __future__ import annotations

import os

import pytest
from alembic import command
from sqlalchemy import text, update

from catalog.db import Catalog, alembic_config
from catalog.models import ReplicatedVolume
from common.names import OWNER_TAG_KEYS, TAG_DISK, TAG_INSTALLATION
from flows.replicate import replicate_vm
from infra.lab.mutate import write_disk_bytes
from tests.replication.test_replicate import assert_volumes_equal_sources

pytestmark = pytest.mark.usefixtures("prefect_backend", "nbd_port_range")


def test_the_migration_keeps_what_earlier_syncs_proved(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = Catalog(url)
    with old.engine.begin() as connection:
        config = alembic_config(url)
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        connection.execute(text(
            "INSERT INTO vm_contexts (id, vcenter, instance_uuid, moref, name, cbt_enabled, state, present, "
            "created_at, updated_at) VALUES (1, 'vc', 'u1', 'vm-1', 'db3', 0, 'discovered', 1, '2026-01-01', "
            "'2026-01-01')"
        ))  # fmt: skip
        for row in (1, 2):
            connection.execute(text(
                "INSERT INTO vm_disks (id, vm_context_id, disk_id, device_key, controller_key, bus, bus_number, "
                f"capacity_bytes, file_name, base_file_name, generation, present, first_seen_at, last_seen_at) VALUES "
                f"({row}, 1, 'disk-{row}', {row}, 1000, 'scsi', 0, 1, 'f{row}', 'f{row}', 1, 1, '2026-01-01', "
                "'2026-01-01')"
            ))  # fmt: skip
        connection.execute(text(
            "INSERT INTO replicated_volumes (vm_disk_id, volume_id, zone_id, size_bytes, disk_generation, state, "
            "last_change_id, last_synced_at, created_at) VALUES "
            "(1, 'synced', 'z', 1, 1, 'attached-to-hub', '52 7a/4', '2026-01-02', '2026-01-01'), "
            "(2, 'never-synced', 'z', 1, 1, 'attached-to-hub', NULL, NULL, '2026-01-01')"
        ))  # fmt: skip
    old.migrate()
    with old.engine.connect() as connection:
        rows = connection.execute(
            text("SELECT volume_id, content_state, owner_tagged FROM replicated_volumes ORDER BY id")
        ).all()
    assert [tuple(r) for r in rows] == [("synced", "complete", 0), ("never-synced", "unknown", 0)]
    old.dispose()


def test_the_first_run_after_the_upgrade_tags_and_detaches_recorded_volumes(
    lab, cloudstack_sim, cloudstack_block, agent_block, lab_vcenter_block, configured_catalog, make_scratch_vm
):
    name = make_scratch_vm(disks=2)
    first = replicate_vm(name, cloudstack_block, agent_block, lab_vcenter_block)
    # what the earlier release leaves behind: untagged volumes on the hub, catalog rows without proof
    with cloudstack_block.client() as client:
        for disk in first.disks:
            client.delete_tags("Volume", [disk.volume_id], list(OWNER_TAG_KEYS))
            client.attach_volume(disk.volume_id, cloudstack_block.hub_vm_id)
    with configured_catalog.engine.begin() as connection:
        connection.execute(update(ReplicatedVolume).values(owner_tagged=False, state="attached-to-hub"))
    key = int(first.disks[1].disk_id.removeprefix("disk-"))
    write_disk_bytes(lab.vcenter, name, key, 2**20, os.urandom(128 * 1024))

    second = replicate_vm(name, cloudstack_block, agent_block, lab_vcenter_block)
    assert second.kind == "incremental"  # the upgrade kept what the earlier sync proved
    assert [d.volume_id for d in second.disks] == [d.volume_id for d in first.disks]
    assert_volumes_equal_sources(cloudstack_sim, lab, name, second)
    with cloudstack_block.client() as client:
        for disk in second.disks:
            volume = client.get_volume(disk.volume_id)
            assert volume.virtual_machine_id is None
            assert volume.tag_map[TAG_DISK] == str(disk.vm_disk_id) and TAG_INSTALLATION in volume.tag_map
