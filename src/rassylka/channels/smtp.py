"""The email transport: MIME messages over a pool of persistent SMTP connections.

Each message is its own SMTP transaction (one MAIL FROM, one RCPT TO), so one recipient's
refusal is that message's outcome alone; up to ``pool_size`` transactions run at once, each on
a connection kept open and reused across messages and across ``send`` calls. The protocol is
``smtp_client.py``: MAIL, RCPT and DATA go in one write where the server offers PIPELINING.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from rassylka.bounces.verp import Verp
from rassylka.channels import dkim
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
from rassylka.channels.email_message import ComposedEmail, MessageIds, Senders, compose
from rassylka.channels.smtp_client import (
    ClientConfig,
    Reply,
    SmtpClient,
    SmtpError,
    SmtpNotSupported,
    SmtpRefused,
    SmtpStale,
    TlsMode,
    Transaction,
)

if TYPE_CHECKING:
    from rassylka.config import Settings

# A batch's messages go in runs of at least this many on one connection, one round trip each.
PIPELINE_DEPTH = 8
# QUIT is a courtesy; a server that does not answer quickly must not hold up shutdown.
_QUIT_TIMEOUT = 2.0


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
    """The From header of a project without its own; its address (the project's when it has
    one) is also the envelope sender (where bounces go)..."""
    verp: Verp | None = None
    """...unless bounces are taken in: then each message's own signed VERP address is."""
    reply_to: str | None = None
    """The Reply-To header, if any."""
    message_ids: MessageIds | None = None
    """How Message-IDs are made (keyed with ``RASSYLKA_SECRET_KEY``); None: this process's."""

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpConfig:
        if not settings.smtp_host:
            raise ValueError("RASSYLKA_SMTP_HOST is not set")
        return cls(
            host=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username,
            password=(
                settings.smtp_password.get_secret_value() if settings.smtp_password else None
            ),
            tls=settings.smtp_tls,
            pool_size=settings.smtp_pool_size,
            timeout=settings.smtp_timeout,
            sender=settings.email_from,
            verp=Verp.from_settings(settings),
            reply_to=settings.email_reply_to,
            message_ids=MessageIds.keyed(
                settings.secret_key.get_secret_value() if settings.secret_key else None
            ),
        )


