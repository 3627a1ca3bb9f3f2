"""A recipient says no: the client is opted out of one channel in one project.

The one place every opt-out goes through, whatever brought it — the unsubscribe link of an
email (GET page, RFC 8058 one-click POST, the mailto), or an SMS reply with a STOP word — so they
all do the same things, in one transaction:

1. every client of the project with that address (and the client the message went to) is
   opted out of the channel (``email_opted_out`` / ``sms_opted_out``) and its advertising
   consent for the channel becomes ``denied``, with the moment and the source;
2. the address goes on the project's suppression list, with the reason;
3. what is still queued for it in the project's channel is skipped, with the reason;
4. an ``unsubscribed`` event is written on the message that carried the request (or, without
   one, the latest message of the channel to the address), for the live stream and webhooks.

Idempotent: a second request changes nothing and writes no second event.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import Table, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from rassylka.clients.models import Client, Consent
from rassylka.mailings.models import Channel, Mailing
from rassylka.messages import queue
from rassylka.messages.models import UNSUBSCRIBED, Message
from rassylka.suppressions import repository as suppressions
from rassylka.suppressions.schemas import MAX_REASON, normalize_address

CLIENT = cast(Table, Client.__table__)
MESSAGE = cast(Table, Message.__table__)
MAILING = cast(Table, Mailing.__table__)
UNSUBSCRIBED_REASON = "Получатель отказался от рассылок по каналу"


@dataclass(frozen=True)
class OptedOut:
    project_id: int
    channel: Channel
    address: str
    """As the suppression list holds it."""
    client_ids: tuple[int, ...]
    """The clients opted out now (empty when all already were)."""
    message_id: int | None
    """The message the event was written on; None when no event was written."""
    changed: bool
    """False when the address was already suppressed and every client already opted out."""


def normalized(address: str) -> str:
    """The address as the suppression list and the opt-out match it."""
    try:
        return normalize_address(address.strip())
    except ValueError:  # stored before today's rules, or a phone in a provider's own format
        return address.strip().lower()


async def opt_out(
    session: AsyncSession,
    *,
    project_id: int,
    channel: Channel,
    address: str,
    source: str,
    now: datetime,
    message_id: int | None = None,
) -> OptedOut:
    """Opt ``address`` out of ``channel`` in the project (see the module's docstring).

    ``source`` says how (``«отписка по ссылке»``, ``«SMS СТОП»``…): it becomes the consent's
    source, the suppression's reason and the event's. ``message_id`` is the message whose link
    or reply it was; it must be of the project and the channel (the caller checked).
    Writes message events: the caller writes nothing after it in the transaction.
    """
    address = normalized(address)
    contact = CLIENT.c.email if channel == Channel.EMAIL else CLIENT.c.phone
    opted = CLIENT.c.email_opted_out if channel == Channel.EMAIL else CLIENT.c.sms_opted_out
    prefix = "email" if channel == Channel.EMAIL else "sms"
    whose = [func.lower(contact) == address]
    if message_id is not None:
        sent_to = select(MESSAGE.c.client_id).where(MESSAGE.c.id == message_id).scalar_subquery()
        whose.append(CLIENT.c.id == sent_to)
    result = await session.execute(
        update(CLIENT)
        .where(CLIENT.c.project_id == project_id, or_(*whose), opted.is_(False))
        .values(
            {
                opted: True,
                CLIENT.c[f"{prefix}_consent"]: Consent.DENIED.value,
                CLIENT.c[f"{prefix}_consent_at"]: now,
                CLIENT.c[f"{prefix}_consent_source"]: source[:255],
                CLIENT.c.updated_at: now,
            }
        )
        .returning(CLIENT.c.id)
    )
    client_ids = tuple(sorted(row[0] for row in result))
    existing = await suppressions.get_by_address(session, project_id=project_id, address=address)
    if existing is None:
        await suppressions.add_if_absent(
            session, project_id=project_id, address=address, reason=source[:MAX_REASON]
        )
    changed = bool(client_ids) or existing is None
    if not changed:
        return OptedOut(project_id, channel, address, (), None, False)
    reason = f"{UNSUBSCRIBED_REASON}: {source}"
    # Message updates first, then events (messages/queue.py): the queued ones to the address,
    # and to the clients opted out now (whose messages may carry an older address).
    await queue.skip_queued(
        session,
        project_id=project_id,
        address=address,
        or_clients=client_ids,
        channel=channel,
        reason=reason,
        now=now,
    )
    if message_id is None:
        message_id = await latest_message(
            session, project_id=project_id, channel=channel, address=address
        )
    if message_id is not None:
        await queue.log_note(
            session, message_id=message_id, status=UNSUBSCRIBED, reason=source, now=now
        )
    return OptedOut(project_id, channel, address, client_ids, message_id, True)


async def latest_message(
    session: AsyncSession, *, project_id: int, channel: Channel, address: str
) -> int | None:
    """The newest message of the project's ``channel`` to ``address`` (normalised), if any."""
    of_project = select(MAILING.c.id).where(MAILING.c.project_id == project_id)
    found: int | None = await session.scalar(
        select(func.max(MESSAGE.c.id)).where(
            MESSAGE.c.mailing_id.in_(of_project),
            MESSAGE.c.channel == channel,
            func.lower(MESSAGE.c.address) == address,
        )
    )
    return found
