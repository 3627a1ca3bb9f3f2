"""The receipt inbox: delivery receipts from the SMSC into the database, in batches.

The SMPP client hands each receipt to ``receive`` and answers the SMSC's deliver_sm only when
it returns: it returns once the receipt is committed, so a receipt is never acknowledged and
then lost (if the write fails, the SMSC is told to try again). Receipts are matched to their
messages at once, again when the writer records the parts they name (``parts_recorded``), and
by a periodic sweep; receipts that match nothing for ``keep`` seconds are dropped, logged and
counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from rassylka.channels.base import DeliveryReport
from rassylka.channels.smpp import DeliveryReceipt
from rassylka.db import utcnow
from rassylka.engine.waiting import wait_any
from rassylka.messages import receipts

logger = logging.getLogger(__name__)
# How long a batch of receipts collects before it is written.
COLLECT = 0.02
MAX_BATCH = 500
SWEEP_INTERVAL = 5.0
# How long a receipt may wait for the part it names (a day: no writer is that late).
KEEP = 86400.0


class ReceiptInbox:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        keep: float = KEEP,
        sweep_interval: float = SWEEP_INTERVAL,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._keep = keep
        self._sweep_interval = sweep_interval
        self._clock = clock
        self._incoming: list[tuple[DeliveryReport, asyncio.Future[None]]] = []
        self._recorded: set[str] = set()
        self._ready = asyncio.Event()
        # Told when stored receipts name parts not recorded yet (the worker: the dispatcher's
        # writer then writes what it holds at once).
        self.on_waiting: Callable[[], None] | None = None
        # received, matched (receipts that found their part), settled (messages), unknown
        # (dropped after ``keep``): for the log and for whoever watches this worker.
        self.counts: Counter[str] = Counter()

    def receive(self, receipt: DeliveryReceipt) -> asyncio.Future[None]:
        """Store one receipt: the future is done once it is committed, and has the error if it
        could not be. A future rather than a coroutine, so the SMPP session awaits it without
        a task per receipt."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        report = DeliveryReport(receipt.peer_message_id, receipt.state, receipt.error)
        self._incoming.append((report, future))
        self._ready.set()
        return future

    def parts_recorded(self, peer_ids: list[str]) -> None:
        """The writer recorded SMS parts with these peer ids: receipts may wait for them."""
        self._recorded.update(peer_ids)
        self._ready.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Write and match until ``stop``; then what is in hand is written before returning."""
        loop = asyncio.get_running_loop()
        next_sweep = loop.time() + self._sweep_interval
        while True:
            if not self._incoming and not self._recorded:
                if stop.is_set():
                    return
                await wait_any(self._ready, stop, seconds=max(0.0, next_sweep - loop.time()))
            self._ready.clear()
            if self._incoming:
                await asyncio.sleep(COLLECT)  # let a burst gather into one transaction
                await self._store()
            if self._recorded:
                peer_ids, self._recorded = sorted(self._recorded), set()
                await self._match(peer_ids)
            if loop.time() >= next_sweep:
                next_sweep = loop.time() + self._sweep_interval
                await self._sweep()

    async def _store(self) -> None:
        batch, self._incoming = self._incoming[:MAX_BATCH], self._incoming[MAX_BATCH:]
        reports = [report for report, _ in batch]
        now = self._clock()
        try:
            async with self._sessionmaker() as session, session.begin():
                await receipts.store(session, reports=reports, now=now)
                matched = await receipts.match(
                    session, now=now, peer_ids=[r.peer_message_id for r in reports]
                )
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as error:
            logger.exception(
                "storing %s delivery receipts failed; the SMSC will resend", len(batch)
            )
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
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
        except Exception:
            logger.exception("matching delivery receipts failed; the sweep tries again")
            return
        self._count(0, matched)

    async def _sweep(self) -> None:
        await self._match(None)
        before = self._clock() - timedelta(seconds=self._keep)
        try:
            async with self._sessionmaker() as session, session.begin():
                dropped = await receipts.drop_unmatched(session, before=before)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("dropping stale delivery receipts failed")
            return
        if dropped:
            self.counts["unknown"] += len(dropped)
            logger.warning(
                "dropped %s delivery receipts naming no message we sent (SMSC ids %s%s)",
                len(dropped),
                ", ".join(dropped[:10]),
                ", …" if len(dropped) > 10 else "",
            )

    def _count(self, received: int, matched: receipts.Matched) -> None:
        self.counts["received"] += received
        self.counts["matched"] += matched.receipts
        self.counts["settled"] += len(matched.settled)
