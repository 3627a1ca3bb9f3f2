"""The dispatcher: claims due messages, renders them, sends them, records what happened.

One *lane* per channel, each a small pipeline:

    claimer ──► queue of rendered messages ──► N senders ──► results ──► writer
    (claim a batch with a lease,               (rate limit,   (one transaction per
     render it, render failures                 one send       batch of outcomes,
     go straight to results)                    each)          error-rate check)

The dispatcher, not the transports, owns concurrency, rate limits and the error budget
(listmonk's rule); a transport only says whether each message was accepted or why not.

Stopping (SIGTERM): the claimer stops claiming, senders finish the send they are in, messages
claimed but not yet sent are released to the queue (their attempt uncounted), and the writer
records every outcome before the lane ends. Nothing claimed is left behind except by a crash,
and then the lease brings it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from rassylka.channels.base import (
    Accepted,
    Channel,
    ChannelKind,
    DeliveryReport,
    OutboundMessage,
    Outcome,
    PermanentChannelError,
    TransientChannelError,
)
from rassylka.channels.dkim import DkimKey
from rassylka.channels.email_message import MessageIds
from rassylka.clients.models import Client
from rassylka.config import DEFAULT_PUBLIC_URL, Settings
from rassylka.db import utcnow
from rassylka.engine.outage import Backoff, is_away
from rassylka.engine.ratelimit import RateLimiter
from rassylka.engine.retry import RetryPolicy
from rassylka.engine.upkeep import Statistics
from rassylka.engine.waiting import wait_any
from rassylka.errors import database_unavailable
from rassylka.mailings.models import Channel as MailingChannel
from rassylka.mailings.models import Mailing
from rassylka.mailings.timing import window_of
from rassylka.messages import queue, receipts
from rassylka.messages.models import MessageStatus
from rassylka.metrics import definitions as metrics
from rassylka.projects.models import Project, dkim_key_of
from rassylka.scheduling import (
    SendWindow,
    WindowError,
    contains,
    opening_at_or_after,
    zone_or_utc,
)
from rassylka.templates.budget import RenderLimits
from rassylka.templates.models import Template
from rassylka.templates.rendering import (
    CLIENT_FIELDS as TEMPLATE_CLIENT_FIELDS,
)
from rassylka.templates.rendering import (
    RenderError,
    TemplateSources,
    compiled,
    context_for,
)
from rassylka.unsubscribe.tokens import Unsubscribe, stored_key_of

logger = logging.getLogger(__name__)

KIND_OF = {MailingChannel.EMAIL: ChannelKind.EMAIL, MailingChannel.SMS: ChannelKind.SMS}
CLIENT_GONE = "Клиент удалён до отправки"
HOLD_CHECK = 0.5
# How often results are written when they trickle in, and the batch that is written at once.
FLUSH_INTERVAL = 0.2
RECOVER_INTERVAL = 10.0
# Successful sends in a row a mailing needs before its messages go in batches.
BATCH_AFTER = 16
DB_RETRY_DELAY = 1.0


@dataclass(frozen=True)
class DispatchConfig:
    batch_size: int = 500
    lease: float = 300.0
    poll_interval: float = 1.0
    concurrency: Mapping[int, int] | None = None
    rate_limit: Mapping[int, float] | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    error_rate_threshold: float = 0.5
    error_rate_window: int = 50
    render: RenderLimits = field(default_factory=RenderLimits)
    public_url: str = DEFAULT_PUBLIC_URL
    """The base of unsubscribe links (``RASSYLKA_PUBLIC_URL``)."""
    secret_key: str | None = None
    """Signs the unsubscribe links; None: the key stored in the database."""
    bounce_domain: str | None = None
    """Where the unsubscribe mailto goes (its listener takes it); None: no mailto."""

    @classmethod
    def from_settings(cls, settings: Settings) -> DispatchConfig:
        return cls(
            batch_size=settings.dispatch_batch_size,
            lease=settings.dispatch_lease,
            poll_interval=settings.dispatch_poll_interval,
            concurrency={
                MailingChannel.EMAIL: settings.email_concurrency,
                MailingChannel.SMS: settings.sms_concurrency,
            },
            rate_limit={
                MailingChannel.EMAIL: settings.email_rate_limit,
                MailingChannel.SMS: settings.sms_rate_limit,
            },
            retry=RetryPolicy.from_settings(settings),
            error_rate_threshold=settings.error_rate_threshold,
            error_rate_window=settings.error_rate_window,
            render=RenderLimits(
                max_bytes=settings.max_render_bytes, max_seconds=settings.max_render_seconds
            ),
            public_url=settings.public_base_url,
            secret_key=settings.secret_key.get_secret_value() if settings.secret_key else None,
            bounce_domain=settings.bounce_domain,
        )


@dataclass(frozen=True)
class _Item:
    claimed: queue.Claimed
    message: OutboundMessage


@dataclass(frozen=True)
class _RenderFailure:
    reason: str


_Result = tuple[queue.Claimed, Outcome | _RenderFailure]


class ReceiptsInHand(Protocol):
    """Delivery receipts already come for SMS parts that the writer is about to record sent
    (the receipt inbox holds them, unanswered): written in the same transaction."""

    @property
    def reports(self) -> Mapping[str, Sequence[DeliveryReport]]:
        """By the peer's id of the part, in the order they came."""

    def committed(self, written: Iterable[str], *, settled: int) -> None:
        """The receipts of the parts ``written`` are committed (``settled`` messages settled
        by them); the others were not written."""

    def cancel(self) -> None:
        """None will be written (the writer is cancelled)."""


