"""initial catalog schema

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

# Naive UTC; microseconds on MariaDB too (its DATETIME drops them by default).
TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "vm_contexts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("vcenter", sa.String(length=255), nullable=False),
        sa.Column("instance_uuid", sa.String(length=64), nullable=False),
        sa.Column("moref", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("guest_os", sa.String(length=255), nullable=True),
        sa.Column("cpu_count", sa.Integer(), nullable=True),
        sa.Column("memory_mb", sa.Integer(), nullable=True),
        sa.Column("power_state", sa.String(length=32), nullable=True),
        sa.Column("cbt_enabled", sa.Boolean(), nullable=False),
        sa.Column("boot_disk_id", sa.String(length=64), nullable=True),
        sa.Column("boot_disk_source", sa.String(length=32), nullable=True),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("present", sa.Boolean(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Column("last_seen_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vm_contexts")),
        sa.UniqueConstraint("vcenter", "instance_uuid", name=op.f("uq_vm_contexts_vcenter_instance_uuid")),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("vm_context_id", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("flow_run_id", sa.String(length=36), nullable=True),
        sa.Column("hub", sa.String(length=255), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("started_at", TIMESTAMP, nullable=True),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.ForeignKeyConstraint(
            ["vm_context_id"],
            ["vm_contexts.id"],
            name=op.f("fk_jobs_vm_context_id_vm_contexts"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_table(
        "vm_disks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("vm_context_id", sa.Integer(), nullable=False),
        sa.Column("disk_id", sa.String(length=64), nullable=False),
        sa.Column("device_key", sa.BigInteger(), nullable=False),
        sa.Column("controller_key", sa.BigInteger(), nullable=False),
        sa.Column("bus", sa.String(length=16), nullable=False),
        sa.Column("bus_number", sa.Integer(), nullable=False),
        sa.Column("unit_number", sa.Integer(), nullable=True),
        sa.Column("capacity_bytes", sa.BigInteger(), nullable=False),
        sa.Column("backing_uuid", sa.String(length=64), nullable=True),
        sa.Column("file_name", sa.String(length=1024), nullable=False),
        sa.Column("base_file_name", sa.String(length=1024), nullable=False),
        sa.Column("label", sa.String(length=255), nullable=True),
        sa.Column("disk_mode", sa.String(length=64), nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("present", sa.Boolean(), nullable=False),
        sa.Column("first_seen_at", TIMESTAMP, nullable=False),
        sa.Column("last_seen_at", TIMESTAMP, nullable=False),
        sa.Column("removed_at", TIMESTAMP, nullable=True),
        sa.ForeignKeyConstraint(
            ["vm_context_id"],
            ["vm_contexts.id"],
            name=op.f("fk_vm_disks_vm_context_id_vm_contexts"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vm_disks")),
        sa.UniqueConstraint("vm_context_id", "disk_id", name=op.f("uq_vm_disks_vm_context_id_disk_id")),
    )
    op.create_table(
        "failovers",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("vm_context_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("mode", sa.String(length=8), nullable=False),
        sa.Column("destination_vm_id", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_failovers_job_id_jobs"), ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(
            ["vm_context_id"],
            ["vm_contexts.id"],
            name=op.f("fk_failovers_vm_context_id_vm_contexts"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_failovers")),
    )
    op.create_table(
        "nbd_exports",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("vm_disk_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("export_name", sa.String(length=255), nullable=False),
        sa.Column("bind_address", sa.String(length=64), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("file_path", sa.String(length=4096), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("hub", sa.String(length=255), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("stopped_at", TIMESTAMP, nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_nbd_exports_job_id_jobs"), ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(
            ["vm_disk_id"],
            ["vm_disks.id"],
            name=op.f("fk_nbd_exports_vm_disk_id_vm_disks"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nbd_exports")),
    )
    op.create_table(
        "port_leases",
        sa.Column("port", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("purpose", sa.String(length=255), nullable=True),
        sa.Column("leased_at", TIMESTAMP, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_port_leases_job_id_jobs"), ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("port", name=op.f("pk_port_leases")),
    )
    op.create_table(
        "replicated_volumes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("vm_disk_id", sa.Integer(), nullable=False),
        sa.Column("volume_id", sa.String(length=64), nullable=False),
        sa.Column("zone_id", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("disk_generation", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("attached_vm_id", sa.String(length=64), nullable=True),
        sa.Column("device_id", sa.Integer(), nullable=True),
        sa.Column("device_path", sa.String(length=1024), nullable=True),
        sa.Column("last_change_id", sa.String(length=255), nullable=True),
        sa.Column("last_synced_at", TIMESTAMP, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["vm_disk_id"],
            ["vm_disks.id"],
            name=op.f("fk_replicated_volumes_vm_disk_id_vm_disks"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_replicated_volumes")),
        sa.UniqueConstraint("vm_disk_id", name=op.f("uq_replicated_volumes_vm_disk_id")),
        sa.UniqueConstraint("volume_id", name=op.f("uq_replicated_volumes_volume_id")),
    )
    op.create_table(
        "restore_points",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("vm_context_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("repository", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("committed_at", TIMESTAMP, nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_restore_points_job_id_jobs"), ondelete="RESTRICT"
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["restore_points.id"],
            name=op.f("fk_restore_points_parent_id_restore_points"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["vm_context_id"],
            ["vm_contexts.id"],
            name=op.f("fk_restore_points_vm_context_id_vm_contexts"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_restore_points")),
    )
    op.create_table(
        "failover_volumes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("failover_id", sa.Integer(), nullable=False),
        sa.Column("vm_disk_id", sa.Integer(), nullable=False),
        sa.Column("replicated_volume_id", sa.Integer(), nullable=False),
        sa.Column("planned_device_id", sa.Integer(), nullable=False),
        sa.Column("actual_device_id", sa.Integer(), nullable=True),
        sa.Column("is_root", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["failover_id"],
            ["failovers.id"],
            name=op.f("fk_failover_volumes_failover_id_failovers"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["replicated_volume_id"],
            ["replicated_volumes.id"],
            name=op.f("fk_failover_volumes_replicated_volume_id_replicated_volumes"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["vm_disk_id"],
            ["vm_disks.id"],
            name=op.f("fk_failover_volumes_vm_disk_id_vm_disks"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_failover_volumes")),
        sa.UniqueConstraint(
            "failover_id", "planned_device_id", name=op.f("uq_failover_volumes_failover_id_planned_device_id")
        ),
        sa.UniqueConstraint("failover_id", "vm_disk_id", name=op.f("uq_failover_volumes_failover_id_vm_disk_id")),
    )
    op.create_table(
        "restore_point_disks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("restore_point_id", sa.Integer(), nullable=False),
        sa.Column("vm_disk_id", sa.Integer(), nullable=False),
        sa.Column("disk_generation", sa.Integer(), nullable=False),
        sa.Column("file_path", sa.String(length=1024), nullable=False),
        sa.Column("backing_id", sa.Integer(), nullable=True),
        sa.Column("capacity_bytes", sa.BigInteger(), nullable=False),
        sa.Column("bytes_written", sa.BigInteger(), nullable=True),
        sa.Column("change_id", sa.String(length=255), nullable=True),
        sa.Column("checksum", sa.String(length=128), nullable=True),
        sa.ForeignKeyConstraint(
            ["backing_id"],
            ["restore_point_disks.id"],
            name=op.f("fk_restore_point_disks_backing_id_restore_point_disks"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["restore_point_id"],
            ["restore_points.id"],
            name=op.f("fk_restore_point_disks_restore_point_id_restore_points"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["vm_disk_id"],
            ["vm_disks.id"],
            name=op.f("fk_restore_point_disks_vm_disk_id_vm_disks"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_restore_point_disks")),
        sa.UniqueConstraint(
            "restore_point_id", "vm_disk_id", name=op.f("uq_restore_point_disks_restore_point_id_vm_disk_id")
        ),
    )


def downgrade() -> None:
    op.drop_table("restore_point_disks")
    op.drop_table("failover_volumes")
    op.drop_table("restore_points")
    op.drop_table("replicated_volumes")
    op.drop_table("port_leases")
    op.drop_table("nbd_exports")
    op.drop_table("failovers")
    op.drop_table("vm_disks")
    op.drop_table("jobs")
    op.drop_table("vm_contexts")
