"""The channel interface the dispatcher uses, the outbound envelope, and the transport errors.

    ChannelError                 a message could not be handed to the peer
    ├── TransientChannelError    worth retrying later (SMTP 4xx, timeouts, connection lost,
    │                            SMPP throttling); the message goes back to the queue
    └── PermanentChannelError    retrying cannot help (SMTP 5xx, SMPP invalid destination);
                                 the message fails with the peer's reply kept

Transports take a batch and answer per message, so a bulk path (SMTP pipelining, an SMPP
window) fits behind the same call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from rassylka.channels.dkim import DkimKey
    from rassylka.channels.email_message import MessageIds


class ChannelKind(StrEnum):
    EMAIL = "email"
    SMS = "sms"


@dataclass(frozen=True)
class OutboundMessage:
    """One rendered message to one recipient; ``id`` is the message row's id."""

    id: int
    kind: ChannelKind
    to: str
    text: str
    subject: str | None = None
    html: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    dkim: DkimKey | None = None
    """Sign the email with this key (its project's), or send it unsigned."""
    source: str | None = None
    """An SMS's sender (its project's ``sms_sender``); None: the transport's configured one."""
    sender: str | None = None
    """The email's From (its project's); None: the channel's own (``RASSYLKA_EMAIL_FROM``)."""
    reply_to: str | None = None
    """The email's Reply-To (its project's); None: the channel's own, if any."""
    message_ids: MessageIds | None = None
    """How its Message-ID is made (the installation's stored key, when no
    ``RASSYLKA_SECRET_KEY`` keys the channel's); None: the channel's own."""
    unsubscribe: tuple[str, ...] = ()
    """The email's ``List-Unsubscribe`` URIs (the https link, then a mailto), RFC 2369/8058."""


@dataclass(frozen=True)
class Accepted:
    """The peer took the message: its own id for it (for receipts) and its reply."""

    peer_message_id: str | None
    reply: str
    parts: int = 1
    part_ids: tuple[str, ...] = ()
    """The peer's id of every part of a concatenated SMS (receipts arrive per part);
    ``peer_message_id`` is the first of them."""


@dataclass(frozen=True)
class DeliveryReport:
    """What a peer reported later of one message (one part of a long SMS): the peer's id of
    it, its state as SMPP spells it (``DELIVRD``, ``UNDELIV``, ``EXPIRED``, ``REJECTD``,
    ``DELETED``, ``ENROUTE``, ``ACCEPTD``, ``UNKNOWN``) and the peer's error code, if any."""

    peer_message_id: str
    state: str
    error: str | None = None


class ChannelError(Exception):
    def __init__(self, reply: str, *, code: int | None = None) -> None:
        super().__init__(reply)
        self.reply = reply
        self.code = code


class TransientChannelError(ChannelError):
    pass


class PermanentChannelError(ChannelError):
    pass


Outcome = Accepted | ChannelError


class Channel(Protocol):
    """A transport. One that gains from being handed several messages at once says how many
    in a ``send_batch`` attribute (``SmtpChannel``: a run on one connection, one round trip
    each); the dispatcher's senders then take up to that many at a time, else one."""

    kind: ChannelKind

    async def send(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
        """Hand ``messages`` to the peer; one outcome per message, in the same order.

        Raises nothing for a message's own failure (that is its outcome); cancellation
        propagates.
        """
        ...

    async def close(self) -> None:
        """Release connections; in-flight sends have finished or been cancelled."""
        ...


async def send_each(
    messages: Sequence[OutboundMessage],
    send_one: Callable[[OutboundMessage], Coroutine[Any, Any, Outcome]],
    *,
    name: str,
) -> list[Outcome]:
    """Send every message at once, one task each; outcomes in the messages' order."""
    if len(messages) == 1:
        # The dispatcher's senders mostly hand over one message at a time: no task group.
        return [await send_one(messages[0])]
    async with asyncio.TaskGroup() as group:
        tasks: list[asyncio.Task[Outcome]] = [
            group.create_task(send_one(message), name=f"{name}-send-{message.id}")
            for message in messages
        ]
    return [task.result() for task in tasks]
