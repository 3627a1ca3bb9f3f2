"""Every query on the client table, the bulk upsert of imports among them."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from functools import cache
from typing import Any, cast

from sqlalchemy import Table, bindparam, case, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.sql.dml import Insert

from rassylka.clients.models import Client
from rassylka.db import utcnow
from rassylka.projects.models import Project

CLIENT_TABLE = cast(Table, Client.__table__)
PROJECT_TABLE = cast(Table, Project.__table__)
CREATE_COLUMNS = (
    "guid",
    "first_name",
    "last_name",
    "middle_name",
    "email",
    "phone",
    "timezone",
    "tags",
    "attributes",
    "opted_out",
    "phone_timezone",
    "created_at",
    "updated_at",
)
# What an import may change in a client that exists: all but its key and its timestamps
# (updated_at is set on its own).
UPSERT_COLUMNS = tuple(c for c in CREATE_COLUMNS if c not in ("guid", "created_at", "updated_at"))


async def get(session: AsyncSession, client_id: int) -> Client | None:
    return await session.get(Client, client_id)


async def get_by_guid(session: AsyncSession, *, project_id: int, guid: str) -> Client | None:
    result = await session.execute(
        select(Client).where(Client.project_id == project_id, Client.guid == guid)
    )
    return result.scalar_one_or_none()


async def page(
    session: AsyncSession,
    *,
    project_id: int | None,
    guid: str | None,
    limit: int,
    offset: int,
) -> tuple[Sequence[Client], int]:
    query = select(Client)
    if project_id is not None:
        query = query.where(Client.project_id == project_id)
    if guid is not None:
        query = query.where(Client.guid == guid)
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    rows = await session.scalars(query.order_by(Client.id).limit(limit).offset(offset))
    return rows.all(), total or 0


async def insert_new(
    connection: AsyncConnection,
    *,
    project_code: str | None,
    project_id: int | None,
    fields: Mapping[str, Any],
) -> Mapping[str, Any] | None:
    """Insert a client into the project of that code (else of that id), in one statement.

    The stored row, or None when there is no such project or its guid is taken (the caller
    tells which: that costs queries only when the request fails). ``fields``: every column of
    ``CREATE_COLUMNS`` but the timestamps.
    """
    now = utcnow()
    params = {**fields, "created_at": now, "updated_at": now}
    params["project_code"], params["project_id"] = project_code, project_id
    result = await connection.execute(_insert_new(connection.dialect.name), params)
    row = result.mappings().first()
    return None if row is None else dict(row)


@cache
def _insert_new(dialect: str) -> Insert:
    """``INSERT … SELECT`` from the project row, ``ON CONFLICT DO NOTHING`` and ``RETURNING``:
    built once, so SQLAlchemy compiles it once and the driver prepares it once a connection."""
    code = bindparam("project_code", type_=PROJECT_TABLE.c.code.type)
    source = (
        select(
            PROJECT_TABLE.c.id,
            *(bindparam(name, type_=CLIENT_TABLE.c[name].type) for name in CREATE_COLUMNS),
        )
        .where(
            or_(
                PROJECT_TABLE.c.code == code,
                PROJECT_TABLE.c.id == bindparam("project_id", type_=PROJECT_TABLE.c.id.type),
            )
        )
        .order_by(case((PROJECT_TABLE.c.code == code, 0), else_=1))  # a code before an id
        .limit(1)
    )
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return (
        insert(CLIENT_TABLE)
        .from_select(["project_id", *CREATE_COLUMNS], source)
        .on_conflict_do_nothing(index_elements=[CLIENT_TABLE.c.project_id, CLIENT_TABLE.c.guid])
        .returning(*CLIENT_TABLE.c)
    )


async def delete(session: AsyncSession, client: Client) -> None:
    await session.delete(client)
    await session.flush()


COPY_COLUMNS = (*UPSERT_COLUMNS, "guid", "batch")
"""The import's staging table (PostgreSQL): a client's columns and the batch of rows that
carry the same fields (they change the same columns of an existing client)."""


async def copy_upsert(
    session: AsyncSession,
    *,
    project_id: int,
    batches: Sequence[tuple[Collection[str], Sequence[Sequence[Any]]]],
) -> int:
    """PostgreSQL: ``COPY`` the rows into a temporary table, then one ``INSERT … SELECT … ON
    CONFLICT DO UPDATE`` a batch; the number of clients inserted.

    Each batch: the columns to update on an existing client, and its rows, each the values of
    ``COPY_COLUMNS`` but ``batch`` in that order, ``tags`` and ``attributes`` as JSON text (a
    guid at most once in all batches). Runs in the session's transaction; the table goes
    with it.
    """
    connection = await session.connection()
    raw = (await connection.get_raw_connection()).driver_connection
    assert raw is not None
    await raw.execute(
        "CREATE TEMPORARY TABLE client_import ("
        " first_name text, last_name text, middle_name text, email text, phone text,"
        " timezone text, tags text, attributes text, opted_out boolean, phone_timezone text,"
        " guid text, batch integer) ON COMMIT DROP"
    )
    await raw.copy_records_to_table(
        "client_import",
        columns=COPY_COLUMNS,
        records=((*row, number) for number, (_, rows) in enumerate(batches) for row in rows),
    )
    created = 0
    now = utcnow()
    for number, (update, _) in enumerate(batches):
        changed = [column for column in UPSERT_COLUMNS if column in update]
        assignments = ", ".join(f"{column} = excluded.{column}" for column in changed)
        created += await raw.fetchval(
            "WITH stored AS ("
            " INSERT INTO client (project_id, guid, first_name, last_name, middle_name, email,"
            "  phone, timezone, tags, attributes, opted_out, phone_timezone, created_at,"
            "  updated_at)"
            " SELECT $1::bigint, guid, first_name, last_name, middle_name, email, phone,"
            "  timezone, tags::json, attributes::json, opted_out, phone_timezone,"
            "  $2::timestamptz, $2::timestamptz"
            " FROM client_import WHERE batch = $3::integer"
            " ON CONFLICT (project_id, guid) DO UPDATE SET"
            f" {assignments + ', ' if assignments else ''}updated_at = excluded.updated_at"
            " RETURNING created_at)"
            " SELECT count(*) FROM stored WHERE created_at = $2::timestamptz",
            project_id,
            now,
            number,
        )
    await raw.execute("DROP TABLE client_import")
    return created


async def upsert_many(
    session: AsyncSession,
    *,
    project_id: int,
    rows: Sequence[dict[str, Any]],
    update: Collection[str],
) -> set[str]:
    """Insert ``rows`` (each a client's fields with its guid), or update the ``update`` columns
    of the clients that exist; returns the guids inserted.

    One statement for all rows (batched by the driver). ``rows`` must not repeat a guid: one
    statement may not touch a row twice. A row is new when its ``created_at`` comes back as
    the moment this call stamped: an update keeps the old ``created_at``.
    """
    if not rows:
        return set()
    now = utcnow()
    values = [
        {**row, "project_id": project_id, "created_at": now, "updated_at": now} for row in rows
    ]
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(CLIENT_TABLE)
    upsert = statement.on_conflict_do_update(
        index_elements=[CLIENT_TABLE.c.project_id, CLIENT_TABLE.c.guid],
        set_={
            **{column: statement.excluded[column] for column in UPSERT_COLUMNS if column in update},
            "updated_at": statement.excluded.updated_at,
        },
    ).returning(CLIENT_TABLE.c.guid, CLIENT_TABLE.c.created_at)
    result = await session.execute(upsert, values)
    return {guid for guid, created_at in result if created_at == now}
