"""Every query on the client table, the bulk upsert of imports among them."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, cast

from sqlalchemy import Table, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from rassylka.clients.models import Client
from rassylka.db import utcnow

CLIENT_TABLE = cast(Table, Client.__table__)
UPSERT_COLUMNS = (
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
)


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


async def add(session: AsyncSession, client: Client) -> Client:
    session.add(client)
    await session.flush()
    return client


async def delete(session: AsyncSession, client: Client) -> None:
    await session.delete(client)
    await session.flush()


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
