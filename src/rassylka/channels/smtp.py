"""The email transport: MIME messages over a pool of persistent SMTP connections (aiosmtplib).

Each message is its own SMTP transaction (one MAIL FROM, one RCPT TO), so one recipient's
refusal is that message's outcome alone; up to ``pool_size`` transactions run at once, each on
a connection kept open and reused across messages and across ``send`` calls.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from aiosmtplib import (
    SMTP,
    SMTPException,
    SMTPHeloError,
    SMTPResponse,
    SMTPResponseException,
    SMTPServerDisconnected,
)

from rassylka.bounces.verp import Verp
from rassylka.channels.base import (
    Accepted,
    ChannelError,
    ChannelKind,
    OutboundMessage,
    Outcome,
    PermanentChannelError,
    TransientChannelError,
    send_each,
)
from rassylka.channels.email_message import ComposedEmail, compose, parse_sender

if TYPE_CHECKING:
    from rassylka.config import Settings

TlsMode = Literal["none", "starttls", "tls"]

# QUIT is a courtesy; a server that does not answer quickly must not hold up shutdown.
_QUIT_TIMEOUT = 2.0
_SERVICE_CLOSING = 421


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int = 25
    username: str | None = None
    password: str | None = None
    tls: TlsMode = "none"
    pool_size: int = 4
    timeout: float = 30.0
    sender: str = "Rassylka <rassylka@localhost>"
    """The From header; its address is also the envelope sender (where bounces go)..."""
    verp: Verp | None = None
    """...unless bounces are taken in: then each message's own signed VERP address is."""

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpConfig:
        if not settings.smtp_host:
            raise ValueError("RASSYLKA_SMTP_HOST is not set")
        return cls(
            host=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username,
            password=settings.smtp_password,
            tls=settings.smtp_tls,
            pool_size=settings.smtp_pool_size,
            timeout=settings.smtp_timeout,
            sender=settings.email_from,
            verp=Verp.from_settings(settings),
        )


class _StaleConnection(Exception):
    """A reused connection turned out closed before the server took anything."""


