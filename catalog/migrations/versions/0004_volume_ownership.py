"""volume ownership proof, known content, retired volumes, the installation id

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

Existing replicated volumes keep working: their rows are ours by the catalog's own record, so the first run
after this upgrade tags them and detaches them from the hub (tasks.cloudstack.upgrade_recorded_volumes). A
volume synced before is complete at its last change id; one never synced has unknown content.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "installation",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("installation_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_installation")),
        sa.UniqueConstraint("installation_id", name=op.f("uq_installation_installation_id")),
    )
    with op.batch_alter_table("replicated_volumes") as batch:
        batch.add_column(sa.Column("name", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("owner_tagged", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch.add_column(sa.Column("content_state", sa.String(length=16), server_default="unknown", nullable=False))
        batch.add_column(sa.Column("content_job_id", sa.String(length=36), nullable=True))
        batch.add_column(sa.Column("retired_at", TIMESTAMP, nullable=True))
    with op.batch_alter_table("restore_point_disks") as batch:
        batch.add_column(sa.Column("content_state", sa.String(length=16), server_default="unknown", nullable=False))
    volumes = sa.table(
        "replicated_volumes",
        sa.column("content_state", sa.String),
        sa.column("last_synced_at", TIMESTAMP),
    )
    op.execute(volumes.update().where(volumes.c.last_synced_at.is_not(None)).values(content_state="complete"))
    points = sa.table("restore_points", sa.column("id", sa.Integer), sa.column("state", sa.String))
    point_disks = sa.table(
        "restore_point_disks", sa.column("restore_point_id", sa.Integer), sa.column("content_state", sa.String)
    )
    committed = sa.select(points.c.id).where(points.c.state == "committed")
    op.execute(
        point_disks.update().where(point_disks.c.restore_point_id.in_(committed)).values(content_state="complete")
    )


def downgrade() -> None:
    with op.batch_alter_table("restore_point_disks") as batch:
        batch.drop_column("content_state")
    with op.batch_alter_table("replicated_volumes") as batch:
        for column in ("retired_at", "content_job_id", "content_state", "owner_tagged", "name"):
            batch.drop_column(column)
    op.drop_table("installation")
