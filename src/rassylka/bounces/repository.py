"""The queries of bounces: the message a bounce is about, with its project."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from rassylka.mailings.models import Channel, Mailing
from rassylka.messages.models import Message, MessageStatus


@dataclass(frozen=True)
class Target:
    id: int
    status: str
    address: str | None
    project_id: int
    channel: int


_TARGET = select(
    Message.id, Message.status, Message.address, Mailing.project_id, Message.channel
).join(Mailing, Mailing.id == Message.mailing_id)


async def target(session: AsyncSession, *, message_id: int) -> Target | None:
    row = (await session.execute(_TARGET.where(Message.id == message_id))).one_or_none()
    return None if row is None else Target(*row)


async def latest_email_to(session: AsyncSession, *, project_id: int, address: str) -> int | None:
    """The project's latest email to ``address`` that is still ``sent`` (else its latest)."""
    query = (
        select(Message.id)
        .join(Mailing, Mailing.id == Message.mailing_id)
        .where(
            Mailing.project_id == project_id,
            Message.channel == Channel.EMAIL,
            func.lower(Message.address) == address.lower(),
        )
        .order_by(case((Message.status == MessageStatus.SENT, 0), else_=1), Message.id.desc())
        .limit(1)
    )
    return await session.scalar(query)
