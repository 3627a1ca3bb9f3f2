"""The worker's upkeep: fresh planner statistics (PostgreSQL), old idempotency keys deleted.

PostgreSQL plans from statistics that autovacuum's ANALYZE keeps, at best a minute behind (and
never, where autovacuum is off). A run of a million messages made in one statement, or a
million clients imported, leaves the planner believing those tables empty: claims, receipt
matching and event writes then pick plans that scan the whole table for every batch (seen here:
a claim of 500 messages taking 1–9 s, 27,000 messages into a 100,000-message mailing).

So the worker looks at ``pg_stat_user_tables`` right after starting runs and every
``INTERVAL`` seconds, and analyzes (``SKIP_LOCKED``: another worker may be at it) each of its
tables changed by more than autovacuum's own default threshold since its last ANALYZE.

Idempotency keys (``ExpiredKeys``) older than ``RASSYLKA_IDEMPOTENCY_TTL`` are deleted every
minute.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from rassylka.db import utcnow
from rassylka.engine.waiting import wait_any
from rassylka.errors import database_unavailable
from rassylka.idempotency import repository as idempotency

logger = logging.getLogger(__name__)

TABLES = ("message", "message_event", "message_part", "receipt", "client")
INTERVAL = 10.0
# autovacuum_analyze_threshold and _scale_factor's defaults, with a floor for small tables.
THRESHOLD_ROWS = 1000
THRESHOLD_SHARE = 0.1

_STALE = text(
    """
    SELECT s.relname
    FROM pg_stat_user_tables AS s JOIN pg_class AS c ON c.oid = s.relid
    WHERE s.schemaname = current_schema() AND s.relname = ANY(:tables)
      AND s.n_mod_since_analyze > :rows + :share * greatest(c.reltuples, 0)
    ORDER BY s.relname
    """
)


class Statistics:
    """Keeps the planner's statistics of the engine's tables fresh (PostgreSQL only)."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self._sessionmaker = sessionmaker
        self._checked_at: float | None = None

    async def refresh(self, *, now: bool = False) -> list[str]:
        """Analyze the stale tables (if ``now``, or ``INTERVAL`` has passed since the last
        look); the tables analyzed. Errors are logged: statistics are an optimisation."""
        moment = time.monotonic()
        if not now and self._checked_at is not None and moment - self._checked_at < INTERVAL:
            return []
        self._checked_at = moment
        try:
            async with self._sessionmaker() as session:
                if session.get_bind().dialect.name != "postgresql":
                    return []
                stale = list(
                    await session.scalars(
                        _STALE,
                        {"tables": list(TABLES), "rows": THRESHOLD_ROWS, "share": THRESHOLD_SHARE},
                    )
                )
                for table in stale:
                    await session.execute(text(f'ANALYZE (SKIP_LOCKED) "{table}"'))
                    await session.commit()
        except Exception as error:
            # A database that went away is said once, by the loops that need it.
            if not database_unavailable(error):
                logger.warning("refreshing the planner's statistics failed", exc_info=True)
            return []
        if stale:
            logger.info("analyzed %s (statistics were stale)", ", ".join(stale))
        return stale


class ExpiredKeys:
    """Deletes the ``Idempotency-Key`` rows older than ``ttl`` seconds, every ``interval``.

    Reading ignores them already (an old key is new again); this keeps the table at about a
    day of creates. Any number of workers may do it at once: a delete of rows already gone
    deletes nothing."""

    def __init__(self, engine: AsyncEngine, *, ttl: float, interval: float = 60.0) -> None:
        self._engine = engine
        self.ttl = ttl
        self.interval = interval

    async def purge(self) -> int:
        """Delete the expired keys now; how many (errors are logged: 0)."""
        try:
            deleted = await idempotency.purge(
                self._engine, before=utcnow() - timedelta(seconds=self.ttl)
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.warning("deleting expired idempotency keys failed", exc_info=True)
            return 0
        if deleted:
            logger.info("deleted %s expired idempotency keys", deleted)
        return deleted

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.purge()
            await wait_any(stop, seconds=self.interval)
