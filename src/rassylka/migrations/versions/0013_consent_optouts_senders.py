"""Deliverability and consent: per-channel consent and opt-outs of clients, a mailing's kind
(advertising or service), a project's SMS sender, email From and Reply-To, and frequency caps.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

Moment = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("client") as batch:
        for channel in ("email", "sms"):
            batch.add_column(
                sa.Column(
                    f"{channel}_consent", sa.String(8), nullable=False, server_default="unknown"
                )
            )
            batch.add_column(sa.Column(f"{channel}_consent_at", Moment, nullable=True))
            batch.add_column(sa.Column(f"{channel}_consent_source", sa.String(255), nullable=True))
            batch.add_column(
                sa.Column(
                    f"{channel}_opted_out", sa.Boolean(), nullable=False, server_default=sa.false()
                )
            )
    with op.batch_alter_table("mailing") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="service"))
    with op.batch_alter_table("project") as batch:
        batch.add_column(sa.Column("sms_sender", sa.String(21), nullable=True))
        batch.add_column(sa.Column("email_from", sa.String(512), nullable=True))
        batch.add_column(sa.Column("email_reply_to", sa.String(320), nullable=True))
        batch.add_column(sa.Column("email_frequency_cap", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("sms_frequency_cap", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("project") as batch:
        for name in (
            "sms_frequency_cap",
            "email_frequency_cap",
            "email_reply_to",
            "email_from",
            "sms_sender",
        ):
            batch.drop_column(name)
    with op.batch_alter_table("mailing") as batch:
        batch.drop_column("kind")
    with op.batch_alter_table("client") as batch:
        for channel in ("sms", "email"):
            for suffix in ("opted_out", "consent_source", "consent_at", "consent"):
                batch.drop_column(f"{channel}_{suffix}")
