"""``rassylka mailing watch``: a live table of a mailing's messages by channel and status.

The counts start from ``GET /mailing/{id}/stats`` and move with each event of
``GET /mailing/{id}/events`` (SSE, docs/stream.md); they are taken again from the stats every
``RESYNC_SECONDS`` and at the end, as a message's creation and its claim have no event (a new
run's messages show up only then). A dropped stream is resumed with ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from rassylka.console.api import EXIT_UNREACHABLE, Api, CliFailure, refusal, unreachable
from rassylka.mailings import lifecycle
from rassylka.messages.models import STATUS_NAMES, MessageStatus

STATUSES = (
    "queued",
    "sent",
    "delivered",
    "undelivered",
    "bounced",
    "failed",
    "expired",
    "skipped",
)
MAILING_STATUSES = {int(status): name for status, name in lifecycle.STATUS_NAMES.items()}
FINISHED = {3, 4}
CHANNELS = ("email", "sms")
RESYNC_SECONDS = 10.0
POLL_SECONDS = 1.0
RATE_WINDOW = 10.0
LAST_EVENTS = 8
RECONNECT_DELAY = 1.0
GIVE_UP_AFTER = 30.0
"""Seconds of failed reconnects after which the API counts as gone."""
DRAIN_QUIET = 1.0
DRAIN_MAX = 5.0
"""Once the mailing is done, its last events may still be on their way (the server's stream
reads new events by polling): the watch ends after ``DRAIN_QUIET`` seconds with none, or
``DRAIN_MAX`` at most."""


@dataclass
class Tally:
    """What the table shows; "sending" counts as queued (a claim has no event)."""

    mailing_id: int
    name: str = ""
    status: int = 0
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=LAST_EVENTS))
    sent_at: deque[float] = field(default_factory=deque)
    seen: int = 0
    stats_rate: float = 0.0
    last_event_at: float = 0.0
    """When the stream last told something (monotonic)."""

    def take_stats(self, stats: dict[str, Any]) -> None:
        self.counts.clear()
        for channel, by_status in stats["total"]["by_channel"].items():
            for status, count in by_status.items():
                self.counts[channel, _shown(status)] += int(count)
        self.stats_rate = float(stats.get("send_rate") or 0.0)

    def apply(self, event: dict[str, Any]) -> None:
        channel = str(event.get("channel"))
        old = event.get("old_status")
        if old is not None:
            key = (channel, _shown(str(old)))
            if self.counts[key] > 0:
                self.counts[key] -= 1
        self.counts[channel, _shown(str(event["status"]))] += 1
        if event["status"] == "sent":
            self.sent_at.append(time.monotonic())
        self.events.append(event)
        self.seen += 1
        self.last_event_at = time.monotonic()

    def note(self, event: dict[str, Any]) -> None:
        """An event that changes no count (an opt-out): listed among the latest only."""
        self.events.append(event)
        self.seen += 1
        self.last_event_at = time.monotonic()

    def rate(self) -> float:
        """Messages handed to a peer per second, over the last ``RATE_WINDOW`` seconds."""
        cutoff = time.monotonic() - RATE_WINDOW
        while self.sent_at and self.sent_at[0] < cutoff:
            self.sent_at.popleft()
        return len(self.sent_at) / RATE_WINDOW

    def of(self, channel: str, status: str) -> int:
        return self.counts[channel, status]

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


def _shown(status: str) -> str:
    return "queued" if status == "sending" else status


def render(tally: Tally) -> Group:
    state = MAILING_STATUSES.get(tally.status, str(tally.status))
    table = Table(
        title=f"Рассылка {tally.mailing_id} «{escape(tally.name)}»: {state}", title_justify="left"
    )
    # Statuses down, channels across: fits an 80-column terminal with every name whole.
    table.add_column("статус")
    for channel in CHANNELS:
        table.add_column(channel, justify="right")
    table.add_column("итого", justify="right")
    for status in STATUSES:
        row = [tally.of(channel, status) for channel in CHANNELS]
        table.add_row(STATUS_NAMES[MessageStatus(status)], *map(str, row), str(sum(row)))
    totals = [sum(tally.of(channel, status) for status in STATUSES) for channel in CHANNELS]
    table.add_row("всего", *map(str, totals), str(sum(totals)), style="bold")
    table.caption = (
        f"темп: {tally.rate():.1f} отправок/с (по событиям), {tally.stats_rate:.1f}/с за минуту"
        f" · событий: {tally.seen}"
    )
    recent = Table(title="Последние события", title_justify="left", show_edge=False)
    for column in ("№", "время", "канал", "клиент", "статус", "причина"):
        recent.add_column(column)
    for event in tally.events:
        recent.add_row(
            str(event.get("id")),
            str(event.get("created_at", ""))[11:19],
            str(event.get("channel")),
            escape(str(event.get("client_guid") or "")),
            f"{event.get('old_status') or '—'} → {event.get('status')}",
            escape(str(event.get("reason") or "")),
        )
    return Group(table, recent)


async def sse_events(
    api: Api, path: str, *, last_event_id: list[int | None]
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """(event name, data) of the stream at ``path``, for ever: a dropped or ended stream is
    opened again after ``last_event_id[0]`` (kept up to date here, for the caller to see)."""
    failing_since: float | None = None
    timeout = httpx.Timeout(10.0, read=60.0)  # the server pings every 15 s
    while True:
        headers = {} if last_event_id[0] is None else {"Last-Event-ID": str(last_event_id[0])}
        try:
            async with api.http.stream("GET", path, headers=headers, timeout=timeout) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise refusal(response)
                failing_since = None
                name, data, event_id = "message", "", None
                async for line in response.aiter_lines():
                    if not line:  # the end of an event
                        if event_id is not None:
                            last_event_id[0] = event_id
                        if data:
                            yield name, json.loads(data)
                        name, data, event_id = "message", "", None
                    elif line.startswith(":"):
                        continue
                    else:
                        key, _, value = line.partition(":")
                        value = value.removeprefix(" ")
                        if key == "event":
                            name = value
                        elif key == "data":
                            data = f"{data}\n{value}" if data else value
                        elif key == "id" and value.isdigit():
                            event_id = int(value)
        except httpx.TransportError as error:
            now = time.monotonic()
            failing_since = failing_since or now
            if now - failing_since > GIVE_UP_AFTER:
                raise unreachable(api.url, error) from None
        await asyncio.sleep(RECONNECT_DELAY)


async def watch(
    api: Api,
    mailing_id: int,
    *,
    console: Console,
    done: Callable[[Tally], bool] | None = None,
) -> Tally:
    """Show the table until the mailing is finished (or ``done(tally)`` says so)."""
    finished = done or (lambda tally: tally.finished)
    tally = Tally(mailing_id)
    mailing = await api.get(f"/mailing/{mailing_id}")
    tally.name, tally.status = str(mailing["name"]), int(mailing["status"])
    tally.take_stats(await api.get(f"/mailing/{mailing_id}/stats"))
    last_event_id: list[int | None] = [None]

    async def follow() -> None:
        async for name, data in sse_events(
            api, f"/mailing/{mailing_id}/events", last_event_id=last_event_id
        ):
            if name == "status":
                tally.apply(data)
            elif name == "unsubscribed":  # a recipient opted out; no status changed
                tally.note(data)

    async def poll() -> None:
        synced = time.monotonic()
        failing_since: float | None = None
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                mailing = await api.get(f"/mailing/{mailing_id}")
                tally.status = int(mailing["status"])
                if tally.finished or time.monotonic() - synced > RESYNC_SECONDS:
                    tally.take_stats(await api.get(f"/mailing/{mailing_id}/stats"))
                    synced = time.monotonic()
            except CliFailure as failure:
                # A restarting API: the stream waits for it as long, so does this.
                now = time.monotonic()
                failing_since = failing_since or now
                if failure.code != EXIT_UNREACHABLE or now - failing_since > GIVE_UP_AFTER:
                    raise
                continue
            failing_since = None
            if finished(tally):
                await _drained(tally)
                # The counts as the server has them, whatever came during the drain.
                with contextlib.suppress(CliFailure):
                    tally.take_stats(await api.get(f"/mailing/{mailing_id}/stats"))
                return

    with Live(render(tally), console=console, refresh_per_second=4) as live:
        if not finished(tally):
            tasks = [
                asyncio.create_task(follow(), name=f"watch-{mailing_id}-events"),
                asyncio.create_task(poll(), name=f"watch-{mailing_id}-poll"),
                asyncio.create_task(_refresh(live, tally), name=f"watch-{mailing_id}-refresh"),
            ]
            try:
                ended, _ = await asyncio.wait(tasks[:2], return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            for task in ended:
                if (error := task.exception()) is not None:
                    raise error
        live.update(render(tally))
    if not console.is_terminal:  # Live's last picture there ends without a line break
        console.line()
    return tally


async def _drained(tally: Tally) -> None:
    """Until the stream has been quiet ``DRAIN_QUIET`` seconds (``DRAIN_MAX`` at most)."""
    start = time.monotonic()
    while True:
        now = time.monotonic()
        if now - max(start, tally.last_event_at) >= DRAIN_QUIET or now - start >= DRAIN_MAX:
            return
        await asyncio.sleep(0.05)


async def _refresh(live: Live, tally: Tally) -> None:
    while True:
        live.update(render(tally))
        await asyncio.sleep(0.25)
