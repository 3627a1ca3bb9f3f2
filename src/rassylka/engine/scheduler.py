"""The scheduler: starts the runs that are due, closes the runs that are done.

Here it looks every ``interval`` seconds (the simple start rule of the sending engine); the
scheduling issue makes it wake at the next due moment. Any number of workers may run it at
once: a run is created once per mailing and moment (unique), together with its messages in
one transaction, so a run is never seen without its messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from rassylka.db import utcnow
from rassylka.messages import queue
from rassylka.messages.service import start_due_mailings

logger = logging.getLogger(__name__)


class Scheduler:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        interval: float = 1.0,
        on_new_work: Callable[[], None] | None = None,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._interval = interval
        self._on_new_work = on_new_work

    async def tick(self) -> list[int]:
        """Start what is due and finish what is done; the ids of the runs started."""
        async with self._sessionmaker() as session, session.begin():
            started = await start_due_mailings(session)
            if started:
                await queue.notify_work(session)
        if started:
            logger.info("started runs %s", started)
            if self._on_new_work:
                self._on_new_work()
        async with self._sessionmaker() as session, session.begin():
            finished = await queue.finish_runs(session, now=utcnow())
        if finished:
            logger.info("finished runs %s", finished)
        return started

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("the scheduler's tick failed; trying again")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await stop.wait()
