"""SMS parts with their peer ids, and delivery receipts waiting for their part.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "message_part",
        sa.Column("id", Id, nullable=False),
        sa.Column("message_id", Id, nullable=False),
        sa.Column("part", sa.SmallInteger(), nullable=False),
        sa.Column("peer_message_id", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=True),
        sa.Column("error", sa.String(64), nullable=True),
        sa.Column("receipt_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["message.id"],
            name=op.f("fk_message_part_message_id_message"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_message_part")),
        sa.UniqueConstraint("message_id", "part", name=op.f("uq_message_part_message_id_part")),
    )
    op.create_index("ix_message_part_peer", "message_part", ["peer_message_id"])
    op.create_table(
        "receipt",
        sa.Column("id", Id, nullable=False),
        sa.Column("peer_message_id", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("error", sa.String(64), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_receipt")),
    )
    op.create_index("ix_receipt_peer", "receipt", ["peer_message_id"])


def downgrade() -> None:
    op.drop_table("receipt")
    op.drop_table("message_part")
