"""Every query on the mailing table."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from rassylka.mailings.models import Mailing


async def get(session: AsyncSession, mailing_id: int) -> Mailing | None:
    return await session.get(Mailing, mailing_id)


async def page(
    session: AsyncSession,
    *,
    project_id: int | None,
    status: int | None,
    limit: int,
    offset: int,
) -> tuple[Sequence[Mailing], int]:
    query = select(Mailing)
    if project_id is not None:
        query = query.where(Mailing.project_id == project_id)
    if status is not None:
        query = query.where(Mailing.status == status)
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    rows = await session.scalars(query.order_by(Mailing.id).limit(limit).offset(offset))
    return rows.all(), total or 0


async def ids_using_template(session: AsyncSession, *, template_id: int) -> list[int]:
    rows = await session.scalars(
        select(Mailing.id).where(Mailing.template_id == template_id).order_by(Mailing.id)
    )
    return list(rows.all())


async def add(session: AsyncSession, mailing: Mailing) -> Mailing:
    session.add(mailing)
    await session.flush()
    return mailing


async def delete(session: AsyncSession, mailing: Mailing) -> None:
    await session.delete(mailing)
    await session.flush()
