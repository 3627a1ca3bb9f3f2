"""Every query on the template table."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from rassylka.templates.models import Template


async def get(session: AsyncSession, template_id: int) -> Template | None:
    return await session.get(Template, template_id)


async def page(
    session: AsyncSession, *, project_id: int | None, limit: int, offset: int
) -> tuple[Sequence[Template], int]:
    query = select(Template)
    if project_id is not None:
        query = query.where(Template.project_id == project_id)
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    rows = await session.scalars(query.order_by(Template.id).limit(limit).offset(offset))
    return rows.all(), total or 0


async def add(session: AsyncSession, template: Template) -> Template:
    session.add(template)
    await session.flush()
    return template


async def delete(session: AsyncSession, template: Template) -> None:
    await session.delete(template)
    await session.flush()
