"""The receipt inbox: delivery receipts from the SMSC into the database, in batches.

The SMPP client hands each receipt to ``receive`` and answers the SMSC's deliver_sm only when
it returns: it returns once the receipt is committed, so a receipt is never acknowledged and
then lost (if the write fails, the SMSC is told to try again).

Most receipts name a part that this process has just submitted and that the dispatcher's
writer has not recorded yet (the SMSC reports within milliseconds; the writer writes in
batches). Such a receipt (``DeliveryReceipt.sent_here``) waits in memory, unanswered, for the
writer: when it records the part it takes the receipt (``take``) and writes it in the same
transaction (``InHand``: answered after that commit). If the writer recorded the part without
it (the receipt came while its batch was being written), it is applied once the writer reports
the part recorded (``parts_recorded``; ``receipts.apply``: no ``receipt`` row written and
deleted). It waits ``hold`` seconds at most;
then, like every other receipt, it is applied at once, and one whose part is not recorded is
stored in ``receipt`` to wait for it: it is matched again when the writer records the parts it
names, and by a periodic sweep. Receipts that match nothing for ``keep`` seconds are dropped,
logged and counted. A crash loses only unanswered receipts, which the SMSC delivers again.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from rassylka.channels.base import DeliveryReport
from rassylka.channels.smpp import DeliveryReceipt
from rassylka.db import utcnow
from rassylka.engine import outage
from rassylka.engine.waiting import wait_any
from rassylka.messages import receipts
from rassylka.metrics import definitions as metrics

logger = logging.getLogger(__name__)
# How long a batch of receipts collects before it is written.
COLLECT = 0.02
MAX_BATCH = 500
SWEEP_INTERVAL = 5.0
# How long a receipt may wait for the part it names (a day: no writer is that late).
KEEP = 86400.0
# How long a receipt for a part sent here waits in memory for the writer to record the part.
HOLD = 2.0
# Peer ids of the parts recorded lately that are remembered: a receipt naming one is applied
# at once rather than held (at least as many as the SMPP channel remembers it sent).
RECENT = 100_000

_Pending = tuple[DeliveryReport, "asyncio.Future[None]"]


class ReceiptInbox:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        keep: float = KEEP,
        sweep_interval: float = SWEEP_INTERVAL,
        hold: float = HOLD,
        clock: Callable[[], datetime] = utcnow,
        source: str = "smpp",
    ) -> None:
        """``source``: the metrics' name for the receipts matched here (the SMSC's; the
        sweep also matches the stored callbacks of an HTTP provider, the worker's ``http``)."""
        self._sessionmaker = sessionmaker
        self.source = source
        self._keep = keep
        self._sweep_interval = sweep_interval
        self._hold = hold
        self._clock = clock
        # Receipts to apply now.
        self._incoming: list[_Pending] = []
        # Receipts for parts sent here and not recorded yet, by peer id; and when each peer id
        # began to wait, oldest first.
        self._held: dict[str, list[_Pending]] = {}
        self._held_since: deque[tuple[float, str]] = deque()
        # Receipts came since the last look: a burst gathers for COLLECT before it is written
        # (receipts whose parts were just recorded are a batch already, and go at once).
        self._arrived = False
        self._newly_held = False
        # Peer ids recorded that no receipt in memory waited for: stored receipts may.
        self._recorded: list[str] = []
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._ready = asyncio.Event()
        # Told when receipts wait for parts not recorded yet (the worker: the dispatcher's
        # writer then writes what it holds at once).
        self.on_waiting: Callable[[], None] | None = None
        # received, matched (receipts that found their part), settled (messages), unknown
        # (dropped after ``keep``): for the log and for whoever watches this worker.
        self.counts: Counter[str] = Counter()

    def receive(self, receipt: DeliveryReceipt) -> asyncio.Future[None]:
        """Take one receipt: the future is done once it is committed, and has the error if it
        could not be. A future rather than a coroutine, so the SMPP session awaits it without
        a task per receipt."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        peer_id = receipt.peer_message_id
        pending = (DeliveryReport(peer_id, receipt.state, receipt.error), future)
        if receipt.sent_here and peer_id not in self._recent:
            waiting = self._held.get(peer_id)
            if waiting is None:
                self._held[peer_id] = [pending]
                self._held_since.append((loop.time(), peer_id))
            else:
                waiting.append(pending)
            self._newly_held = True
        else:
            self._incoming.append(pending)
            self._arrived = True
        self._ready.set()
        return future

    def holding(self) -> bool:
        """Whether receipts wait in memory for parts the writer has not recorded yet."""
        return bool(self._held)

    def take(self, peer_ids: Iterable[str]) -> InHand | None:
        """The receipts held for these parts, which the writer is about to record sent: it
        writes them in the same transaction (``InHand``), and answers them once it commits."""
        held = self._held
        if not held:
            return None
        taken = {}
        for peer_id in peer_ids:
            waiting = held.pop(peer_id, None)
            if waiting is not None:
                taken[peer_id] = waiting
        return InHand(self, taken) if taken else None

    def parts_recorded(self, peer_ids: Iterable[str]) -> None:
        """The writer recorded SMS parts with these peer ids: receipts may wait for them."""
        self._recorded.extend(self._mark_recorded(peer_ids))
        self._ready.set()

    def _mark_recorded(self, peer_ids: Iterable[str]) -> list[str]:
        """Remember these parts as recorded (a receipt that names one from now on goes at
        once) and send on the receipts held for them; the ids none was held for."""
        recent, none_held = self._recent, []
        for peer_id in peer_ids:
            recent[peer_id] = None
            recent.move_to_end(peer_id)
            waiting = self._held.pop(peer_id, None)
            if waiting is None:
                none_held.append(peer_id)
            else:
                self._give_back(waiting)
        while len(recent) > RECENT:
            recent.popitem(last=False)
        return none_held

    def _give_back(self, waiting: list[_Pending]) -> None:
        """Receipts to write the usual way (``_apply``)."""
        self._incoming.extend(waiting)
        self._ready.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Write and match until ``stop``; then what is in hand is written before returning."""
        loop = asyncio.get_running_loop()
        next_sweep = loop.time() + self._sweep_interval
        while True:
            if not self._incoming and not self._recorded:
                if stop.is_set():
                    if not self._held:
                        return
                    self._release(float("inf"))  # the writer has stopped: nothing to wait for
                    continue
                until = next_sweep
                if self._held_since:
                    until = min(until, self._held_since[0][0] + self._hold)
                await wait_any(self._ready, stop, seconds=max(0.0, until - loop.time()))
            self._ready.clear()
            if self._newly_held:
                # At once, not after COLLECT: held receipts are written only once the writer
                # has recorded their parts, so the sooner it is asked, the sooner they go.
                self._newly_held = False
                if self.on_waiting is not None:
                    self.on_waiting()
            if self._arrived:
                self._arrived = False
                await asyncio.sleep(COLLECT)  # let a burst gather into one transaction
            self._release(loop.time() - self._hold)
            if self._incoming:
                await self._apply()
            if self._recorded:
                peer_ids, self._recorded = sorted(set(self._recorded)), []
                await self._match(peer_ids)
            if loop.time() >= next_sweep:
                next_sweep = loop.time() + self._sweep_interval
                await self._sweep()

    def _release(self, before: float) -> None:
        """Receipts held since before ``before`` are applied now, recorded parts or not."""
        since = self._held_since
        while since and since[0][0] <= before:
            _, peer_id = since.popleft()
            waiting = self._held.pop(peer_id, None)
            if waiting is not None:
                self._incoming.extend(waiting)

    async def _apply(self) -> None:
        batch, self._incoming = self._incoming[:MAX_BATCH], self._incoming[MAX_BATCH:]
        reports = [report for report, _ in batch]
        try:
            async with self._sessionmaker() as session, session.begin():
                matched = await receipts.apply(session, reports=reports, now=self._clock())
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as error:
            outage.failed(
                error,
                logger,
                "storing %s delivery receipts failed; the SMSC will resend",
                len(batch),
            )
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            metrics.receipt(self.source, metrics.REJECTED, len(batch))
            return
        for _, future in batch:
            if not future.done():
                future.set_result(None)
        self._count(len(batch), matched)
        if matched.receipts < len(batch):
            if self.on_waiting is not None:
                self.on_waiting()
            logger.info(
                "%s of %s delivery receipts name no sent part yet; they wait for it",
                len(batch) - matched.receipts,
                len(batch),
            )

    async def _match(self, peer_ids: list[str] | None) -> None:
        try:
            async with self._sessionmaker() as session, session.begin():
                matched = await receipts.match(session, now=self._clock(), peer_ids=peer_ids)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            outage.failed(error, logger, "matching delivery receipts failed; the sweep tries again")
            return
        outage.database_back()
        self._count(0, matched)

    async def _sweep(self) -> None:
        await self._match(None)
        before = self._clock() - timedelta(seconds=self._keep)
        try:
            async with self._sessionmaker() as session, session.begin():
                dropped = await receipts.drop_unmatched(session, before=before)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            outage.failed(error, logger, "dropping stale delivery receipts failed")
            return
        if dropped:
            self.counts["unknown"] += len(dropped)
            metrics.receipt(self.source, metrics.UNMATCHED, len(dropped))
            logger.warning(
                "dropped %s delivery receipts naming no message we sent (SMSC ids %s%s)",
                len(dropped),
                ", ".join(dropped[:10]),
                ", …" if len(dropped) > 10 else "",
            )

    def _count(self, received: int, matched: receipts.Matched) -> None:
        """``received`` receipts applied now (0: stored ones matched later), ``matched``."""
        self.counts["received"] += received
        self.counts["matched"] += matched.receipts
        self.counts["settled"] += len(matched.settled)
        metrics.receipt(self.source, metrics.MATCHED, matched.receipts)
        if received:
            metrics.receipt(self.source, metrics.WAITING, max(0, received - matched.receipts))


