"""Every query on the mailing table."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from rassylka.mailings.models import Mailing, MailingStatus


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


async def due_ids(session: AsyncSession, *, now: datetime) -> list[int]:
    """Active mailings with an occurrence due (``next_run_at`` has come), oldest first."""
    rows = await session.scalars(
        select(Mailing.id)
        .where(Mailing.status == MailingStatus.ACTIVE, Mailing.next_run_at <= now)
        .order_by(Mailing.next_run_at, Mailing.id)
    )
    return list(rows)


async def lock_due(session: AsyncSession, mailing_id: int, *, now: datetime) -> Mailing | None:
    """The mailing, locked for this transaction, if it is still due; None if another worker
    holds or has just advanced it (PostgreSQL: SKIP LOCKED; SQLite: the one writer)."""
    query = select(Mailing).where(
        Mailing.id == mailing_id,
        Mailing.status == MailingStatus.ACTIVE,
        Mailing.next_run_at <= now,
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    mailing: Mailing | None = (await session.scalars(query)).one_or_none()
    return mailing


async def next_due(session: AsyncSession, *, now: datetime) -> datetime | None:
    """The next moment the scheduler has something to do: a run due or an end reached."""
    run = await session.scalar(
        select(func.min(Mailing.next_run_at)).where(Mailing.status == MailingStatus.ACTIVE)
    )
    end = await session.scalar(
        select(func.min(Mailing.ends_at)).where(
            Mailing.status.in_([MailingStatus.ACTIVE, MailingStatus.PAUSED]),
            Mailing.ends_at > now,
        )
    )
    moments = [moment for moment in (run, end) if moment is not None]
    return min(moments) if moments else None


async def end_past(session: AsyncSession, *, now: datetime) -> list[int]:
    """Mailings whose ``ends_at`` has passed are over: completed, no next run."""
    rows = await session.execute(
        update(Mailing)
        .where(
            Mailing.status.in_([MailingStatus.ACTIVE, MailingStatus.PAUSED]),
            Mailing.ends_at <= now,
        )
        .values(status=MailingStatus.COMPLETED, next_run_at=None, updated_at=now)
        .returning(Mailing.id)
    )
    return [row[0] for row in rows]
