"""No unique (run_id, client_id, channel) on message: one index less to fill per message a run
makes (a million at a time), and no ON CONFLICT check per row. A run's messages are made in
the transaction that creates the run, from distinct clients, so no second copy can arise; the
queries that read a run's messages use ix_message_run_status.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

NAME = "uq_message_run_id_client_id_channel"


def upgrade() -> None:
    with op.batch_alter_table("message") as batch:
        batch.drop_constraint(NAME, type_="unique")


def downgrade() -> None:
    # Nothing makes duplicates, but the key would refuse any: keep each one's first copy.
    op.execute(
        "DELETE FROM message WHERE id NOT IN"
        " (SELECT min(id) FROM message GROUP BY run_id, client_id, channel)"
        " AND client_id IS NOT NULL"
    )
    with op.batch_alter_table("message") as batch:
        batch.create_unique_constraint(NAME, ["run_id", "client_id", "channel"])