class InHand:
    """Receipts taken from the inbox by the dispatcher's writer, to be written with the
    ``sent`` of the parts they name, in one transaction. Still unanswered: ``committed``
    answers those written and gives the others back to the inbox (their message was not
    recorded by that batch: they go the usual way); ``cancel`` drops them unanswered (the
    SMSC delivers them again)."""

    def __init__(self, inbox: ReceiptInbox, taken: dict[str, list[_Pending]]) -> None:
        self._inbox = inbox
        self._taken = taken
        self.reports: dict[str, list[DeliveryReport]] = {
            peer_id: [report for report, _ in waiting] for peer_id, waiting in taken.items()
        }

    def committed(self, written: Iterable[str], *, settled: int) -> None:
        """The receipts of the parts ``written`` are committed (with ``settled`` messages
        settled by them): answer them; give the rest back to the inbox."""
        inbox = self._inbox
        written = list(written)
        answered = 0
        for peer_id in written:
            for _, future in self._taken.pop(peer_id, ()):
                answered += 1
                if not future.done():
                    future.set_result(None)
        # Receipts that came while the batch was written (another part's, a copy) were held:
        # the parts are recorded now, so they go as ``parts_recorded`` sends them.
        inbox._mark_recorded(written)
        inbox.counts["received"] += answered
        inbox.counts["matched"] += answered
        inbox.counts["settled"] += settled
        inbox.counts["with_sent"] += answered
        metrics.receipt(inbox.source, metrics.MATCHED, answered)
        for waiting in self._taken.values():
            inbox._give_back(waiting)
        self._taken = {}

    def cancel(self) -> None:
        for waiting in self._taken.values():
            for _, future in waiting:
                future.cancel()
        self._taken = {}