class Dispatcher:
    """Sends due messages through ``channels`` (keyed by the mailing channel: 1 email, 2 SMS)
    until ``stop`` is set; ``wake()`` tells it new work is queued."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        channels: Mapping[int, Channel],
        config: DispatchConfig | None = None,
        *,
        clock: Callable[[], datetime] = utcnow,
        on_parts: Callable[[list[str]], None] | None = None,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._config = config or DispatchConfig()
        self.clock = clock
        # Told the peer ids of SMS parts just recorded as sent: receipts that came before
        # them are waiting (the receipt inbox matches them).
        self.on_parts = on_parts
        # Whether something waits for outcomes to be written (delivery receipts held for the
        # parts they name): while it says so, each outcome is written as it comes, not at the
        # writer's next interval. ``flush`` covers the outcomes already in hand; this, those
        # whose send was still finishing when the receipt came (its submit_sm_resp and the
        # receipt often arrive in one read).
        self.outcomes_awaited: Callable[[], bool] | None = None
        # Takes the receipts in hand for the SMS parts (peer ids) about to be recorded sent,
        # to write them in the same transaction (the receipt inbox's ``take``).
        self.take_receipts: Callable[[list[str]], ReceiptsInHand | None] | None = None
        # Fresh planner statistics for the queue's tables (see engine.upkeep); the worker's
        # scheduler shares it.
        self.statistics = Statistics(sessionmaker)
        # Mailings with messages claimed into this worker's memory, and those of them that a
        # person paused or cancelled (or that ended) since: checked every HOLD_CHECK seconds,
        # so a pause stops their sends within about that long.
        self._in_memory: Counter[int] = Counter()
        self._held: set[int] = set()
        self._lanes = [
            _Lane(self, MailingChannel(channel), transport)
            for channel, transport in channels.items()
        ]
        # Error budget per mailing over its latest sends in this worker: True = an error.
        # A mailing over budget stops being sent at once (in memory); the writer then
        # records the pause, and a later claim that takes its messages means a person
        # resumed it.
        self._recent: dict[int, deque[bool]] = {}
        self._paused: set[int] = set()
        self._pauses_to_write: dict[int, str] = {}
        self._paused_at: dict[int, float] = {}
        self._unsubscribe: Unsubscribe | None = None
        self.stored_message_ids: MessageIds | None = None
        """Without ``RASSYLKA_SECRET_KEY``: Message-IDs keyed by the stored installation key
        (read with the unsubscribe key), so every process makes the same ones."""

    @property
    def config(self) -> DispatchConfig:
        return self._config

    async def unsubscribe(self) -> Unsubscribe:
        """How this installation signs unsubscribe links (the stored key read once)."""
        if self._unsubscribe is None:
            config = self._config
            key = config.secret_key.encode() if config.secret_key else b""
            if not key:
                key = await stored_key_of(self._sessionmaker)
                # Message-IDs too: the same on a retry after a restart, or by another worker.
                self.stored_message_ids = MessageIds(key)
            self._unsubscribe = Unsubscribe(key, config.public_url, config.bounce_domain)
        return self._unsubscribe

    def wake(self) -> None:
        for lane in self._lanes:
            lane.wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as group:
            watcher = group.create_task(self._watch(), name="hold-watch")
            try:
                async with asyncio.TaskGroup() as lanes:
                    for lane in self._lanes:
                        lanes.create_task(lane.run(stop), name=f"lane-{lane.channel.name}")
            finally:
                watcher.cancel()

    def flush(self) -> None:
        """Write the outcomes in hand now rather than at the writer's next interval (delivery
        receipts are waiting for the SMS parts they name)."""
        for lane in self._lanes:
            if lane.results:
                lane.results_ready.set()

    def is_paused(self, mailing_id: int) -> bool:
        return mailing_id in self._paused or mailing_id in self._held

    def batchable(self, mailing_id: int) -> bool:
        """Whether the mailing's messages may go in batches: its latest sends in this worker,
        at least ``BATCH_AFTER`` of them, all succeeded. Until then (a new or resumed mailing)
        and while any failed, one at a time, so its error budget is checked after each send
        rather than after batches already on their way."""
        recent = self._recent.get(mailing_id)
        return (
            recent is not None
            and len(recent) >= min(BATCH_AFTER, self._config.error_rate_window)
            and True not in recent
        )

    def _taken(self, mailing_id: int) -> None:
        self._in_memory[mailing_id] += 1

    def _done(self, mailing_id: int) -> None:
        self._in_memory[mailing_id] -= 1
        if self._in_memory[mailing_id] <= 0:
            del self._in_memory[mailing_id]
            self._held.discard(mailing_id)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(HOLD_CHECK)
            if not self._in_memory:
                continue
            try:
                async with self._sessionmaker() as session:
                    held = await queue.not_sending(
                        session, mailing_ids=list(self._in_memory), now=self.clock()
                    )
            except asyncio.CancelledError:
                raise
            except Exception as error:
                # A database that went away is said once, by the loops that need it.
                if not (is_away() or database_unavailable(error)):
                    logger.warning("checking the mailings in memory failed; checking again")
                continue
            self._held = held

    def _resumed(self, mailing_ids: set[int], *, claimed_at: float) -> None:
        """Claims take active mailings only: one claimed again, by a claim that began after
        its pause was recorded, was resumed by a person."""
        for mailing_id in mailing_ids & self._paused:
            paused_at = self._paused_at.get(mailing_id)
            if paused_at is not None and claimed_at > paused_at:
                self._paused.discard(mailing_id)
                del self._paused_at[mailing_id]
                self._recent.pop(mailing_id, None)

    def _note(self, mailing_id: int, outcome: Outcome | _RenderFailure) -> None:
        """Count one send against its mailing's error budget, pausing it when spent."""
        window = self._config.error_rate_window
        recent = self._recent.setdefault(mailing_id, deque(maxlen=window))
        is_error = not isinstance(outcome, Accepted)
        recent.append(is_error)
        if not is_error or mailing_id in self._paused or len(recent) < window:
            return
        errors = sum(recent)
        if errors / len(recent) < self._config.error_rate_threshold:
            return
        self._paused.add(mailing_id)
        self._pauses_to_write[mailing_id] = (
            f"Приостановлена автоматически: {errors} из {len(recent)} последних отправок "
            f"с ошибкой (порог {self._config.error_rate_threshold:.0%}). "
            f"Последняя ошибка: {_describe(outcome)}"
        )

    async def _write_pauses(
        self, session: AsyncSession, pauses: Mapping[int, str], now: datetime
    ) -> None:
        for mailing_id, reason in pauses.items():
            if await queue.pause_mailing(session, mailing_id=mailing_id, reason=reason, now=now):
                logger.warning("mailing %s paused: %s", mailing_id, reason)

    def _pauses_written(self, mailing_ids: Iterable[int]) -> None:
        moment = time.monotonic()
        for mailing_id in mailing_ids:
            self._pauses_to_write.pop(mailing_id, None)
            self._paused_at[mailing_id] = moment


