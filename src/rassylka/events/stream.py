"""The live stream's generator: a reader's events after its cursor as Server-Sent Events, then
each new one as it is committed, until the client leaves, the connection's lifetime ends or
the server stops.

Wire format, one SSE message per event::

    id: 1234
    event: status
    data: {"id": 1234, "message_id": ..., "status": "sent", ...}

The first message is a comment carrying ``retry:`` (the reconnection delay for EventSource).
The last, when the server ends the stream, is ``event: reconnect`` with ``retry:`` and the
cursor as ``id:``, so an EventSource reconnects and resumes with ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
from sse_starlette import ServerSentEvent

from rassylka.events import repository
from rassylka.events.bus import EventHub, Subscription

logger = logging.getLogger(__name__)

# Events one query reads at most; a reader far behind catches up batch by batch.
BATCH = 500
# The reconnection delay (ms) suggested to EventSource clients.
RETRY_MS = 1000
# After a failed query (the database restarting), the wait before the next try; the stream
# stays open meanwhile, since an EventSource that gets an error status gives up for good.
ERROR_PAUSE = 1.0


@dataclass(frozen=True)
class StreamFilter:
    mailing_id: int | None = None
    project_id: int | None = None


async def status_events(
    hub: EventHub,
    *,
    cursor: int,
    only: StreamFilter,
    lifetime: float,
    shutdown: anyio.Event,
) -> AsyncIterator[ServerSentEvent]:
    """The events after ``cursor`` of ``only``, live, for ``lifetime`` seconds at most."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + lifetime
    yield ServerSentEvent(comment="rassylka status stream", retry=RETRY_MS)
    async with hub.subscribe() as subscription:
        watcher = asyncio.create_task(
            _close_on(shutdown, subscription), name="event-stream-shutdown"
        )
        try:
            while True:
                subscription.clear()
                # Read before the query: every event up to it is visible to the query.
                visible = hub.last_id
                try:
                    async with hub.query_slots, hub.sessionmaker() as session:
                        batch = await repository.after(
                            session,
                            cursor=cursor,
                            limit=BATCH,
                            mailing_id=only.mailing_id,
                            project_id=only.project_id,
                        )
                except Exception:
                    logger.warning(
                        "reading events after %s failed; retrying", cursor, exc_info=True
                    )
                    batch = None
                for event in batch or ():
                    yield ServerSentEvent(
                        data=event.model_dump_json(), event="status", id=str(event.id)
                    )
                    cursor = event.id
                if batch is not None and len(batch) < BATCH:
                    # Caught up to ``visible``: skip the ids of other mailings and projects, so
                    # the next query does not scan them again.
                    cursor = max(cursor, visible)
                if subscription.closed_because is not None:
                    yield _goodbye(cursor, subscription.closed_because)
                    return
                remaining = deadline - loop.time()
                if remaining <= 0:
                    yield _goodbye(cursor, "lifetime")
                    return
                if batch is not None and len(batch) == BATCH:
                    continue
                await subscription.wait(min(remaining, ERROR_PAUSE) if batch is None else remaining)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


def _goodbye(cursor: int, reason: str) -> ServerSentEvent:
    """The last message: reconnect (after ``retry`` ms) and resume from ``id``."""
    return ServerSentEvent(
        data=json.dumps({"reason": reason, "last_event_id": cursor}),
        event="reconnect",
        id=str(cursor),
        retry=RETRY_MS,
    )


async def _close_on(shutdown: anyio.Event, subscription: Subscription) -> None:
    await shutdown.wait()
    subscription.close("shutdown")
