"""Unsubscribing by a message's token: whose address it is, and the opt-out itself.

Every way in — the page's button, the RFC 8058 one-click POST, the mailto — ends in
``clients.optout.opt_out`` with the message the token names, so all of them do the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from rassylka.clients.optout import OptedOut, opt_out
from rassylka.db import utcnow
from rassylka.mailings.models import Channel, Mailing
from rassylka.messages.models import Message
from rassylka.projects.models import Project

SOURCE_PAGE = "отписка по ссылке"
SOURCE_ONE_CLICK = "отписка в один клик (List-Unsubscribe-Post)"
SOURCE_MAILTO = "отписка письмом (mailto)"


@dataclass(frozen=True)
class Target:
    """The message a token names and what its recipient would leave."""

    message_id: int
    project_id: int
    project_name: str
    channel: Channel
    address: str


async def target_of(session: AsyncSession, message_id: int) -> Target | None:
    """None when the message is gone (its mailing or project deleted) or had no address."""
    row = (
        await session.execute(
            select(Message.channel, Message.address, Project.id, Project.name)
            .join(Mailing, Mailing.id == Message.mailing_id)
            .join(Project, Project.id == Mailing.project_id)
            .where(Message.id == message_id)
        )
    ).one_or_none()
    if row is None or not row.address:
        return None
    return Target(message_id, row.id, row.name, Channel(row.channel), row.address)


async def unsubscribe(
    sessionmaker: async_sessionmaker[AsyncSession], *, message_id: int, source: str
) -> tuple[Target, OptedOut] | None:
    """Opt the recipient of the message out of its channel in its project (idempotent: a
    repeat changes nothing); None when there is no such message (see ``target_of``)."""
    async with sessionmaker() as session, session.begin():
        target = await target_of(session, message_id)
        if target is None:
            return None
        done = await opt_out(
            session,
            project_id=target.project_id,
            channel=target.channel,
            address=target.address,
            source=source,
            now=utcnow(),
            message_id=message_id,
        )
    return target, done


def masked(address: str) -> str:
    """The address as the page shows it, enough to recognise and not to harvest:
    ``iv***@example.ru``, ``+7916***67``."""
    local, at, domain = address.rpartition("@")
    if at:
        return f"{local[:2]}***@{domain}"
    if len(address) > 6:
        return f"{address[:5]}***{address[-2:]}"
    return "***"
