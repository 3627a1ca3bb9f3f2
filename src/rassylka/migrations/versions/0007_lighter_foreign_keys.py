"""No per-row foreign-key checks on the tables written a million rows at a time: message
events (an append-only log) and message.mailing_id (covered by run_id's cascade).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("message_event") as batch:
        batch.drop_constraint("fk_message_event_message_id_message", type_="foreignkey")
        batch.drop_constraint("fk_message_event_mailing_id_mailing", type_="foreignkey")
    with op.batch_alter_table("message") as batch:
        batch.drop_constraint("fk_message_mailing_id_mailing", type_="foreignkey")


def downgrade() -> None:
    # Events or messages whose mailing is gone would refuse the keys: they go first.
    op.execute("DELETE FROM message_event WHERE mailing_id NOT IN (SELECT id FROM mailing)")
    op.execute("DELETE FROM message_event WHERE message_id NOT IN (SELECT id FROM message)")
    with op.batch_alter_table("message") as batch:
        batch.create_foreign_key(
            "fk_message_mailing_id_mailing", "mailing", ["mailing_id"], ["id"], ondelete="CASCADE"
        )
    with op.batch_alter_table("message_event") as batch:
        batch.create_foreign_key(
            "fk_message_event_message_id_message",
            "message",
            ["message_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch.create_foreign_key(
            "fk_message_event_mailing_id_mailing",
            "mailing",
            ["mailing_id"],
            ["id"],
            ondelete="CASCADE",
        )
