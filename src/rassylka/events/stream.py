"""The live stream's generator: a reader's events after its cursor as Server-Sent Events, then
each new one as it is committed, until the client leaves, the connection's lifetime ends or
the server stops.

Wire format, one SSE message per event::

    id: 1234
    event: status
    data: {"id": 1234, "message_id": ..., "status": "sent", ...}

An event that changes no status — a recipient opting out through the message
(``"status": "unsubscribed"``, ``old_status`` the message's status, which stays) — comes as
``event: unsubscribed`` with the same ``data``: a reader counting statuses by ``event:
status`` is not misled, one that wants opt-outs listens for it.

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
from rassylka.events.bus import BATCH, EventHub, Subscription
from rassylka.events.schemas import StatusEvent
from rassylka.messages.models import UNSUBSCRIBED

logger = logging.getLogger(__name__)

# The reconnection delay (ms) suggested to EventSource clients.
RETRY_MS = 1000
# After a failed query (the database restarting), the wait before the next try; the stream
# stays open meanwhile, since an EventSource that gets an error status gives up for good.
ERROR_PAUSE = 1.0


@dataclass(frozen=True)
class StreamFilter:
    mailing_id: int | None = None
    project_id: int | None = None

    def matches(self, event: StatusEvent) -> bool:
        """The filter of ``repository.after``, for events the hub has already read."""
        return (self.mailing_id is None or event.mailing_id == self.mailing_id) and (
            self.project_id is None or event.project_id == self.project_id
        )


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
            behind = True  # until its first read: a replay, or the hub has not looked yet
            while True:
                subscription.clear()
                fresh = hub.fresh
                more = failed = False
                if not behind and fresh.after <= cursor < fresh.upto:
                    # Caught up: the hub's shared read has everything after the cursor.
                    for event, data in fresh.events:
                        if event.id > cursor and only.matches(event):
                            yield _status(event, data)
                    cursor = fresh.upto
                elif behind or cursor < fresh.after:
                    # Behind (a replay, or a client slower than the events): its own reads.
                    batch = await _read(hub, cursor, only)
                    if batch is None:
                        failed = True
                    else:
                        for event in batch.events:
                            yield _status(event, event.model_dump_json())
                        cursor = batch.upto
                        more = behind = batch.more
                if subscription.closed_because is not None:
                    yield _goodbye(cursor, subscription.closed_because)
                    return
                remaining = deadline - loop.time()
                if remaining <= 0:
                    yield _goodbye(cursor, "lifetime")
                    return
                if failed:
                    await subscription.wait(min(remaining, ERROR_PAUSE))
                elif not more:
                    await subscription.wait(remaining)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


@dataclass(frozen=True)
class _Batch:
    events: list[StatusEvent]
    upto: int
    more: bool


async def _read(hub: EventHub, cursor: int, only: StreamFilter) -> _Batch | None:
    """One batch of this reader's events after ``cursor``; None if the database failed."""
    # Read before the query: every event up to it is visible to the query.
    visible = hub.last_id
    try:
        async with hub.query_slots, hub.sessionmaker() as session:
            events = await repository.after(
                session,
                cursor=cursor,
                limit=BATCH,
                mailing_id=only.mailing_id,
                project_id=only.project_id,
            )
    except Exception:
        logger.warning("reading events after %s failed; retrying", cursor, exc_info=True)
        return None
    if len(events) == BATCH:
        return _Batch(events, events[-1].id, more=True)
    # Caught up to ``visible``: the ids of other mailings and projects below it are skipped,
    # so the next read does not scan them again.
    upto = max([cursor, visible, *(event.id for event in events[-1:])])
    return _Batch(events, upto, more=False)


def _status(event: StatusEvent, data: str) -> ServerSentEvent:
    name = UNSUBSCRIBED if event.status == UNSUBSCRIBED else "status"
    return ServerSentEvent(data=data, event=name, id=str(event.id))


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
