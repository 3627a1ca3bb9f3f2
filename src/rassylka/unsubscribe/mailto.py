"""The ``List-Unsubscribe`` mailto: mail to ``unsubscribe+TOKEN@<bounce domain>``.

The bounce listener (bounces/listener.py) already receives mail for the bounce domain; it
hands RCPT addresses of this form here. Whatever the mail says, its arrival is the request
(RFC 2369: the subject and body are for people): the recipient of the message the token names
is opted out, as by the link.
"""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from rassylka.unsubscribe import service
from rassylka.unsubscribe.tokens import Unsubscribe

logger = logging.getLogger(__name__)


async def take(
    sessionmaker: async_sessionmaker[AsyncSession], unsubscribe: Unsubscribe, address: str
) -> bool:
    """Opt out the recipient of the message ``address`` names; False when it names none (not
    ours, forged, or the message is gone). Database errors propagate (the listener answers
    451, and the sender's MTA tries again)."""
    message_id = unsubscribe.message_id_of(address)
    if message_id is None:
        return False
    done = await service.unsubscribe(
        sessionmaker, message_id=message_id, source=service.SOURCE_MAILTO
    )
    if done is None:
        logger.info("unsubscribe mail for message %s ignored: no such message", message_id)
        return False
    opted = done[1]
    logger.info(
        "unsubscribe mail for message %s: %s", message_id, "done" if opted.changed else "already"
    )
    return True
