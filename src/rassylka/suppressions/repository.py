"""Every query on the suppression table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from sqlalchemy import Table, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from rassylka.db import utcnow
from rassylka.suppressions.models import Suppression

SUPPRESSION_TABLE = cast(Table, Suppression.__table__)


async def get(session: AsyncSession, suppression_id: int) -> Suppression | None:
    return await session.get(Suppression, suppression_id)


async def get_by_address(
    session: AsyncSession, *, project_id: int, address: str
) -> Suppression | None:
    result = await session.execute(
        select(Suppression).where(
            Suppression.project_id == project_id, Suppression.address == address
        )
    )
    return result.scalar_one_or_none()


async def add_if_absent(
    session: AsyncSession, *, project_id: int, address: str, reason: str | None
) -> Suppression:
    """The project's suppression of ``address``: inserted now, or the one already there.

    ON CONFLICT DO NOTHING, so two requests suppressing one address at once both succeed.
    """
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = (
        insert(SUPPRESSION_TABLE)
        .values(project_id=project_id, address=address, reason=reason, created_at=utcnow())
        .on_conflict_do_nothing(
            index_elements=[SUPPRESSION_TABLE.c.project_id, SUPPRESSION_TABLE.c.address]
        )
    )
    await session.execute(statement)
    suppression = await get_by_address(session, project_id=project_id, address=address)
    assert suppression is not None  # inserted, or the conflicting row exists
    return suppression


async def page(
    session: AsyncSession,
    *,
    project_id: int | None,
    address: str | None,
    limit: int,
    offset: int,
) -> tuple[Sequence[Suppression], int]:
    query = select(Suppression)
    if project_id is not None:
        query = query.where(Suppression.project_id == project_id)
    if address is not None:
        query = query.where(Suppression.address == address)
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    rows = await session.scalars(query.order_by(Suppression.id).limit(limit).offset(offset))
    return rows.all(), total or 0


async def delete(session: AsyncSession, suppression: Suppression) -> None:
    await session.delete(suppression)
    await session.flush()
