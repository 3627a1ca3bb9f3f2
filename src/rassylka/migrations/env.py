"""Alembic environment: runs on the connection it is handed, or opens one from the settings."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

import rassylka.models  # noqa: F401  (every table onto the metadata)
from rassylka.config import get_settings
from rassylka.db import create_engine, metadata

config = context.config


def _migrate(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=True,  # SQLite can't ALTER most things; batch mode rebuilds the table
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _migrate_url(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_migrate)
    finally:
        await engine.dispose()


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or get_settings().database_url


if context.is_offline_mode():
    context.configure(
        url=_url(), target_metadata=metadata, literal_binds=True, render_as_batch=True
    )
    with context.begin_transaction():
        context.run_migrations()
elif (connection := config.attributes.get("connection")) is not None:
    _migrate(connection)
else:
    asyncio.run(_migrate_url(_url()))
