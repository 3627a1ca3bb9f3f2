"""The Alembic migrations shipped in the package, on both backends.

Each test starts from the fresh database of ``database_url`` (already upgraded to head) and walks
the schema down and up again, checking what the database really holds after every step.
"""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

import rassylka.models  # noqa: F401  (every table onto the metadata)
from rassylka import migrate
from rassylka.db import metadata

VERSION_TABLE = "alembic_version"
MODEL_TABLES = {
    "project",
    "client",
    "template",
    "mailing",
    "run",
    "message",
    "suppression",
    "message_event",
    "message_part",
    "receipt",
    "webhook",
    "webhook_delivery",
    "api_key",
    "idempotency_key",
    "installation_key",
}


# Revisions that change only PostgreSQL's schema (0010: ix_message_due partial).
POSTGRESQL_ONLY_REVISIONS = {"0010"}


def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(migrate.alembic_config())


def _revisions_oldest_first() -> list[str]:
    return [script.revision for script in reversed(list(_script().walk_revisions()))]


async def _tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        return set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))


def _schema_of(connection: Connection) -> dict[str, Any]:
    """Every table with its columns, indexes, unique and foreign keys, as the database has them."""
    inspector = inspect(connection)
    schema: dict[str, Any] = {}
    for table in sorted(inspector.get_table_names()):
        schema[table] = {
            "columns": sorted(
                (column["name"], str(column["type"]), column["nullable"])
                for column in inspector.get_columns(table)
            ),
            "indexes": sorted(
                (
                    index["name"] or "",
                    tuple(index["column_names"]),
                    # A partial index's condition (PostgreSQL), e.g. ix_message_due's.
                    str(index.get("dialect_options", {}).get("postgresql_where") or ""),
                )
                for index in inspector.get_indexes(table)
            ),
            "unique": sorted(
                tuple(unique["column_names"]) for unique in inspector.get_unique_constraints(table)
            ),
            "foreign_keys": sorted(
                (tuple(fk["constrained_columns"]), fk["referred_table"])
                for fk in inspector.get_foreign_keys(table)
            ),
        }
    return schema


async def _schema(engine: AsyncEngine) -> dict[str, Any]:
    async with engine.connect() as connection:
        return await connection.run_sync(_schema_of)


async def _current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        return await connection.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "target_metadata": metadata}
    )
    return list(compare_metadata(context, metadata))


async def _metadata_differences(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as connection:
        return await connection.run_sync(_differences)


def test_the_models_are_on_the_metadata() -> None:
    assert set(metadata.tables) == MODEL_TABLES


def test_there_is_one_head() -> None:
    heads = _script().get_heads()
    assert len(heads) == 1, heads
    assert _revisions_oldest_first()[-1] == heads[0]


async def test_fresh_database_is_at_head(engine: AsyncEngine) -> None:
    assert await _tables(engine) == MODEL_TABLES | {VERSION_TABLE}
    assert await _current_revision(engine) == _script().get_current_head()


async def test_downgrade_to_base_removes_every_table(engine: AsyncEngine) -> None:
    await migrate.downgrade(engine, "base")
    # Alembic keeps its (now empty) version table; nothing of ours may remain.
    assert await _tables(engine) <= {VERSION_TABLE}
    assert await _current_revision(engine) is None


async def test_upgrade_after_base_recreates_the_schema(engine: AsyncEngine) -> None:
    before = await _schema(engine)
    await migrate.downgrade(engine, "base")
    await migrate.upgrade(engine, "head")
    assert await _tables(engine) == MODEL_TABLES | {VERSION_TABLE}
    assert await _current_revision(engine) == _script().get_current_head()
    assert await _schema(engine) == before


async def test_models_match_the_migrated_schema(engine: AsyncEngine) -> None:
    assert await _metadata_differences(engine) == []


async def test_models_match_the_schema_after_down_and_up(engine: AsyncEngine) -> None:
    await migrate.downgrade(engine, "base")
    await migrate.upgrade(engine, "head")
    assert await _metadata_differences(engine) == []


async def test_migrations_are_reversible_step_by_step(engine: AsyncEngine) -> None:
    revisions = _revisions_oldest_first()
    assert revisions, "no migrations found"
    await migrate.downgrade(engine, "base")
    previous: str | None = None
    for revision in revisions:
        below = await _schema(engine)
        await migrate.upgrade(engine, revision)
        above = await _schema(engine)
        assert await _current_revision(engine) == revision
        if revision not in POSTGRESQL_ONLY_REVISIONS or engine.dialect.name == "postgresql":
            assert above != below, f"{revision} changes nothing"

        await migrate.downgrade(engine, "-1")
        assert await _current_revision(engine) == previous
        assert await _schema(engine) == below, f"downgrade of {revision} is not its inverse"

        await migrate.upgrade(engine, revision)
        assert await _current_revision(engine) == revision
        assert await _schema(engine) == above, f"{revision} upgrades differently the second time"
        previous = revision
    assert await _metadata_differences(engine) == []
