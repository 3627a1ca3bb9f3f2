"""One index on message (mailing_id, run_id, status) instead of ix_message_mailing_id and
ix_message_run_status: every message a run makes (a million at a time) fills one index less.
The queries by run filter by the run's mailing as well, so they use the new index's prefix.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_message_mailing_run_status", "message", ["mailing_id", "run_id", "status"])
    op.drop_index("ix_message_run_status", table_name="message")
    op.drop_index("ix_message_mailing_id", table_name="message")


def downgrade() -> None:
    op.create_index("ix_message_mailing_id", "message", ["mailing_id"])
    op.create_index("ix_message_run_status", "message", ["run_id", "status"])
    op.drop_index("ix_message_mailing_run_status", table_name="message")
