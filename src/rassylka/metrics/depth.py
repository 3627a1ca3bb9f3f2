"""The queue depth, counted when Prometheus scrapes, within a short timeout."""

from __future__ import annotations

import asyncio
import logging
import math

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from rassylka.db import utcnow
from rassylka.messages import queue
from rassylka.metrics.definitions import CHANNELS, QUEUE_DEPTH

logger = logging.getLogger(__name__)

TIMEOUT = 1.0
"""Seconds a scrape waits for the count: a scrape never hangs on a slow or absent database
(the gauge says NaN then; the other metrics are served as usual)."""


async def refresh(
    sessionmaker: async_sessionmaker[AsyncSession], *, seconds: float = TIMEOUT
) -> None:
    """Set ``rassylka_queue_depth`` from the database, or to NaN if it does not answer in time."""
    try:
        async with asyncio.timeout(seconds):
            async with sessionmaker() as session, session.begin():
                if session.get_bind().dialect.name == "postgresql":
                    # The server stops the count too, not only this wait for it.
                    milliseconds = max(1, int(seconds * 1000))
                    await session.execute(text(f"SET LOCAL statement_timeout = {milliseconds}"))
                counts = await queue.due_counts(session, now=utcnow())
    except asyncio.CancelledError:
        raise
    except Exception as error:
        logger.debug("counting the queue for the metrics failed: %r", error)
        for name in CHANNELS.values():
            QUEUE_DEPTH.labels(channel=name).set(math.nan)
        return
    for channel, name in CHANNELS.items():
        QUEUE_DEPTH.labels(channel=name).set(counts.get(channel, 0))