class SmtpChannel:
    """The ``Channel`` for email; ``tls_context`` replaces the system's trust store."""

    kind = ChannelKind.EMAIL

    def __init__(self, config: SmtpConfig, *, tls_context: ssl.SSLContext | None = None) -> None:
        if config.pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self._config = config
        sender = parse_sender(config.sender)
        self._sender = sender.addr_spec
        self._sender_utf8 = not self._sender.isascii()
        self._from_header = sender
        self._clients = [self._new_client(tls_context) for _ in range(config.pool_size)]
        # LIFO: the connection just used is the next one taken, so a trickle of messages keeps
        # reusing one open connection instead of opening all ``pool_size`` of them.
        self._idle: asyncio.LifoQueue[SMTP] = asyncio.LifoQueue()
        for client in self._clients:
            self._idle.put_nowait(client)

    def _new_client(self, tls_context: ssl.SSLContext | None) -> SMTP:
        config = self._config
        return SMTP(
            hostname=config.host,
            port=config.port,
            username=config.username or None,
            password=config.password if config.username else None,
            timeout=config.timeout,
            use_tls=config.tls == "tls",
            # False, not None, for "none": aiosmtplib's default upgrades opportunistically,
            # which fails outright against a server with a certificate we cannot verify.
            start_tls=config.tls == "starttls",
            tls_context=tls_context,
        )

    async def send(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
        return await send_each(messages, self._send_one, name="smtp")

    async def close(self) -> None:
        """QUIT and close every pooled connection; a later ``send`` would reconnect."""
        async with asyncio.TaskGroup() as group:
            for client in self._clients:
                if client.is_connected:
                    group.create_task(self._quit(client), name="smtp-quit")

    async def _quit(self, client: SMTP) -> None:
        try:
            await client.quit(timeout=min(_QUIT_TIMEOUT, self._config.timeout))
        except (SMTPException, OSError):
            pass  # the server has gone already; only our socket is left to release
        finally:
            client.close()

    async def _send_one(self, message: OutboundMessage) -> Outcome:
        try:
            envelope = compose(message, sender=self._from_header)
        except ChannelError as error:
            return error
        verp = self._config.verp
        if verp is not None:
            envelope = replace(
                envelope, sender=verp.address(message.id), envelope_id=verp.token(message.id)
            )
        client = await self._idle.get()
        finished = False
        try:
            outcome = await self._deliver(client, envelope)
            finished = True
            return outcome
        finally:
            if not finished:
                # Cancelled mid-transaction: the server's view of this connection is unknown,
                # so it must not carry the next message.
                client.close()
            self._idle.put_nowait(client)

    async def _deliver(self, client: SMTP, envelope: ComposedEmail) -> Outcome:
        try:
            try:
                return await self._attempt(client, envelope)
            except _StaleConnection:
                # Closed by the server while idle (timeout, restart, 421): nothing was taken,
                # so the message goes once more on a fresh connection, which cannot be stale.
                client.close()
                return await self._attempt(client, envelope)
        except ChannelError as error:
            return error
        except SMTPResponseException as error:
            if not 400 <= error.code < 600:
                client.close()  # a garbled reply: we may be out of step with the server
            return _failure(error)
        except (SMTPException, OSError, ValueError) as error:
            # Whatever the connection was in the middle of, it is not worth trusting.
            client.close()
            return _failure(error)

    async def _attempt(self, client: SMTP, envelope: ComposedEmail) -> Accepted:
        reused = client.is_connected
        if not reused:
            await self._open(client)
        try:
            await _greet(client)
            utf8 = envelope.utf8 or self._sender_utf8
            if utf8 and not client.supports_extension("smtputf8"):
                raise PermanentChannelError(
                    f"{envelope.recipient} needs SMTPUTF8, which the server does not offer"
                )
            eight_bit = client.supports_extension("8bitmime")
            data = envelope.as_bytes(eight_bit=eight_bit)
            options = []
            if client.supports_extension("size"):
                options.append(f"SIZE={len(data)}")
            if eight_bit:
                options.append("BODY=8BITMIME")
            if utf8:
                options.append("SMTPUTF8")
            if envelope.envelope_id and client.supports_extension("dsn"):
                # Headers only come back in a bounce: the token is all that is needed.
                options += [f"ENVID={envelope.envelope_id}", "RET=HDRS"]
            encoding = "utf-8" if utf8 else "ascii"
            await client.mail(envelope.sender, options=options, encoding=encoding)
        except SMTPServerDisconnected as error:
            if reused:
                raise _StaleConnection from error
            raise
        except SMTPResponseException as error:
            if reused and error.code == _SERVICE_CLOSING:
                raise _StaleConnection from error
            await _reset(client)
            raise
        try:
            await client.rcpt(envelope.recipient, encoding=encoding)
            response = await client.data(data)
        except SMTPResponseException:
            await _reset(client)
            raise
        return Accepted(peer_message_id=envelope.message_id, reply=_reply(response))

    async def _open(self, client: SMTP) -> None:
        """Connect, greet, STARTTLS and AUTH. A refusal here (554 at the greeting, 535 bad
        credentials) is about us or the server, not this message: temporary, so the message
        waits and the mailing's error budget, not each message, decides when to stop."""
        try:
            await client.connect()
        except SMTPResponseException as error:
            client.close()
            raise TransientChannelError(
                f"{error.code} {_text(error.message)}", code=error.code
            ) from error


async def _greet(client: SMTP) -> None:
    """EHLO unless connect() already did (it does for STARTTLS and AUTH); HELO if refused."""
    if not client.is_ehlo_or_helo_needed:
        return
    try:
        await client.ehlo()
    except SMTPHeloError:
        if not client.is_connected:
            raise
        await client.helo()


async def _reset(client: SMTP) -> None:
    """End a refused transaction so the connection can carry the next message."""
    if not client.is_connected:
        return
    try:
        await client.rset()
    except (SMTPException, OSError):
        client.close()


def _text(message: str) -> str:
    """A server's reply text as storable text: aiosmtplib decodes replies as UTF-8 with
    surrogate escapes, so a reply in another charset (CP1251 from an old Russian server)
    arrives with lone surrogates, which no database accepts."""
    if message.isascii():
        return message
    raw = message.encode("utf-8", "surrogateescape")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1251", "replace")


def _reply(response: SMTPResponse) -> str:
    return f"{response.code} {_text(response.message)}"


def _failure(error: Exception) -> ChannelError:
    """SMTP 4xx and network trouble are worth retrying; 5xx and misconfiguration are not."""
    if isinstance(error, SMTPResponseException):
        reply = f"{error.code} {_text(error.message)}"
        if 500 <= error.code < 600:
            return PermanentChannelError(reply, code=error.code)
        # 4xx, and a garbled reply (code -1), which a later try on a new connection may not see.
        code = error.code if 400 <= error.code < 500 else None
        return TransientChannelError(reply, code=code)
    # Connection refused or reset, timeouts (TimeoutError is an OSError), TLS failures.
    if isinstance(error, OSError):
        return TransientChannelError(str(error) or type(error).__name__)
    # SMTPNotSupported, AUTH or STARTTLS not offered, an address aiosmtplib rejects: retrying
    # the same message against the same server cannot change the answer.
    return PermanentChannelError(str(error) or type(error).__name__)
