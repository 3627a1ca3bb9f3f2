"""Every query on the project table."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete as sql_delete
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from rassylka.mailings.models import Mailing
from rassylka.messages.models import MessageEvent
from rassylka.projects.models import Project


async def get(session: AsyncSession, project_id: int) -> Project | None:
    return await session.get(Project, project_id)


async def get_by_code(session: AsyncSession, code: str) -> Project | None:
    result = await session.execute(select(Project).where(Project.code == code))
    return result.scalar_one_or_none()


async def page(session: AsyncSession, *, limit: int, offset: int) -> tuple[Sequence[Project], int]:
    total = await session.scalar(select(func.count()).select_from(Project))
    rows = await session.scalars(select(Project).order_by(Project.id).limit(limit).offset(offset))
    return rows.all(), total or 0


async def add(session: AsyncSession, project: Project) -> Project:
    session.add(project)
    await session.flush()
    return project


async def delete(session: AsyncSession, project: Project) -> None:
    """The project and all it holds (by the database's cascades), and its mailings' events
    (which have no key to cascade by)."""
    mailings = select(Mailing.id).where(Mailing.project_id == project.id)
    await session.execute(sql_delete(MessageEvent).where(MessageEvent.mailing_id.in_(mailings)))
    await session.delete(project)
    await session.flush()
