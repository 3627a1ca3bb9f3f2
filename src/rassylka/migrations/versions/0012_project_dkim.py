"""A project's DKIM signing: domain, selector and the path of its private key.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("project") as batch:
        batch.add_column(sa.Column("dkim_domain", sa.String(253), nullable=True))
        batch.add_column(sa.Column("dkim_selector", sa.String(63), nullable=True))
        batch.add_column(sa.Column("dkim_key_path", sa.String(1024), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("project") as batch:
        batch.drop_column("dkim_key_path")
        batch.drop_column("dkim_selector")
        batch.drop_column("dkim_domain")
