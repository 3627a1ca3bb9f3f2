"""The webhook sender: fills the outbox from new events, claims due deliveries with a lease,
POSTs them signed, and records what happened; one per worker, beside the dispatcher.

    events ──fill──► webhook_delivery (pending) ──claim──► N POSTs ──► outcomes ──► write
    (cursor per       (one row per event per        (lease,   (httpx,      (delivered, retry
     webhook)          webhook, same txn)            token)    bounded)     later, or failed)

It runs in its own tasks with its own sessions: the dispatcher never waits on it, and a slow
or dead CRM delays only its own deliveries. Its transactions write no message events.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from rassylka import __version__
from rassylka.db import utcnow
from rassylka.engine.outage import Backoff
from rassylka.engine.retry import RetryPolicy
from rassylka.engine.waiting import wait_any
from rassylka.metrics import definitions as metrics
from rassylka.webhooks import repository

if TYPE_CHECKING:
    from rassylka.config import Settings

logger = logging.getLogger(__name__)

USER_AGENT = f"Rassylka-Webhooks/{__version__}"
SIGNATURE_VERSION = "v1"
# How often to look for a webhook when there is none: a new one is noticed this late at most,
# and misses nothing meanwhile (its cursor starts at its creation).
IDLE_INTERVAL = 5.0
DB_RETRY_DELAY = 1.0
# How much of a failing answer's body is kept as its error, for a person reading deliveries.
ERROR_BODY_BYTES = 300


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``X-Rassylka-Signature``: ``v1=`` + hex HMAC-SHA256 of ``"{timestamp}.{body}"``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"{SIGNATURE_VERSION}={digest.hexdigest()}"


@dataclass(frozen=True)
class WebhookConfig:
    timeout: float = 10.0
    concurrency: int = 8
    lease: float = 60.0
    poll_interval: float = 0.5
    batch_size: int = 500
    retry: RetryPolicy = field(
        default_factory=lambda: RetryPolicy(
            max_attempts=10, base_delay=30.0, max_delay=3600.0, max_age=86400.0
        )
    )

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookConfig:
        return cls(
            timeout=settings.webhook_timeout,
            concurrency=settings.webhook_concurrency,
            lease=settings.webhook_lease,
            poll_interval=settings.webhook_poll_interval,
            batch_size=settings.webhook_batch_size,
            retry=RetryPolicy(
                max_attempts=settings.webhook_max_attempts,
                base_delay=settings.webhook_retry_base_delay,
                max_delay=settings.webhook_retry_max_delay,
                max_age=settings.webhook_max_age,
            ),
        )

    @property
    def effective_lease(self) -> float:
        # A claim must outlive its POST, or another worker would send it again meanwhile.
        return max(self.lease, self.timeout * 2 + 5)


class WebhookSender:
    """Delivers webhook events until ``stop`` is set; ``wake()`` says new events committed."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        config: WebhookConfig | None = None,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._sessionmaker = sessionmaker
        self.config = config or WebhookConfig()
        self.clock = clock
        self._events = asyncio.Event()
        self._finished = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._outcomes: list[repository.Attempt] = []

    def wake(self) -> None:
        self._events.set()

    async def run(self, stop: asyncio.Event) -> None:
        config = self.config
        limits = httpx.Limits(
            max_connections=config.concurrency, max_keepalive_connections=config.concurrency
        )
        async with httpx.AsyncClient(
            timeout=config.timeout, limits=limits, follow_redirects=False
        ) as client:
            try:
                await self._loop(client, stop)
            finally:
                # Stopping: the POSTs in flight finish (each within the timeout), then their
                # outcomes are written; cancelled, their claims come back after the lease.
                if self._in_flight:
                    await asyncio.gather(*self._in_flight, return_exceptions=True)
                with contextlib.suppress(Exception):
                    await self._write_outcomes()

    async def _loop(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        config = self.config
        next_fill = 0.0
        active = 0
        backoff = Backoff(DB_RETRY_DELAY)
        while not stop.is_set():
            try:
                await self._write_outcomes()
                if loop.time() >= next_fill or (active and self._events.is_set()):
                    self._events.clear()
                    filled = await self._fill()
                    active = filled.webhooks
                    next_fill = loop.time() + (config.poll_interval if active else IDLE_INTERVAL)
                    if filled.more:
                        self._events.set()
                room = config.concurrency - len(self._in_flight)
                if active and room > 0:
                    for delivery in await self._claim(room):
                        self._start(client, delivery)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                delay = backoff.failed(
                    error, logger, "webhook deliveries: a database step failed; trying again"
                )
                await wait_any(stop, seconds=delay)
                continue
            backoff.succeeded()
            self._finished.clear()
            if self._outcomes:
                continue
            if not active:
                # No webhook: notifications of events concern nobody, only the clock matters.
                self._events.clear()
                await wait_any(stop, self._finished, seconds=max(0.0, next_fill - loop.time()))
            else:
                await wait_any(
                    stop,
                    self._finished,
                    self._events,
                    seconds=max(0.0, next_fill - loop.time()),
                )

    async def _fill(self) -> repository.Filled:
        async with self._sessionmaker() as session, session.begin():
            return await repository.fill(session, limit=self.config.batch_size, now=self.clock())

    async def _claim(self, limit: int) -> list[repository.Claimed]:
        now = self.clock()
        lease_until = now + timedelta(seconds=self.config.effective_lease)
        async with self._sessionmaker() as session, session.begin():
            return await repository.claim(session, limit=limit, now=now, lease_until=lease_until)

    def _start(self, client: httpx.AsyncClient, delivery: repository.Claimed) -> None:
        task = asyncio.create_task(
            self._deliver(client, delivery), name=f"webhook-delivery-{delivery.id}"
        )
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _deliver(self, client: httpx.AsyncClient, delivery: repository.Claimed) -> None:
        http_status, error, duration_ms = await self.post(client, delivery)
        failed = error is not None
        next_attempt_at = None
        if failed:
            next_attempt_at = self.config.retry.next_attempt(
                attempts=delivery.attempts, created_at=delivery.created_at, now=self.clock()
            )
            logger.info(
                "webhook %s event %s attempt %s failed: %s",
                delivery.webhook_id,
                delivery.event_id,
                delivery.attempts,
                error,
            )
        self._outcomes.append(
            repository.Attempt(
                id=delivery.id,
                attempts=delivery.attempts,
                http_status=http_status,
                error=error,
                duration_ms=duration_ms,
                next_attempt_at=next_attempt_at,
            )
        )
        self._finished.set()

    async def post(
        self, client: httpx.AsyncClient, delivery: repository.Claimed
    ) -> tuple[int | None, str | None, int]:
        """POST one delivery, signed; its HTTP status, the error (None on a 2xx) and the
        milliseconds it took."""
        body = delivery.body.encode()
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Rassylka-Event-Id": str(delivery.event_id),
            "X-Rassylka-Webhook-Id": str(delivery.webhook_id),
            "X-Rassylka-Timestamp": str(timestamp),
            "X-Rassylka-Signature": sign(delivery.secret, timestamp, body),
        }
        started = time.monotonic()
        http_status: int | None = None
        error: str | None = None
        failure: str | None = None  # for the metrics: one of metrics.WEBHOOK_REASONS
        try:
            # httpx's timeout is per read; this bounds the whole exchange, so a receiver that
            # trickles bytes cannot hold a delivery (and its lease) for longer.
            async with asyncio.timeout(self.config.timeout):
                async with client.stream(
                    "POST", delivery.url, content=body, headers=headers
                ) as response:
                    http_status = response.status_code
                    if not 200 <= http_status < 300:
                        failure = "http"
                        answer = await _start_of(response)
                        error = f"HTTP {http_status}" + (f": {answer}" if answer else "")
        except (TimeoutError, httpx.TimeoutException):
            failure = "timeout"
            error = f"Нет ответа за {self.config.timeout:g} с"
        except httpx.HTTPError as problem:
            failure = "connection"
            error = f"Ошибка соединения: {type(problem).__name__}" + (
                f": {problem}" if str(problem) else ""
            )
        except asyncio.CancelledError:
            raise
        except Exception as problem:  # an odd URL or a library bug must not lose the delivery
            logger.exception("webhook %s: POST to %s raised", delivery.webhook_id, delivery.url)
            failure = "error"
            error = f"{type(problem).__name__}: {problem}"
        duration_ms = round((time.monotonic() - started) * 1000)
        if failure is not None:
            metrics.webhook_failed(failure)
        return http_status, error, duration_ms

    async def _write_outcomes(self) -> None:
        outcomes, self._outcomes = self._outcomes, []
        if not outcomes:
            return
        try:
            async with self._sessionmaker() as session, session.begin():
                await repository.record(
                    session,
                    delivered=[outcome for outcome in outcomes if outcome.error is None],
                    failed=[outcome for outcome in outcomes if outcome.error is not None],
                    now=self.clock(),
                )
        except BaseException:
            self._outcomes[:0] = outcomes  # written next time; they exist nowhere else
            raise


async def _start_of(response: httpx.Response) -> str:
    """The first bytes of an answer's body, as text, for the delivery's error."""
    chunk = b""
    async for piece in response.aiter_bytes():
        chunk += piece
        if len(chunk) >= ERROR_BODY_BYTES:
            break
    return chunk[:ERROR_BODY_BYTES].decode("utf-8", "replace").strip()
