"""The schema that migrations build is the one the models describe, and the database enforces identity."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError

from catalog.models import Base, Job, NbdExport, VmContext, VmDisk, utcnow


def test_migrations_build_exactly_the_models(catalog):
    with catalog.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_migrating_twice_is_harmless(catalog):
    catalog.migrate()
    catalog.migrate()


def _context(connection) -> int:
    now = utcnow()
    return connection.execute(
        insert(VmContext).values(
            vcenter="vc",
            instance_uuid="u1",
            moref="vm-1",
            name="pgtest1",
            cbt_enabled=False,
            state="discovered",
            present=True,
            created_at=now,
            updated_at=now,
        )
    ).inserted_primary_key[0]


def _disk_values(context_id: int, disk_id: str) -> dict:
    now = utcnow()
    return dict(
        vm_context_id=context_id,
        disk_id=disk_id,
        device_key=2000,
        controller_key=1000,
        bus="scsi",
        bus_number=0,
        unit_number=0,
        capacity_bytes=1,
        file_name="f",
        base_file_name="f",
        generation=1,
        present=True,
        first_seen_at=now,
        last_seen_at=now,
    )


def test_database_rejects_a_second_row_for_the_same_disk(catalog):
    with catalog.engine.begin() as connection:
        context_id = _context(connection)
        connection.execute(insert(VmDisk).values(**_disk_values(context_id, "disk-2000")))
    with pytest.raises(IntegrityError), catalog.engine.begin() as connection:
        connection.execute(insert(VmDisk).values(**_disk_values(context_id, "disk-2000")))
    # the same key on another VM is a different disk
    with catalog.engine.begin() as connection:
        other = connection.execute(
            insert(VmContext).values(
                vcenter="vc",
                instance_uuid="u2",
                moref="vm-2",
                name="db3",
                cbt_enabled=False,
                state="discovered",
                present=True,
                created_at=utcnow(),
                updated_at=utcnow(),
            )
        ).inserted_primary_key[0]
        connection.execute(insert(VmDisk).values(**_disk_values(other, "disk-2000")))


def _export_values(vm_disk_id: int | None) -> dict:
    return dict(
        vm_disk_id=vm_disk_id,
        job_id="job-1",
        export_name="x",
        bind_address="127.0.0.1",
        port=10100,
        file_path="/tmp/x",
        state="starting",
        created_at=utcnow(),
    )


@pytest.mark.parametrize("vm_disk_id", [None, 999_999], ids=["null-disk", "unknown-disk"])
def test_database_rejects_an_export_without_its_disk(catalog, vm_disk_id):
    with catalog.engine.begin() as connection:
        connection.execute(insert(Job).values(id="job-1", kind="backup", state="running", created_at=utcnow()))
    with pytest.raises(IntegrityError), catalog.engine.begin() as connection:
        connection.execute(insert(NbdExport).values(**_export_values(vm_disk_id)))
