"""The per-process fan-out hub: it learns that new events were committed (PostgreSQL NOTIFY, or
polling), reads them once, and wakes every live-stream subscriber.

Each subscriber keeps its own cursor. One that is caught up takes the new events from the
hub's one shared batch (``Fresh``), filtered in memory, so a burst costs one query per
process, not one per stream; one that has fallen behind (a slow client, a replay) queries
``repository.after`` from its own cursor, batch by batch, so it delays only itself. Memory is
one batch for the hub and at most one per subscriber.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from rassylka.db import create_sessionmaker
from rassylka.engine.listening import listen
from rassylka.engine.waiting import wait_any
from rassylka.events import repository
from rassylka.events.schemas import StatusEvent
from rassylka.messages.queue import EVENTS_CHANNEL

logger = logging.getLogger(__name__)

# How often the newest id is read while nothing can be heard (SQLite; PostgreSQL while the
# LISTEN connection is down).
POLL_INTERVAL = 0.1
# While LISTENing, a slower look all the same: a connection that died without a word (no RST)
# still looks open, and a notification lost that way must not stall the streams.
SAFETY_INTERVAL = 1.0
# Events one query reads at most (the hub's and each subscriber's).
BATCH = 500
# Subscribers' queries at once, so streams never take every pooled connection from the API.
QUERY_SLOTS = 4
# How long an idle hub (no subscribers) sleeps between looks at its stop event.
IDLE_WAIT = 60.0


@dataclass(frozen=True)
class Fresh:
    """Every event with ``after < id <= upto``, oldest first, each with its JSON encoded once."""

    after: int
    upto: int
    events: tuple[tuple[StatusEvent, str], ...] = ()


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
    transactions commit in id order, see ``messages/queue.py``); ``fresh`` holds the events
    of its latest read.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.sessionmaker = create_sessionmaker(engine)
        self.query_slots = asyncio.Semaphore(QUERY_SLOTS)
        self.last_id = 0
        self.fresh = Fresh(after=0, upto=0)
        # False until the first look after an idle spell: the hub then starts from the newest
        # id rather than reading through everything it missed (no one is waiting for that).
        self._looked = False
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
                self._looked = False
                self._joined.clear()
                await wait_any(self._stop, self._joined, seconds=IDLE_WAIT)
                continue
            self._notified.clear()
            await self._look()
            interval = SAFETY_INTERVAL if self.listening else POLL_INTERVAL
            await wait_any(self._stop, self._notified, seconds=interval)

    async def _look(self) -> None:
        """Read the events after ``last_id``; if there are any, share them and ring every
        subscriber. One query per notification (or poll) for the whole process."""
        started = not self._looked
        try:
            async with self.sessionmaker() as session:
                if started:
                    # What is already there is no one's to share: subscribers read their
                    # own way up to it.
                    newest = await repository.last_id(session)
                batch = await repository.after(
                    session, cursor=newest if started else self.last_id, limit=BATCH
                )
        except Exception:
            # The loop's boundary: the database may be restarting; the next look retries.
            logger.warning("reading new events failed", exc_info=True)
            return
        if started:
            self._looked = True
            self.last_id = newest
            self.fresh = Fresh(after=newest, upto=newest)
        elif not batch:
            return
        if batch:
            # Unfiltered, so the last id read is the newest visible one: nothing is missing
            # below it.
            self.fresh = Fresh(
                after=self.last_id,
                upto=batch[-1].id,
                events=tuple((event, event.model_dump_json()) for event in batch),
            )
            self.last_id = batch[-1].id
            if len(batch) == BATCH:
                self._notified.set()  # more to read: look again at once
        for subscription in list(self._subscribers):
            subscription.ring()
