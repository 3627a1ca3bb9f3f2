"""Every query on the project table."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from rassylka.projects.models import Project


async def get(session: AsyncSession, project_id: int) -> Project | None:
    return await session.get(Project, project_id)


async def get_by_code(session: AsyncSession, code: str) -> Project | None:
    result = await session.execute(select(Project).where(Project.code == code))
    return result.scalar_one_or_none()


async def page(
    session: AsyncSession, *, project_id: int | None, limit: int, offset: int
) -> tuple[Sequence[Project], int]:
    query = select(Project)
    if project_id is not None:
        query = query.where(Project.id == project_id)
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    rows = await session.scalars(query.order_by(Project.id).limit(limit).offset(offset))
    return rows.all(), total or 0


async def add(session: AsyncSession, project: Project) -> Project:
    session.add(project)
    await session.flush()
    return project


async def delete(session: AsyncSession, project: Project) -> None:
    await session.delete(project)
    await session.flush()


async def sms_senders(session: AsyncSession) -> list[tuple[int, str | None]]:
    """Every project's id and own SMS sender (None: it sends as the configured one)."""
    rows = await session.execute(select(Project.id, Project.sms_sender).order_by(Project.id))
    return [(project_id, sender) for project_id, sender in rows]
