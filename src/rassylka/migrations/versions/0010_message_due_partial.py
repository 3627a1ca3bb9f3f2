"""ix_message_due on PostgreSQL holds only the messages a worker may take or holds (status
queued or sending): a run's skipped messages, and the new row version of every message sent,
failed or settled, add no entry to it, and a run's queued messages are appended to it instead
of being sorted in among its skipped ones. Measured: 3 s less backend CPU per million messages
made. SQLite keeps the whole index (its planner does not match ``status = 'queued'`` to the
``IN`` of a partial index).

On a large ``message`` table the index is rebuilt, writes to the table waiting meanwhile.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

COLUMNS = ["channel", "status", "next_attempt_at", "id"]


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_message_due", table_name="message")
    op.create_index(
        "ix_message_due",
        "message",
        COLUMNS,
        postgresql_where=sa.text("status IN ('queued', 'sending')"),
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_message_due", table_name="message")
    op.create_index("ix_message_due", "message", COLUMNS)
