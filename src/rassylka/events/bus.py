"""The per-process fan-out hub: it learns that new events were committed (PostgreSQL NOTIFY, or
polling the newest event id) and wakes every live-stream subscriber, which then reads its own
events from the database.

The hub carries no events, only wake-ups: each subscriber keeps its own cursor and queries
``repository.after`` itself, so memory per subscriber is one batch at most and a slow client
delays only itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncEngine

from rassylka.db import create_sessionmaker
from rassylka.engine.waiting import wait_any
from rassylka.engine.worker import listen
from rassylka.events import repository
from rassylka.messages.queue import EVENTS_CHANNEL

logger = logging.getLogger(__name__)

# How often the newest id is read while nothing can be heard (SQLite; PostgreSQL while the
# LISTEN connection is down).
POLL_INTERVAL = 0.1
# While LISTENing, a slower look all the same: a connection that died without a word (no RST)
# still looks open, and a notification lost that way must not stall the streams.
SAFETY_INTERVAL = 1.0
# Subscribers' queries at once, so streams never take every pooled connection from the API.
QUERY_SLOTS = 4
# How long an idle hub (no subscribers) sleeps between looks at its stop event.
IDLE_WAIT = 60.0


class Subscription:
    """One reader's doorbell: rung when new events may exist, or when it must end."""

    def __init__(self) -> None:
        self._rung = asyncio.Event()
        self.closed_because: str | None = None

    def ring(self) -> None:
        self._rung.set()

    def close(self, reason: str) -> None:
        if self.closed_because is None:
            self.closed_because = reason
        self._rung.set()

    def clear(self) -> None:
        """Forget earlier rings; called before a reader queries, so that a ring during its
        query is not lost."""
        self._rung.clear()

    async def wait(self, seconds: float) -> None:
        """Until rung (or closed) or ``seconds`` pass."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._rung.wait()


class EventHub:
    """One per process (on ``app.state.event_hub``): started and stopped by the app's lifespan.

    ``last_id`` is the newest event id the hub has read, so every event up to it is visible to
    any query that starts later (SQLite has one writer; on PostgreSQL event-writing
    transactions commit in id order, see ``messages/queue.py``).
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.sessionmaker = create_sessionmaker(engine)
        self.query_slots = asyncio.Semaphore(QUERY_SLOTS)
        self.last_id = 0
        self.listening = False
        self._subscribers: set[Subscription] = set()
        self._notified = asyncio.Event()
        self._joined = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._run(), name="event-hub"))
        if self.engine.dialect.name == "postgresql":
            listener = listen(
                self.engine,
                {EVENTS_CHANNEL: self._notified.set},
                self._stop,
                on_connected=self._on_connected,
            )
            self._tasks.append(asyncio.create_task(listener, name="event-hub-listener"))

    async def stop(self) -> None:
        """End every subscription (its stream says goodbye and closes) and the hub's tasks."""
        self._stop.set()
        for subscription in list(self._subscribers):
            subscription.close("shutdown")
        for task in self._tasks:
            try:
                async with asyncio.timeout(5):
                    await task
            except TimeoutError:
                logger.warning("%s did not stop in 5 s; cancelled", task.get_name())
        self._tasks.clear()

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Subscription]:
        subscription = Subscription()
        if self._stop.is_set():
            subscription.close("shutdown")
        self._subscribers.add(subscription)
        self._joined.set()
        try:
            yield subscription
        finally:
            self._subscribers.discard(subscription)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def _on_connected(self, connected: bool) -> None:
        self.listening = connected
        # Whatever was committed while nothing was heard is looked for at once.
        self._notified.set()

    async def _run(self) -> None:
        while not self._stop.is_set():
            if not self._subscribers:
                self._joined.clear()
                await wait_any(self._stop, self._joined, seconds=IDLE_WAIT)
                continue
            self._notified.clear()
            await self._look()
            interval = SAFETY_INTERVAL if self.listening else POLL_INTERVAL
            await wait_any(self._stop, self._notified, seconds=interval)

    async def _look(self) -> None:
        """Read the newest event id; if it grew, ring every subscriber. One query per
        notification (or poll) for the whole process, however many subscribers."""
        try:
            async with self.sessionmaker() as session:
                newest = await repository.last_id(session)
        except Exception:
            # The loop's boundary: the database may be restarting; the next look retries.
            logger.warning("reading the newest event id failed", exc_info=True)
            return
        if newest > self.last_id:
            self.last_id = newest
            for subscription in list(self._subscribers):
                subscription.ring()
