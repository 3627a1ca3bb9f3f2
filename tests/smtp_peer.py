"""A real SMTP server (aiosmtpd) on 127.0.0.1 for engine tests, with verdicts by recipient.

The local part decides: ``later…`` gets 450 at RCPT, ``never…`` 550, ``once…`` 451 after its
first DATA (the message, refused, is kept in ``refused``) and is accepted after that; everything
else is accepted and recorded. ``delay`` slows every DATA (to catch sends in flight).
"""

from __future__ import annotations

import asyncio
import email
import socket
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SmtpServer
from aiosmtpd.smtp import Envelope, Session


@dataclass
class SmtpPeer:
    delay: float = 0.0
    received: list[EmailMessage] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    """Each message's bytes as DATA carried them (CRLF, dots unstuffed), in the same order."""
    refused: list[EmailMessage] = field(default_factory=list)
    """What a ``once…`` recipient's first DATA carried, refused with 451."""
    senders: list[str] = field(default_factory=list)
    """MAIL FROM of each message received, in the same order."""
    arrivals: list[float] = field(default_factory=list)
    rcpt_attempts: Counter[str] = field(default_factory=Counter)
    in_data: int = 0
    port: int = 0
    controller: Controller | None = None

    def start(self) -> SmtpPeer:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))  # 0 the first time: the kernel picks
        self.port = listener.getsockname()[1]
        self.controller = _BoundController(
            listener, self, hostname="127.0.0.1", port=self.port, server_hostname="localhost"
        )
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def recipients(self) -> Counter[str]:
        return Counter(str(message["To"]) for message in self.received)

    async def handle_RCPT(
        self,
        server: SmtpServer,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        self.rcpt_attempts[address] += 1
        if address.startswith("later"):
            return "450 4.2.1 Mailbox busy, try again later"
        if address.startswith("never"):
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SmtpServer, session: Session, envelope: Envelope) -> str:
        self.in_data += 1
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_data -= 1
        content = envelope.original_content
        assert content is not None
        message = email.message_from_bytes(content.replace(b"\r\n", b"\n"), policy=policy.default)
        once = [to for to in envelope.rcpt_tos if to.startswith("once")]
        if once and not any(str(refused["To"]) in once for refused in self.refused):
            self.refused.append(message)  # type: ignore[arg-type]
            return "451 4.3.0 Temporary failure, try again"
        self.received.append(message)  # type: ignore[arg-type]
        self.raw.append(content)
        self.senders.append(str(envelope.mail_from))
        self.arrivals.append(time.monotonic())
        return "250 2.0.0 Ok: queued"


class _BoundController(Controller):
    """Serves on a socket bound before the thread starts, so no other process can take the
    port between choosing it and listening on it."""

    def __init__(self, listener: socket.socket, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._listener = listener

    def _create_server(self) -> Awaitable[asyncio.AbstractServer]:
        return self.loop.create_server(self._factory_invoker, sock=self._listener)
