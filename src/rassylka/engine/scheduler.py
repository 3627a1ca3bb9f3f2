"""The scheduler: starts the runs that fall due, ends what has ended, closes finished runs.

It sleeps until the next due moment (the earliest ``next_run_at`` of an active mailing, or
``ends_at`` reached), not a fixed coarse poll, capped at ``max_sleep`` as a safety net; a
change to any mailing wakes it at once (in this process through ``wake()``, in others through
PostgreSQL NOTIFY). So a mailing due at T starts within about a second of T.

Any number of workers may run it at once: a due mailing is advanced under a row lock
(PostgreSQL ``FOR UPDATE SKIP LOCKED``; SQLite's one writer), and a run is unique per mailing
and moment, created together with its messages in one transaction — so a run is never seen
without its messages, and exactly one worker starts it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from rassylka.db import utcnow
from rassylka.engine.outage import Backoff
from rassylka.engine.upkeep import Statistics
from rassylka.engine.waiting import wait_any
from rassylka.errors import database_unavailable
from rassylka.mailings import repository as mailings
from rassylka.messages import queue
from rassylka.messages.service import advance

logger = logging.getLogger(__name__)

ENDED_REASON = "Срок рассылки истёк"
MAX_SLEEP = 30.0


class Scheduler:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        max_sleep: float = MAX_SLEEP,
        on_new_work: Callable[[], None] | None = None,
        clock: Callable[[], datetime] = utcnow,
        statistics: Statistics | None = None,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._max_sleep = max_sleep
        self._on_new_work = on_new_work
        self._clock = clock
        self._wake = asyncio.Event()
        self._statistics = statistics or Statistics(sessionmaker)
        # The moment of the latest tick: what was due by then and is still due was not
        # started by it (another worker holds it, or advancing failed).
        self._ticked_at: datetime | None = None

    def wake(self) -> None:
        """Look again now: a mailing was created or changed."""
        self._wake.set()

    async def tick(self, now: datetime | None = None) -> list[int]:
        """Start what is due, end what has ended, finish what is done; the runs started."""
        now = now or self._clock()
        self._ticked_at = now
        started: list[int] = []
        async with self._sessionmaker() as session:
            due = await mailings.due_ids(session, now=now)
        for mailing_id in due:
            try:
                run_id = await self._advance(mailing_id, now)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if database_unavailable(error):
                    raise  # the tick fails: the loop waits for the database
                logger.exception("starting mailing %s failed; it is tried again", mailing_id)
                continue
            if run_id is not None:
                started.append(run_id)
        if started:
            logger.info("started runs %s", started)
            # Before the first claim of the new messages (see engine.upkeep).
            await self._statistics.refresh(now=True)
            if self._on_new_work:
                self._on_new_work()
        async with self._sessionmaker() as session, session.begin():
            ended = await mailings.end_past(session, now=now)
            expired = await queue.expire_queued(session, reason=ENDED_REASON, now=now)
        if ended:
            logger.info("mailings %s reached their end; %s messages expired", ended, expired)
        async with self._sessionmaker() as session, session.begin():
            finished = await queue.finish_runs(session, now=now)
        if finished:
            logger.info("finished runs %s", finished)
        return started

    async def _advance(self, mailing_id: int, now: datetime) -> int | None:
        async with self._sessionmaker() as session, session.begin():
            mailing = await mailings.lock_due(session, mailing_id, now=now)
            if mailing is None:
                return None
            run_id = await advance(session, mailing, now=now)
            if run_id is not None:
                await queue.notify_work(session)
            return run_id

    async def seconds_to_next(self) -> float:
        now = self._clock()
        async with self._sessionmaker() as session:
            # An end that passed while the tick ran is still to do: look from the tick's now.
            due = await mailings.next_due(session, now=self._ticked_at or now)
        if due is None:
            return self._max_sleep
        if self._ticked_at is not None and due <= self._ticked_at:
            return 1.0  # due at the latest tick and still due: it failed; do not spin
        # Became due while the tick ran (the tick took its ``now`` before it): at once,
        # not a second later.
        return max(0.0, min((due - now).total_seconds(), self._max_sleep))

    async def run(self, stop: asyncio.Event) -> None:
        backoff = Backoff(1.0)
        while not stop.is_set():
            self._wake.clear()
            delay = self._max_sleep
            try:
                await self.tick()
                delay = await self.seconds_to_next()
                backoff.succeeded()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                delay = backoff.failed(error, logger, "the scheduler's tick failed; trying again")
            await wait_any(stop, self._wake, seconds=delay)
