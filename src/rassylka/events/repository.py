"""The events a reader has not seen yet: after a cursor, of one mailing or one project."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from sqlalchemy import Table, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from rassylka.events.schemas import StatusEvent
from rassylka.mailings.models import Channel, Mailing
from rassylka.messages.models import MessageEvent

EVENT = cast(Table, MessageEvent.__table__)
MAILING = cast(Table, Mailing.__table__)
CHANNEL_NAMES = {int(Channel.EMAIL): "email", int(Channel.SMS): "sms"}


async def after(
    session: AsyncSession,
    *,
    cursor: int,
    limit: int,
    mailing_id: int | None = None,
    project_id: int | None = None,
    statuses: Sequence[str] | None = None,
) -> list[StatusEvent]:
    """Up to ``limit`` events with an id over ``cursor``, oldest first; of one mailing, of one
    project, or all; only those of ``statuses`` if given."""
    statement = (
        select(
            EVENT.c.id,
            EVENT.c.message_id,
            EVENT.c.mailing_id,
            EVENT.c.run_id,
            MAILING.c.project_id,
            EVENT.c.client_id,
            EVENT.c.client_guid,
            EVENT.c.channel,
            EVENT.c.old_status,
            EVENT.c.status,
            EVENT.c.reason,
            EVENT.c.peer_message_id,
            EVENT.c.created_at,
        )
        .join(MAILING, MAILING.c.id == EVENT.c.mailing_id)
        .where(EVENT.c.id > cursor)
        .order_by(EVENT.c.id)
        .limit(limit)
    )
    if mailing_id is not None:
        statement = statement.where(EVENT.c.mailing_id == mailing_id)
    if project_id is not None:
        statement = statement.where(MAILING.c.project_id == project_id)
    if statuses is not None:
        statement = statement.where(EVENT.c.status.in_(list(statuses)))
    rows = (await session.execute(statement)).mappings()
    return [
        StatusEvent.model_validate(
            {**row, "channel": CHANNEL_NAMES.get(row["channel"], str(row["channel"]))}
        )
        for row in rows
    ]


async def latest(
    session: AsyncSession, *, mailing_id: int, upto: int, limit: int
) -> list[StatusEvent]:
    """A mailing's newest ``limit`` events with an id up to ``upto``, newest first: what a page
    shows before its stream (which resumes after ``upto``) brings the rest."""
    rows = await session.execute(
        select(EVENT.c.id)
        .where(EVENT.c.mailing_id == mailing_id, EVENT.c.id <= upto)
        .order_by(EVENT.c.id.desc())
        .limit(limit)
    )
    ids = [int(row[0]) for row in rows]
    if not ids:
        return []
    found = await after(session, cursor=ids[-1] - 1, limit=len(ids), mailing_id=mailing_id)
    return [event for event in reversed(found) if event.id <= upto]


async def last_id(session: AsyncSession) -> int:
    """The newest event's id (0 when there is none): where a reader that wants only what
    happens from now on starts."""
    return int(await session.scalar(select(func.coalesce(func.max(EVENT.c.id), 0))) or 0)
