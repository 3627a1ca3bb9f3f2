"""No per-row foreign-key checks on the tables a run writes a million rows at a time: message
(run_id, mailing_id, client_id) and message_event (message_id, mailing_id). What their cascades
did on delete the services now do (messages.repository.forget_mailings / forget_client).

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

KEYS = {
    "message_event": [
        ("fk_message_event_message_id_message", "message", "message_id", "CASCADE"),
        ("fk_message_event_mailing_id_mailing", "mailing", "mailing_id", "CASCADE"),
    ],
    "message": [
        ("fk_message_run_id_run", "run", "run_id", "CASCADE"),
        ("fk_message_mailing_id_mailing", "mailing", "mailing_id", "CASCADE"),
        ("fk_message_client_id_client", "client", "client_id", "SET NULL"),
    ],
}


def upgrade() -> None:
    for table, keys in KEYS.items():
        with op.batch_alter_table(table) as batch:
            for name, _, _, _ in keys:
                batch.drop_constraint(name, type_="foreignkey")


def downgrade() -> None:
    # Rows whose parent is gone (no key kept them) would refuse the keys: settle them first.
    op.execute("DELETE FROM message_event WHERE message_id NOT IN (SELECT id FROM message)")
    op.execute("DELETE FROM message_event WHERE mailing_id NOT IN (SELECT id FROM mailing)")
    op.execute("DELETE FROM message WHERE run_id NOT IN (SELECT id FROM run)")
    op.execute("DELETE FROM message WHERE mailing_id NOT IN (SELECT id FROM mailing)")
    op.execute("UPDATE message SET client_id = NULL WHERE client_id NOT IN (SELECT id FROM client)")
    for table in ("message", "message_event"):
        with op.batch_alter_table(table) as batch:
            for name, parent, column, ondelete in KEYS[table]:
                batch.create_foreign_key(name, parent, [column], ["id"], ondelete=ondelete)
