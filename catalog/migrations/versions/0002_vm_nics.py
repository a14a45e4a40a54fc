"""vm_nics: the source VM's network adapters and port groups (failover maps them to CloudStack networks)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "vm_nics",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("vm_context_id", sa.Integer(), nullable=False),
        sa.Column("device_key", sa.BigInteger(), nullable=False),
        sa.Column("mac_address", sa.String(length=32), nullable=True),
        sa.Column("network", sa.String(length=255), nullable=False),
        sa.Column("adapter", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=255), nullable=True),
        sa.Column("present", sa.Boolean(), nullable=False),
        sa.Column("last_seen_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["vm_context_id"],
            ["vm_contexts.id"],
            name=op.f("fk_vm_nics_vm_context_id_vm_contexts"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vm_nics")),
        sa.UniqueConstraint("vm_context_id", "device_key", name=op.f("uq_vm_nics_vm_context_id_device_key")),
    )


def downgrade() -> None:
    op.drop_table("vm_nics")
