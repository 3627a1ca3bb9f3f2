"""Every query on runs and messages; materialising is set-wise, an INSERT … SELECT per channel."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import cast

from sqlalchemy import Integer, SmallInteger, String, Table, and_, case, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from rassylka.clients.models import Client
from rassylka.db import UTCDateTime
from rassylka.mailings.models import Channel, Mailing, MailingStatus
from rassylka.messages.models import Message, MessageStatus, Run

MESSAGE = cast(Table, Message.__table__)
RUN = cast(Table, Run.__table__)
NO_CONTACT = {
    Channel.EMAIL: "У клиента нет email",
    Channel.SMS: "У клиента нет телефона",
}


def _insert(session: AsyncSession, table: Table) -> postgresql.Insert | sqlite.Insert:
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


async def due_mailings(session: AsyncSession, *, now: datetime) -> Sequence[Mailing]:
    """Active mailings whose moment has come and that have no run for it yet."""
    started = select(Run.id).where(
        and_(Run.mailing_id == Mailing.id, Run.scheduled_at == Mailing.event_at)
    )
    rows = await session.scalars(
        select(Mailing)
        .where(
            Mailing.status == MailingStatus.ACTIVE,
            Mailing.event_at <= now,
            ~started.exists(),
        )
        .order_by(Mailing.event_at, Mailing.id)
    )
    return rows.all()


async def create_run(
    session: AsyncSession, *, mailing_id: int, scheduled_at: datetime, now: datetime
) -> int | None:
    """A new run's id, or None when this occurrence already has one (another worker won)."""
    statement = (
        _insert(session, RUN)
        .values(
            mailing_id=mailing_id,
            scheduled_at=scheduled_at,
            status="running",
            started_at=now,
        )
        .on_conflict_do_nothing(index_elements=[RUN.c.mailing_id, RUN.c.scheduled_at])
        .returning(RUN.c.id)
    )
    run_id: int | None = (await session.execute(statement)).scalar_one_or_none()
    return run_id


async def materialize(
    session: AsyncSession,
    *,
    run_id: int,
    mailing_id: int,
    project_id: int,
    channels: Sequence[int],
    now: datetime,
) -> None:
    """One message per client of the project per channel, inside the database.

    A client without the channel's contact gets a ``skipped`` message with the reason, so the
    mailing's statistics account for every client. Re-running adds nothing (unique run,
    client, channel), so a crash between two channels is mended by running it again.
    """
    moment = literal(now, UTCDateTime)
    for channel in channels:
        address = Client.email if channel == Channel.EMAIL else Client.phone
        missing = address.is_(None)
        rows = select(
            literal(run_id, Integer),
            literal(mailing_id, Integer),
            Client.id,
            literal(channel, SmallInteger),
            address,
            case(
                (missing, literal(MessageStatus.SKIPPED.value, String)),
                else_=MessageStatus.QUEUED.value,
            ),
            case((missing, literal(NO_CONTACT[Channel(channel)], String)), else_=None),
            literal(0, Integer),
            case((missing, None), else_=moment),
            moment,
            moment,
        ).where(Client.project_id == project_id)
        columns = [
            "run_id",
            "mailing_id",
            "client_id",
            "channel",
            "address",
            "status",
            "reason",
            "attempts",
            "next_attempt_at",
            "created_at",
            "updated_at",
        ]
        statement = (
            _insert(session, MESSAGE)
            .from_select(columns, rows)
            .on_conflict_do_nothing(
                index_elements=[MESSAGE.c.run_id, MESSAGE.c.client_id, MESSAGE.c.channel]
            )
        )
        await session.execute(statement)