class _Lane:
    def __init__(self, dispatcher: Dispatcher, channel: MailingChannel, transport: Channel) -> None:
        config = dispatcher.config
        self.dispatcher = dispatcher
        self.channel = channel
        self.transport = transport
        self.kind = KIND_OF[channel]
        self.send_seconds = metrics.send_seconds(channel)
        self.concurrency = (config.concurrency or {}).get(channel, 16)
        rate = (config.rate_limit or {}).get(channel, 0.0)
        self.limiter = RateLimiter(rate)
        # Messages a sender hands the transport at once (see channels.base.Channel); one under
        # a rate limit, so the limit spaces single sends rather than batches.
        self.send_batch = 1 if rate else max(1, int(getattr(transport, "send_batch", 1)))
        # Claimed messages wait here for a sender; with a rate limit, no longer than half the
        # lease, so a slow channel does not let its claims expire.
        capacity = config.batch_size
        if rate:
            capacity = min(capacity, max(1, int(rate * config.lease / 2)))
        self.capacity = max(capacity, 1)
        self.queue: asyncio.Queue[_Item | None] = asyncio.Queue()
        self.wake = asyncio.Event()
        self.room = asyncio.Event()
        self.results: list[_Result] = []
        self.unsent: list[int] = []
        self.deferrals: list[queue.Deferral] = []
        self.results_ready = asyncio.Event()
        # The run of each message claimed and not recorded yet, and how many each run has: a
        # run with messages here is not finished (they are ``sending``), so it is not looked
        # at after every batch (see ``_record``).
        self.run_of: dict[int, int] = {}
        self.unrecorded: Counter[int] = Counter()
        self.stopping = False
        self.senders_done = False

    @property
    def _sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        return self.dispatcher._sessionmaker

    async def run(self, stop: asyncio.Event) -> None:
        senders = [
            asyncio.create_task(self._sender(), name=f"send-{self.kind}-{n}")
            for n in range(self.concurrency)
        ]
        writer = asyncio.create_task(self._writer(), name=f"write-{self.kind}")
        try:
            await self._claimer(stop)
        finally:
            self.stopping = True
            for _ in senders:
                self.queue.put_nowait(None)
            try:
                await asyncio.gather(*senders)
            finally:
                self.senders_done = True
                self.results_ready.set()
                await writer

    # -- claiming -------------------------------------------------------------------------

    async def _claimer(self, stop: asyncio.Event) -> None:
        config = self.dispatcher.config
        loop = asyncio.get_running_loop()
        next_recover = 0.0
        backoff = Backoff(DB_RETRY_DELAY)
        while not stop.is_set():
            try:
                if loop.time() >= next_recover:
                    await self.dispatcher.statistics.refresh()
                    await self._recover()
                    next_recover = loop.time() + min(RECOVER_INTERVAL, config.lease / 2)
                self.room.clear()  # before looking, so a sender's "room" is never missed
                room = self.capacity - self.queue.qsize()
                if room < max(1, self.capacity // 2):
                    await wait_any(stop, self.room, seconds=config.poll_interval)
                    continue
                # Before the claim, so a wake-up (NOTIFY) that comes during it is not lost.
                self.wake.clear()
                claimed = await self._claim(room)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                delay = backoff.failed(
                    error, logger, "claiming %s messages failed; trying again", self.kind
                )
                await wait_any(stop, seconds=delay)
                continue
            backoff.succeeded()
            if not claimed:
                await wait_any(stop, self.wake, seconds=config.poll_interval)

    async def _recover(self) -> None:
        async with self._sessionmaker() as session, session.begin():
            count = await queue.recover(session, channel=self.channel, now=self.dispatcher.clock())
        if count:
            logger.warning(
                "%s %s messages of expired claims returned to the queue", count, self.kind
            )

    async def _claim(self, limit: int) -> int:
        claimed_at = time.monotonic()
        now = self.dispatcher.clock()
        lease_until = now + timedelta(seconds=self.dispatcher.config.lease)
        # Before the claim's transaction: reading the stored key is a transaction of its own.
        unsubscribe = await self.dispatcher.unsubscribe()
        async with self._sessionmaker() as session, session.begin():
            claimed = await queue.claim(
                session,
                channel=self.channel,
                limit=limit,
                now=now,
                lease_until=lease_until,
            )
            if not claimed:
                return 0
            contexts = await _load_contexts(session, claimed)
        for message in claimed:
            self.run_of[message.id] = message.run_id
            self.unrecorded[message.run_id] += 1
        self.dispatcher._resumed({message.mailing_id for message in claimed}, claimed_at=claimed_at)
        failures: list[_Result] = []
        deferrals: list[queue.Deferral] = []
        for message in claimed:
            opening = _window_opening(message, contexts, now)
            if opening is not None:
                deferrals.append(queue.Deferral(message.id, opening))
                continue
            rendered = self._render(message, contexts, unsubscribe)
            if isinstance(rendered, _RenderFailure):
                failures.append((message, rendered))
            else:
                self.dispatcher._taken(message.mailing_id)
                self.queue.put_nowait(_Item(message, rendered))
        if deferrals:
            self.deferrals.extend(deferrals)
            self.results_ready.set()
        if failures:
            for message, failure in failures:
                self.dispatcher._note(message.mailing_id, failure)
            self.results.extend(failures)
            self.results_ready.set()
        return len(claimed)

    def _render(
        self, message: queue.Claimed, contexts: _Contexts, unsubscribe: Unsubscribe
    ) -> OutboundMessage | _RenderFailure:
        mailing = contexts.mailings.get(message.mailing_id)
        client = contexts.clients.get(message.client_id) if message.client_id else None
        if mailing is None:  # deleted between the claim and now: cascades remove the row too
            return _RenderFailure("Рассылка удалена до отправки")
        if client is None:
            return _RenderFailure(CLIENT_GONE)
        template, context = (
            mailing.template,
            context_for(
                client=client,
                project=mailing.project,
                mailing=mailing.fields,
                unsubscribe_url=unsubscribe.url(message.id),
            ),
        )
        limits = self.dispatcher.config.render
        try:
            if self.kind is ChannelKind.EMAIL:
                email = template.render_email(context, limits)
                return OutboundMessage(
                    id=message.id,
                    kind=self.kind,
                    to=message.address,
                    subject=email.subject,
                    text=email.text,
                    html=email.html,
                    dkim=mailing.dkim,
                    sender=mailing.email_from,
                    reply_to=mailing.email_reply_to,
                    unsubscribe=unsubscribe.uris(message.id),
                    message_ids=self.dispatcher.stored_message_ids,
                )
            return OutboundMessage(
                id=message.id,
                kind=self.kind,
                to=message.address,
                text=template.render_sms(context, limits),
                source=mailing.sms_sender,
            )
        except RenderError as error:
            return _RenderFailure(error.reason)

    # -- sending --------------------------------------------------------------------------

    async def _sender(self) -> None:
        last = False
        while not last:
            item = await self.queue.get()
            if item is None:
                return
            batch = [item]
            batchable = self.dispatcher.batchable
            while (
                len(batch) < self.send_batch
                and not self.queue.empty()
                and batchable(batch[-1].claimed.mailing_id)
            ):
                more = self.queue.get_nowait()
                if more is None:  # stopping: this sender's last batch
                    last = True
                    break
                batch.append(more)
            if self.queue.qsize() <= self.capacity // 2:
                self.room.set()
            sendable: list[_Item] = []
            for item in batch:
                if not self.stopping:
                    await self.limiter.acquire()
                if self.stopping or self.dispatcher.is_paused(item.claimed.mailing_id):
                    self.unsent.append(item.claimed.id)
                    self.dispatcher._done(item.claimed.mailing_id)
                    self.results_ready.set()
                    continue
                sendable.append(item)
            if not sendable:
                continue
            outcomes = await self._send([item.message for item in sendable])
            for item, outcome in zip(sendable, outcomes, strict=True):
                self.dispatcher._done(item.claimed.mailing_id)
                self.dispatcher._note(item.claimed.mailing_id, outcome)
                self.results.append((item.claimed, outcome))
            awaited = self.dispatcher.outcomes_awaited
            if len(self.results) >= self.dispatcher.config.batch_size or (
                awaited is not None and awaited()
            ):
                self.results_ready.set()

    async def _send(self, messages: list[OutboundMessage]) -> list[Outcome]:
        started = time.perf_counter()
        try:
            outcomes = await self.transport.send(messages)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a transport's bug must not lose the messages
            self.send_seconds.observe(time.perf_counter() - started)
            ids = ", ".join(str(message.id) for message in messages)
            logger.exception("the %s transport raised on messages %s", self.kind, ids)
            return [TransientChannelError(f"{type(error).__name__}: {error}")] * len(messages)
        self.send_seconds.observe(time.perf_counter() - started)
        if len(outcomes) != len(messages):
            return [TransientChannelError("транспорт не вернул результат отправки")] * len(messages)
        return outcomes

    # -- recording ------------------------------------------------------------------------

    async def _writer(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FLUSH_INTERVAL):
                    await self.results_ready.wait()
            self.results_ready.clear()
            finishing = self.senders_done
            results, self.results = self.results, []
            unsent, self.unsent = self.unsent, []
            deferrals, self.deferrals = self.deferrals, []
            if results or unsent or deferrals or self.dispatcher._pauses_to_write:
                await self._record(results, unsent, deferrals)
            if finishing and not self.results and not self.unsent and not self.deferrals:
                return

    async def _record(
        self, results: list[_Result], unsent: list[int], deferrals: list[queue.Deferral]
    ) -> None:
        """Write outcomes until the database takes them: they exist nowhere else. Delivery
        receipts already in hand for the SMS parts recorded sent are written with them."""
        in_hand = self._take_receipts(results)
        backoff = Backoff(DB_RETRY_DELAY)
        while True:
            now = self.dispatcher.clock()
            pauses = dict(self.dispatcher._pauses_to_write)
            try:
                async with self._sessionmaker() as session, session.begin():
                    # The mailings' rows before the messages' events (see messages.queue).
                    await self.dispatcher._write_pauses(session, pauses, now)
                    written = await self._write(session, results, unsent, deferrals, now, in_hand)
                self.dispatcher._pauses_written(pauses)
                if in_hand is not None:
                    in_hand.committed(written.receipts_written, settled=written.settled)
                if written.part_ids and self.dispatcher.on_parts is not None:
                    self.dispatcher.on_parts(written.part_ids)
                backoff.succeeded()
                finishable = self._recorded(results, unsent, deferrals)
                if finishable:
                    await self._finish(finishable)
                return
            except asyncio.CancelledError:
                if in_hand is not None:
                    in_hand.cancel()
                raise
            except Exception as error:
                delay = backoff.failed(
                    error, logger, "recording %s outcomes failed; trying again", len(results)
                )
                await asyncio.sleep(delay)

    def _recorded(
        self, results: list[_Result], unsent: list[int], deferrals: list[queue.Deferral]
    ) -> set[int]:
        """Forget the messages just recorded; the runs of ``results`` that may have ended:
        those with no message claimed here and not recorded yet."""
        ids = [claimed.id for claimed, _ in results]
        ids += unsent
        ids += [deferral.id for deferral in deferrals]
        unrecorded = self.unrecorded
        for message_id in ids:
            run_id = self.run_of.pop(message_id, None)
            if run_id is not None:
                unrecorded[run_id] -= 1
                if unrecorded[run_id] <= 0:
                    del unrecorded[run_id]
        return {claimed.run_id for claimed, _ in results if claimed.run_id not in unrecorded}

    def _take_receipts(self, results: list[_Result]) -> ReceiptsInHand | None:
        take = self.dispatcher.take_receipts
        if take is None or self.channel is not MailingChannel.SMS:
            return None
        peer_ids = [
            peer_id
            for _, outcome in results
            if isinstance(outcome, Accepted)
            for peer_id in self._part_ids(outcome)
        ]
        return take(peer_ids) if peer_ids else None

    async def _finish(self, run_ids: set[int]) -> None:
        """Close the runs whose last message this batch settled (and maybe their mailing).

        In its own transaction, after the outcomes are committed: of two lanes settling a
        run's last messages at once, the one that looks last sees both, whereas inside their
        own transactions each would still see the other's messages pending."""
        try:
            async with self._sessionmaker() as session, session.begin():
                await queue.finish_runs(session, now=self.dispatcher.clock(), run_ids=run_ids)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            if not (is_away() or database_unavailable(error)):
                logger.warning("closing runs %s failed; the scheduler closes them later", run_ids)

    async def _write(
        self,
        session: AsyncSession,
        results: list[_Result],
        unsent: list[int],
        deferrals: list[queue.Deferral],
        now: datetime,
        in_hand: ReceiptsInHand | None = None,
    ) -> _Written:
        """Record a batch, with the receipts ``in_hand`` for its SMS parts."""
        retry = self.dispatcher.config.retry
        reports = in_hand.reports if in_hand is not None else {}
        sent: list[queue.SentResult] = []
        retries: list[queue.RetryResult] = []
        failed: list[queue.FailedResult] = []
        for claimed, outcome in results:
            if isinstance(outcome, Accepted):
                part_ids = self._part_ids(outcome)
                part_states: tuple[tuple[str | None, str | None], ...] = ()
                settled = None
                if reports and any(peer_id in reports for peer_id in part_ids):
                    part_states, settled = receipts.in_hand(part_ids, reports)
                sent.append(
                    queue.SentResult(
                        claimed.id,
                        outcome.peer_message_id,
                        outcome.reply,
                        outcome.parts,
                        part_ids,
                        part_states,
                        settled,
                    )
                )
            elif isinstance(outcome, _RenderFailure):
                failed.append(queue.FailedResult(claimed.id, outcome.reason, None))
            elif isinstance(outcome, PermanentChannelError):
                failed.append(queue.FailedResult(claimed.id, outcome.reply, outcome.reply))
            else:
                moment = retry.next_attempt(
                    attempts=claimed.attempts, created_at=claimed.created_at, now=now
                )
                if moment is None:
                    reason = f"Попытки исчерпаны ({claimed.attempts}): {outcome.reply}"
                    failed.append(queue.FailedResult(claimed.id, reason, outcome.reply))
                else:
                    retries.append(queue.RetryResult(claimed.id, outcome.reply, moment))
        with_receipts = await queue.record(
            session,
            sent=sent,
            retries=retries,
            failed=failed,
            unsent=unsent,
            deferrals=deferrals,
            now=now,
        )
        self._count(session, sent, retries, failed, with_receipts)
        return _Written(
            part_ids=[
                peer_id
                for result in sent
                if result.id not in with_receipts
                for peer_id in result.part_ids
            ],
            receipts_written=[
                peer_id
                for result in sent
                if result.id in with_receipts
                for peer_id in result.part_ids
            ],
            settled=sum(1 for result in sent if result.settled and result.id in with_receipts),
        )

    def _count(
        self,
        session: AsyncSession,
        sent: list[queue.SentResult],
        retries: list[queue.RetryResult],
        failed: list[queue.FailedResult],
        with_receipts: set[int],
    ) -> None:
        """The batch's status changes, counted once it commits (``metrics.on_commit``): a
        few additions per batch, nothing per message but for those settled by receipts."""
        channel = self.channel.value
        settled = [
            (channel, result.settled[0])
            for result in sent
            if result.settled is not None and result.id in with_receipts
        ]
        metrics.on_commit_counts(
            session,
            (
                (channel, MessageStatus.SENT, len(sent)),
                (channel, metrics.RETRIED, len(retries)),
                (channel, MessageStatus.FAILED, len(failed)),
            ),
        )
        if settled:
            metrics.on_commit(session, settled)

    def _part_ids(self, accepted: Accepted) -> tuple[str, ...]:
        """Receipts come for SMS only, per part; a peer that numbers no parts numbers the
        message (the HTTP provider)."""
        if self.channel is not MailingChannel.SMS:
            return ()
        if accepted.part_ids:
            return accepted.part_ids
        return (accepted.peer_message_id,) if accepted.peer_message_id else ()


@dataclass(frozen=True)
class _Written:
    part_ids: list[str]
    """The peer ids of the SMS parts the batch recorded sent, but for those below (receipts
    stored earlier may wait for them: ``Dispatcher.on_parts``)."""
    receipts_written: list[str]
    """The peer ids of the parts of messages recorded with their receipts in hand."""
    settled: int
    """Messages settled by those receipts."""


@dataclass(frozen=True)
class _MailingContext:
    fields: dict[str, Any]
    project: dict[str, Any]
    template: Any
    window: SendWindow | None
    dkim: DkimKey | None = None
    """The project's DKIM key, if it signs its email."""
    sms_sender: str | None = None
    """The project's own SMS sender; None: the transport's configured one."""
    email_from: str | None = None
    email_reply_to: str | None = None
    """The project's own From and Reply-To, if it has them."""


@dataclass(frozen=True)
class _Contexts:
    mailings: dict[int, _MailingContext]
    clients: dict[int, dict[str, Any]]


CLIENT_FIELDS = {name: getattr(Client, name) for name in TEMPLATE_CLIENT_FIELDS}
"""A client's fields as its templates see them."""


def _window(mailing: Mailing) -> SendWindow | None:
    try:
        return window_of(mailing)
    except WindowError:
        return None


async def _load_contexts(session: AsyncSession, claimed: Sequence[queue.Claimed]) -> _Contexts:
    """What the templates of a claimed batch need, in two queries."""
    mailing_ids = {message.mailing_id for message in claimed}
    client_ids = {message.client_id for message in claimed if message.client_id is not None}
    mailings: dict[int, _MailingContext] = {}
    rows = await session.execute(
        select(Mailing, Project, Template)
        .join(Project, Project.id == Mailing.project_id)
        .join(Template, Template.id == Mailing.template_id)
        .where(Mailing.id.in_(mailing_ids))
    )
    for mailing, project, template in rows:
        mailings[mailing.id] = _MailingContext(
            fields={
                "id": mailing.id,
                "name": mailing.name,
                "event": mailing.event,
                "timezone": mailing.timezone,
            },
            project={"id": project.id, "code": project.code, "name": project.name},
            template=compiled(
                TemplateSources(
                    email_subject=template.email_subject,
                    email_html=template.email_html,
                    email_text=template.email_text,
                    sms_text=template.sms_text,
                )
            ),
            window=_window(mailing),
            dkim=dkim_key_of(project),
            sms_sender=project.sms_sender or None,
            email_from=project.email_from,
            email_reply_to=project.email_reply_to,
        )
    clients: dict[int, dict[str, Any]] = {}
    if client_ids:
        # Columns, not ORM objects: a batch's clients are read once and never changed here.
        for row in await session.execute(
            select(*CLIENT_FIELDS.values()).where(queue.among(session, Client.id, client_ids))
        ):
            client = dict(zip(CLIENT_FIELDS, row, strict=True))
            client["tags"] = client["tags"] or []
            client["attributes"] = client["attributes"] or {}
            clients[client["id"]] = client
    return _Contexts(mailings=mailings, clients=clients)


def _window_opening(message: queue.Claimed, contexts: _Contexts, now: datetime) -> datetime | None:
    """When the recipient's window next opens, if it is shut now (else None)."""
    mailing = contexts.mailings.get(message.mailing_id)
    if mailing is None or mailing.window is None:
        return None
    zone = zone_or_utc(message.timezone)
    if contains(mailing.window, now, zone):
        return None
    return opening_at_or_after(mailing.window, now, zone)


def _describe(outcome: Outcome | _RenderFailure) -> str:
    return outcome.reason if isinstance(outcome, _RenderFailure) else outcome.reply
