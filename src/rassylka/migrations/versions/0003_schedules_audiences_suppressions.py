"""Schedules, send windows and audiences of mailings; opt-outs and suppressed addresses.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Moment = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("mailing") as batch:
        batch.add_column(sa.Column("cron", sa.String(255), nullable=True))
        batch.add_column(sa.Column("rrule", sa.Text(), nullable=True))
        batch.add_column(sa.Column("until_at", Moment, nullable=True))
        batch.add_column(sa.Column("max_runs", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("catch_up", sa.String(8), nullable=False, server_default="once"))
        batch.add_column(sa.Column("ends_at", Moment, nullable=True))
        batch.add_column(sa.Column("send_window", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("audience", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("next_run_at", Moment, nullable=True))
        batch.add_column(sa.Column("last_run_at", Moment, nullable=True))
        batch.add_column(sa.Column("runs_count", sa.Integer(), nullable=False, server_default="0"))
    op.create_index("ix_mailing_due", "mailing", ["status", "next_run_at"])
    with op.batch_alter_table("client") as batch:
        batch.add_column(
            sa.Column("opted_out", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("phone_timezone", sa.String(64), nullable=True))
    with op.batch_alter_table("message") as batch:
        batch.add_column(sa.Column("timezone", sa.String(64), nullable=True))
    op.create_table(
        "suppression",
        sa.Column("id", Id, nullable=False),
        sa.Column("project_id", Id, nullable=False),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", Moment, nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["project.id"],
            name=op.f("fk_suppression_project_id_project"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_suppression")),
        sa.UniqueConstraint(
            "project_id", "address", name=op.f("uq_suppression_project_id_address")
        ),
    )


def downgrade() -> None:
    op.drop_table("suppression")
    with op.batch_alter_table("message") as batch:
        batch.drop_column("timezone")
    with op.batch_alter_table("client") as batch:
        batch.drop_column("phone_timezone")
        batch.drop_column("opted_out")
    op.drop_index("ix_mailing_due", table_name="mailing")
    with op.batch_alter_table("mailing") as batch:
        for column in (
            "runs_count",
            "last_run_at",
            "next_run_at",
            "audience",
            "send_window",
            "ends_at",
            "catch_up",
            "max_runs",
            "until_at",
            "rrule",
            "cron",
        ):
            batch.drop_column(column)
