"""Message events: every status change of every message.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "message_event",
        sa.Column("id", Id, nullable=False),
        sa.Column("message_id", Id, nullable=False),
        sa.Column("mailing_id", Id, nullable=False),
        sa.Column("run_id", Id, nullable=False),
        sa.Column("client_id", Id, nullable=True),
        sa.Column("client_guid", sa.String(255), nullable=True),
        sa.Column("channel", sa.SmallInteger(), nullable=False),
        sa.Column("old_status", sa.String(16), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("peer_message_id", sa.String(255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["mailing_id"],
            ["mailing.id"],
            name=op.f("fk_message_event_mailing_id_mailing"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["message.id"],
            name=op.f("fk_message_event_message_id_message"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_message_event")),
    )
    op.create_index("ix_message_event_mailing", "message_event", ["mailing_id", "id"])
    op.create_index("ix_message_event_message", "message_event", ["message_id", "id"])


def downgrade() -> None:
    op.drop_table("message_event")