class SmtpChannel:
    """The ``Channel`` for email; ``tls_context`` replaces the system's trust store."""

    kind = ChannelKind.EMAIL
    send_batch = PIPELINE_DEPTH

    def __init__(self, config: SmtpConfig, *, tls_context: ssl.SSLContext | None = None) -> None:
        if config.pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self._config = config
        # The From (and Reply-To) of each message: its project's, else the channel's.
        self._senders = Senders(
            config.sender, reply_to=config.reply_to, message_ids=config.message_ids
        )
        client_config = ClientConfig(
            host=config.host,
            port=config.port,
            tls=config.tls,
            username=config.username or None,
            password=config.password if config.username else None,
            timeout=config.timeout,
            tls_context=tls_context,
        )
        self._clients = [SmtpClient(client_config) for _ in range(config.pool_size)]
        self._idle = _FairPool(self._clients)

    async def send(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
        """Each message's outcome. One message is one transaction on a pooled connection; a
        batch goes in runs of at least ``PIPELINE_DEPTH``, each run on one connection
        (``SmtpClient.send_many``: one round trip per message), the runs side by side."""
        if len(messages) <= 1:
            return await send_each(messages, self._send_one, name="smtp")
        run = max(PIPELINE_DEPTH, -(-len(messages) // self._config.pool_size))
        runs = [messages[start : start + run] for start in range(0, len(messages), run)]
        if len(runs) == 1:
            return await self._send_run(runs[0])
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(self._send_run(part), name="smtp-run") for part in runs]
        return [outcome for task in tasks for outcome in task.result()]

    async def close(self) -> None:
        """QUIT and close every pooled connection; a later ``send`` would reconnect."""
        async with asyncio.TaskGroup() as group:
            for client in self._clients:
                if client.is_connected:
                    group.create_task(self._quit(client), name="smtp-quit")

    async def _quit(self, client: SmtpClient) -> None:
        try:
            async with asyncio.timeout(min(_QUIT_TIMEOUT, self._config.timeout)):
                await client.quit()
        except TimeoutError:
            pass  # quit() has closed the connection on its way out

    async def _send_one(self, message: OutboundMessage) -> Outcome:
        try:
            envelope = self._composed(message)
        except ChannelError as error:
            return error
        client = await self._idle.take()
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
            self._idle.give(client)

    def _composed(self, message: OutboundMessage) -> ComposedEmail:
        envelope = compose(message, sender=self._senders.of(message))
        verp = self._config.verp
        if verp is not None:
            envelope = replace(
                envelope, sender=verp.address(message.id), envelope_id=verp.token(message.id)
            )
        if message.dkim is not None:
            dkim.usable(message.dkim)  # a key that cannot be used fails the message here
            envelope = replace(envelope, dkim=message.dkim)
        return envelope

    async def _send_run(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(messages)
        todo: list[tuple[int, ComposedEmail]] = []
        for index, message in enumerate(messages):
            try:
                envelope = self._composed(message)
            except ChannelError as error:
                outcomes[index] = error
                continue
            todo.append((index, envelope))
        if todo:
            client = await self._idle.take()
            finished = False
            try:
                await self._deliver_run(client, todo, outcomes)
                finished = True
            finally:
                if not finished:
                    client.close()  # cancelled mid-run: see _send_one
                self._idle.give(client)
        return [
            outcome
            if outcome is not None
            else TransientChannelError("Connection lost before the server took the message")
            for outcome in outcomes
        ]

    async def _deliver_run(
        self,
        client: SmtpClient,
        todo: list[tuple[int, ComposedEmail]],
        outcomes: list[Outcome | None],
    ) -> None:
        """Send ``todo`` on ``client``, filling ``outcomes``; what the server never began (a
        stale connection, or the messages after one whose connection was lost) goes on a fresh
        connection, as long as each connection settles at least one message."""
        while todo:
            try:
                await self._open(client)
                transactions: list[tuple[int, ComposedEmail, Transaction]] = []
                for index, envelope in todo:
                    try:
                        transactions.append((index, envelope, self._transaction(client, envelope)))
                    except ChannelError as error:
                        outcomes[index] = error
                replies = await client.send_many([t for _, _, t in transactions])
            except SmtpStale:
                client.close()
                continue
            except ChannelError as error:
                for index, _ in todo:
                    outcomes[index] = error
                return
            except (SmtpError, OSError, ValueError) as error:
                client.close()
                for index, _ in todo:
                    outcomes[index] = outcomes[index] or _failure(error)
                return
            before, todo = len(todo), []
            for (index, envelope, _), reply in zip(transactions, replies, strict=True):
                if reply is None:
                    todo.append((index, envelope))
                elif isinstance(reply, Reply):
                    outcomes[index] = Accepted(
                        peer_message_id=envelope.message_id, reply=str(reply)
                    )
                else:
                    if isinstance(reply, SmtpRefused) and not 400 <= reply.reply.code < 600:
                        client.close()
                    outcomes[index] = _failure(reply)
            if not todo:
                return
            if len(todo) == before:
                return  # nothing settled: they are left to the caller as not taken
            client.close()

    async def _deliver(self, client: SmtpClient, envelope: ComposedEmail) -> Outcome:
        try:
            try:
                return await self._attempt(client, envelope)
            except SmtpStale:
                # Closed by the server while idle (timeout, restart, 421): nothing was taken,
                # so the message goes once more on a fresh connection, which cannot be stale.
                client.close()
                return await self._attempt(client, envelope)
        except ChannelError as error:
            return error
        except SmtpRefused as error:
            if not 400 <= error.reply.code < 600:
                client.close()  # an unexpected reply: we may be out of step with the server
            return _failure(error)
        except (SmtpError, OSError, ValueError) as error:
            # Whatever the connection was in the middle of, it is not worth trusting.
            client.close()
            return _failure(error)

    async def _attempt(self, client: SmtpClient, envelope: ComposedEmail) -> Accepted:
        await self._open(client)
        transaction = self._transaction(client, envelope)
        reply = await client.send(
            transaction.sender,
            transaction.recipient,
            transaction.data,
            options=transaction.options,
            utf8=transaction.utf8,
        )
        return Accepted(peer_message_id=envelope.message_id, reply=str(reply))

    def _transaction(self, client: SmtpClient, envelope: ComposedEmail) -> Transaction:
        """The SMTP transaction of ``envelope`` on ``client`` (connected: its extensions say
        how the message is written and which MAIL parameters go with it)."""
        for address in (envelope.sender, envelope.recipient):
            if "\r" in address or "\n" in address:
                raise PermanentChannelError(f"a line break in the address {address!r}")
        utf8 = envelope.utf8  # the recipient's, From's or Reply-To's local part
        if utf8 and not client.supports("SMTPUTF8"):
            raise PermanentChannelError(
                f"{envelope.recipient} needs SMTPUTF8, which the server does not offer"
            )
        eight_bit = client.supports("8BITMIME")
        data = envelope.as_bytes(eight_bit=eight_bit)
        if envelope.dkim is not None:
            data = dkim.sign(data, envelope.dkim)  # the exact bytes sent, 8BITMIME or not
        options = []
        if client.supports("SIZE"):
            options.append(f"SIZE={len(data)}")
        if eight_bit:
            options.append("BODY=8BITMIME")
        if utf8:
            options.append("SMTPUTF8")
        if envelope.envelope_id and client.supports("DSN"):
            # Headers only come back in a bounce: the token is all that is needed.
            options += [f"ENVID={envelope.envelope_id}", "RET=HDRS"]
        return Transaction(envelope.sender, envelope.recipient, data, " ".join(options), utf8)

    async def _open(self, client: SmtpClient) -> None:
        """Connect, greet, STARTTLS and AUTH, unless connected. A refusal here (554 at the
        greeting, 535 bad credentials) is about us or the server, not this message: temporary,
        so the message waits and the mailing's error budget, not each message, decides when to
        stop."""
        try:
            await client.ensure_connected()
        except SmtpRefused as error:
            raise TransientChannelError(str(error.reply), code=error.reply.code) from error


def _failure(error: Exception) -> ChannelError:
    """SMTP 4xx and network trouble are worth retrying; 5xx and misconfiguration are not."""
    if isinstance(error, SmtpRefused):
        reply = error.reply
        if 500 <= reply.code < 600:
            return PermanentChannelError(str(reply), code=reply.code)
        # 4xx, and an unexpected reply, which a later try on a new connection may not see.
        code = reply.code if 400 <= reply.code < 500 else None
        return TransientChannelError(str(reply), code=code)
    # Connection refused or lost, timeouts (TimeoutError is an OSError), TLS failures, and a
    # garbled reply, which a later try on a new connection may not see.
    if isinstance(error, OSError | SmtpError) and not isinstance(error, SmtpNotSupported):
        return TransientChannelError(str(error) or type(error).__name__)
    # STARTTLS or AUTH not offered, an address that cannot be sent: retrying the same message
    # against the same server cannot change the answer.
    return PermanentChannelError(str(error) or type(error).__name__)


class _FairPool:
    """The idle connections, handed to the senders waiting for one in the order they came.

    LIFO: the connection just used is the next one taken, so a trickle of messages keeps
    reusing one open connection instead of opening all of them. Fair: a connection given back
    goes straight to the longest waiter. (``asyncio.Queue`` lets a sender that gives a
    connection back take it again at once, ahead of the waiters, which then wait for ever: with
    more senders than connections — the default, 16 and 4 — some senders' messages stayed
    claimed until their lease ran out, and were then sent twice.)"""

    def __init__(self, clients: Sequence[SmtpClient]) -> None:
        self._idle = list(reversed(clients))
        self._waiters: deque[asyncio.Future[SmtpClient]] = deque()

    async def take(self) -> SmtpClient:
        if self._idle and not self._waiters:
            return self._idle.pop()
        waiter: asyncio.Future[SmtpClient] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give(waiter.result())  # handed over as the taker was cancelled
            raise

    def give(self, client: SmtpClient) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(client)
                return
        self._idle.append(client)
