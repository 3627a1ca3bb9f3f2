"""Runs and messages; a mailing's status reason.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Moment = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "run",
        sa.Column("id", Id, nullable=False),
        sa.Column("mailing_id", Id, nullable=False),
        sa.Column("scheduled_at", Moment, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", Moment, nullable=False),
        sa.Column("finished_at", Moment, nullable=True),
        sa.ForeignKeyConstraint(
            ["mailing_id"],
            ["mailing.id"],
            name=op.f("fk_run_mailing_id_mailing"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run")),
        sa.UniqueConstraint(
            "mailing_id", "scheduled_at", name=op.f("uq_run_mailing_id_scheduled_at")
        ),
    )
    op.create_table(
        "message",
        sa.Column("id", Id, nullable=False),
        sa.Column("run_id", Id, nullable=False),
        sa.Column("mailing_id", Id, nullable=False),
        sa.Column("client_id", Id, nullable=True),
        sa.Column("channel", sa.SmallInteger(), nullable=False),
        sa.Column("address", sa.String(320), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", Moment, nullable=True),
        sa.Column("leased_until", Moment, nullable=True),
        sa.Column("peer_message_id", sa.String(255), nullable=True),
        sa.Column("reply", sa.Text(), nullable=True),
        sa.Column("parts", sa.SmallInteger(), nullable=True),
        sa.Column("sent_at", Moment, nullable=True),
        sa.Column("created_at", Moment, nullable=False),
        sa.Column("updated_at", Moment, nullable=False),
        sa.ForeignKeyConstraint(
            ["client_id"],
            ["client.id"],
            name=op.f("fk_message_client_id_client"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["mailing_id"],
            ["mailing.id"],
            name=op.f("fk_message_mailing_id_mailing"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["run.id"], name=op.f("fk_message_run_id_run"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_message")),
        sa.UniqueConstraint(
            "run_id", "client_id", "channel", name=op.f("uq_message_run_id_client_id_channel")
        ),
    )
    op.create_index(op.f("ix_message_client_id"), "message", ["client_id"])
    op.create_index(op.f("ix_message_mailing_id"), "message", ["mailing_id"])
    op.create_index("ix_message_due", "message", ["channel", "status", "next_attempt_at", "id"])
    op.create_index("ix_message_run_status", "message", ["run_id", "status"])
    op.add_column("mailing", sa.Column("status_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("mailing") as batch:
        batch.drop_column("status_reason")
    op.drop_table("message")
    op.drop_table("run")
