"""The inbound SMTP listener for bounces: aiosmtpd's SMTP protocol on the running event loop.

RCPT TO must be a signed VERP address of our bounce domain, ``fbl@`` it for feedback loops, or
a signed unsubscribe address (``unsubscribe+TOKEN@``, the mailto of List-Unsubscribe:
unsubscribe/mailto.py) (else 550, and nothing is read). DATA is parsed as a complaint (ARF,
RFC 5965) about the message it names, else as a DSN applied to the message its address names;
mail to an unsubscribe address opts its recipient out. Mail that is no DSN
(auto-replies, junk) is accepted and counted as ignored, so senders do not retry it. A database
failure answers 451, so the MTA tries again later; nothing a peer sends makes the listener stop.

``rassylka bounces`` runs only this; ``rassylka serve`` runs it too when a bounce domain is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import weakref
from collections import Counter

from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from rassylka.bounces import arf, dsn, service
from rassylka.bounces.verp import Verp
from rassylka.channels.email_message import MessageIds
from rassylka.config import Settings
from rassylka.db import create_engine, create_sessionmaker
from rassylka.metrics import definitions as metrics
from rassylka.unsubscribe import mailto
from rassylka.unsubscribe.tokens import Unsubscribe

logger = logging.getLogger(__name__)

STOP_GRACE = 10.0
NO_SUCH_ADDRESS = "550 5.1.1 No such bounce address"
FEEDBACK_LOCAL_PART = "fbl"
TRY_LATER = "451 4.3.0 Temporary failure, try again later"
# aiosmtpd's default idle timeout; a DSN takes seconds.
SESSION_TIMEOUT = 300.0


class BounceHandler:
    """aiosmtpd's handler: its ``handle_*`` hooks answer RCPT and DATA.

    ``counts`` says what came in: hard, failed, soft, delivered (by the report's verdict),
    complaint (a feedback-loop report applied),
    ignored (no DSN, or nothing to say), unknown (a valid token of a message since deleted),
    unsubscribed (mail to an unsubscribe address, taken),
    rejected (RCPT refused) and errors (answered 451).
    """

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        verp: Verp,
        message_ids: MessageIds | None = None,
        unsubscribe: Unsubscribe | None = None,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._verp = verp
        self._message_ids = message_ids
        self._unsubscribe = unsubscribe
        self.counts: Counter[str] = Counter()
        self.in_data = 0
        self.idle = asyncio.Event()
        self.idle.set()

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if (
            self._verp.message_id_of(address) is None
            and not self._is_feedback(address)
            and not self._unsubscribing(address)
        ):
            self.counts["rejected"] += 1
            logger.info("bounce refused: %r is not a signed bounce address", address)
            return NO_SUCH_ADDRESS
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.in_data += 1
        self.idle.clear()
        try:
            return await self._take(envelope)
        finally:
            self.in_data -= 1
            if not self.in_data:
                self.idle.set()

    async def _unsubscribe_by_mail(self, address: str) -> bool:
        """The mailto's request taken (False: a database error, answer 451)."""
        assert self._unsubscribe is not None
        try:
            taken = await mailto.take(self._sessionmaker, self._unsubscribe, address)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("recording the unsubscribe mail to %s failed", address)
            self.counts["errors"] += 1
            return False
        self.counts["unsubscribed" if taken else "unknown"] += 1
        return True

    async def handle_exception(self, error: Exception) -> str:
        """Whatever went wrong is ours: the peer hears "later", never our exception's text."""
        logger.error("bounce listener error", exc_info=error)
        self.counts["errors"] += 1
        return TRY_LATER

    def _is_feedback(self, address: str) -> bool:
        """``fbl@<bounce domain>``: where feedback loops send complaints (docs/bounces.md)."""
        local, at, domain = address.strip().strip("<>").rpartition("@")
        return (
            bool(at)
            and local.lower() == FEEDBACK_LOCAL_PART
            and domain.lower() == self._verp.domain
        )

    def _unsubscribing(self, address: str) -> bool:
        unsubscribe = self._unsubscribe
        return unsubscribe is not None and unsubscribe.message_id_of(address) is not None

    async def _take(self, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        complaint = arf.parse(raw)
        if complaint is not None:
            return await self._take_complaint(envelope, complaint)
        report = dsn.parse(raw)
        verdict = report.verdict() if report is not None else None
        for address in envelope.rcpt_tos:
            message_id = self._verp.message_id_of(address)
            if message_id is None:  # checked at RCPT already: fbl@ or an unsubscribe address
                if self._is_feedback(address):
                    self.counts["ignored"] += 1
                    logger.info("mail to %s ignored: not a complaint report", address)
                elif self._unsubscribe is not None and not await self._unsubscribe_by_mail(address):
                    return TRY_LATER
                continue
            if verdict is None:
                self.counts["ignored"] += 1
                metrics.receipt("bounce", metrics.REJECTED)
                logger.info("mail to %s ignored: not a delivery status report", address)
                continue
            try:
                applied = await service.apply(
                    self._sessionmaker, message_id=message_id, verdict=verdict
                )
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("recording the bounce of message %s failed", message_id)
                self.counts["errors"] += 1
                metrics.receipt("bounce", metrics.REJECTED)
                return TRY_LATER
            if applied is None:
                self.counts["unknown"] += 1
                logger.info("bounce of message %s ignored: no such message", message_id)
                continue
            self.counts[verdict.kind] += 1
            logger.info(
                "bounce of message %s: %s %s (%s)",
                message_id,
                verdict.kind,
                verdict.describe(),
                "now " + applied.status if applied.changed else "unchanged: " + applied.status,
            )
        return "250 2.0.0 OK"

    async def _take_complaint(self, envelope: Envelope, complaint: arf.Complaint) -> str:
        """A feedback-loop report: the message it names (by the VERP address it came to, or its
        own contents) is complained of; one that names none of ours is ignored."""
        found = [self._verp.message_id_of(address) for address in envelope.rcpt_tos]
        message_id = next((found_id for found_id in found if found_id is not None), None)
        if message_id is None:
            message_id = service.find_complained(
                complaint, verp=self._verp, message_ids=self._message_ids
            )
        if message_id is None:
            self.counts["ignored"] += 1
            metrics.receipt(service.COMPLAINT, metrics.REJECTED)
            logger.info("complaint ignored: it names no message of ours")
            return "250 2.0.0 OK"
        try:
            applied = await service.complain(
                self._sessionmaker, message_id=message_id, description=complaint.describe()
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("recording the complaint about message %s failed", message_id)
            self.counts["errors"] += 1
            return TRY_LATER
        if applied is None:
            self.counts["unknown"] += 1
            logger.info("complaint about message %s ignored: no such email", message_id)
        else:
            self.counts[service.COMPLAINT] += 1
            logger.info("complaint about message %s: %s", message_id, complaint.describe())
        return "250 2.0.0 OK"


class BounceListener:
    """Listens on ``host:port`` (port 0: any free one, then see ``port``)."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        verp: Verp,
        *,
        host: str = "127.0.0.1",
        port: int = 2525,
        max_size: int = 10 * 1024 * 1024,
        message_ids: MessageIds | None = None,
        unsubscribe: Unsubscribe | None = None,
    ) -> None:
        self.handler = BounceHandler(sessionmaker, verp, message_ids, unsubscribe)
        self.host = host
        self.port = port
        self._verp = verp
        self._max_size = max_size
        self._server: asyncio.Server | None = None
        self._connections: weakref.WeakSet[SMTP] = weakref.WeakSet()

    @classmethod
    def from_settings(
        cls, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
    ) -> BounceListener:
        verp = Verp.from_settings(settings)
        if verp is None:
            raise ValueError("RASSYLKA_BOUNCE_DOMAIN is not set")
        return cls(
            sessionmaker,
            verp,
            host=settings.bounce_host,
            port=settings.bounce_port,
            max_size=settings.bounce_max_size,
            message_ids=MessageIds.keyed(settings.secret_key.get_secret_value())
            if settings.secret_key
            else None,
            # The bounce domain needs RASSYLKA_SECRET_KEY, which then signs the links too.
            unsubscribe=Unsubscribe.of(settings, b""),
        )

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info("bounce listener on %s:%s for @%s", self.host, self.port, self._verp.domain)

    async def stop(self, *, grace: float = STOP_GRACE) -> None:
        """Stop accepting; give the reports being recorded ``grace`` seconds, then hang up."""
        if self._server is None:
            return
        self._server.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self.handler.idle.wait()
        for connection in list(self._connections):
            if connection.transport is not None:
                connection.transport.close()
        await self._server.wait_closed()
        self._server = None

    def _protocol(self) -> SMTP:
        connection = SMTP(
            self.handler,
            data_size_limit=self._max_size,
            enable_SMTPUTF8=True,
            # Named, so aiosmtpd does not look up this host's FQDN (blocking) per connection.
            hostname=self._verp.domain,
            ident="Rassylka bounces",
            timeout=SESSION_TIMEOUT,
            loop=asyncio.get_running_loop(),
        )
        self._connections.add(connection)
        return connection


async def run_listener(settings: Settings) -> None:
    """The ``rassylka bounces`` process: until SIGTERM or SIGINT, then a graceful stop."""
    engine = create_engine(settings.database_url, pool_pre_ping=True)
    listener = BounceListener.from_settings(settings, create_sessionmaker(engine))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await listener.start()
        await stop.wait()
        logger.info("stopping the bounce listener")
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await listener.stop()
        await engine.dispose()
