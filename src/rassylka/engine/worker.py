"""The worker: the scheduler and the dispatcher in one process, woken by PostgreSQL.

``rassylka worker`` runs one alone (any number of them against one PostgreSQL);
``rassylka serve`` runs one inside the API process (the embedded default).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Mapping

from sqlalchemy.ext.asyncio import AsyncEngine

from rassylka.channels.base import Channel
from rassylka.channels.registry import describe, open_channels
from rassylka.config import Settings
from rassylka.db import create_checked_engine, create_sessionmaker
from rassylka.engine.dispatcher import DispatchConfig, Dispatcher
from rassylka.engine.inbound import InboundTexts
from rassylka.engine.listening import listen
from rassylka.engine.receipts import ReceiptInbox
from rassylka.engine.scheduler import Scheduler
from rassylka.engine.upkeep import ExpiredKeys
from rassylka.messages.queue import EVENTS_CHANNEL, NOTIFY_CHANNEL, SCHEDULE_CHANNEL
from rassylka.metrics.server import MetricsServer
from rassylka.webhooks.delivery import WebhookConfig, WebhookSender

logger = logging.getLogger(__name__)
# How long in-flight sends get to finish once a stop is asked for.
STOP_GRACE = 30.0
# How long receipts in hand get to be written once the channels are closed.
RECEIPTS_GRACE = 5.0


class Worker:
    def __init__(
        self,
        engine: AsyncEngine,
        channels: Mapping[int, Channel],
        config: DispatchConfig | None = None,
        *,
        schedule: bool = True,
        receipts: ReceiptInbox | None = None,
        webhooks: WebhookConfig | None = None,
        idempotency_ttl: float = 86400.0,
    ) -> None:
        """``receipts`` is the inbox the channels hand delivery receipts to (see
        ``Worker.open``); the worker runs it and tells it of recorded SMS parts. ``webhooks``
        configures the sender of the CRM's webhooks, which runs beside the sending;
        ``idempotency_ttl``, how long the API's idempotency keys are kept."""
        self.engine = engine
        self.channels = channels
        sessionmaker = create_sessionmaker(engine)
        self.receipts = receipts or ReceiptInbox(sessionmaker)
        self.dispatcher = Dispatcher(
            sessionmaker, channels, config, on_parts=self.receipts.parts_recorded
        )
        # Receipts that came before their message was recorded sent wait for the writer:
        # it writes at once instead of at its next interval.
        self.receipts.on_waiting = self.dispatcher.flush
        self.dispatcher.outcomes_awaited = self.receipts.holding
        # Receipts in hand are written with the ``sent`` of their parts, in one transaction.
        self.dispatcher.take_receipts = self.receipts.take
        self.scheduler = (
            Scheduler(
                sessionmaker,
                on_new_work=self.dispatcher.wake,
                statistics=self.dispatcher.statistics,  # one look at the tables per worker
            )
            if schedule
            else None
        )
        self.webhooks = WebhookSender(sessionmaker, webhooks)
        self.expired_keys = ExpiredKeys(engine, ttl=idempotency_ttl)
        self.stop_event = asyncio.Event()

    @classmethod
    def open(cls, engine: AsyncEngine, settings: Settings) -> Worker:
        """A worker with the transports the settings name, their receipts wired to it."""
        # Receipts the inbox matches later are the SMS transport's: an HTTP provider's
        # callbacks wait in the same table (for the metrics).
        source = "http" if settings.sms_http_url and not settings.smpp_host else "smpp"
        sessionmaker = create_sessionmaker(engine)
        inbox = ReceiptInbox(sessionmaker, source=source)
        inbound = InboundTexts.from_settings(sessionmaker, settings)
        channels = open_channels(settings, on_receipt=inbox.receive, on_inbound=inbound.receive)
        logger.info("sending through %s", describe(channels))
        if settings.public_url is None:
            logger.warning(
                "RASSYLKA_PUBLIC_URL is not set: unsubscribe links point at %s, which "
                "recipients cannot reach; set the https address of the API",
                settings.public_base_url,
            )
        return cls(
            engine,
            channels,
            DispatchConfig.from_settings(settings),
            receipts=inbox,
            webhooks=WebhookConfig.from_settings(settings),
            idempotency_ttl=settings.idempotency_ttl,
        )

    def wake_scheduler(self) -> None:
        if self.scheduler is not None:
            self.scheduler.wake()

    def stop(self) -> None:
        """Ask for a graceful stop: nothing new is claimed, in-flight sends finish."""
        self.stop_event.set()

    async def run(self) -> None:
        stop = self.stop_event
        # Receipts keep coming until the channels are closed, after the sending stopped.
        receipts_stop = asyncio.Event()
        inbox = asyncio.create_task(self.receipts.run(receipts_stop), name="receipts")
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.dispatcher.run(stop), name="dispatcher")
                group.create_task(self.webhooks.run(stop), name="webhooks")
                group.create_task(self.expired_keys.run(stop), name="expired-keys")
                if self.scheduler is not None:
                    group.create_task(self.scheduler.run(stop), name="scheduler")
                if self.engine.dialect.name == "postgresql":
                    listeners = {
                        NOTIFY_CHANNEL: self.dispatcher.wake,
                        EVENTS_CHANNEL: self.webhooks.wake,
                    }
                    if self.scheduler is not None:
                        listeners[SCHEDULE_CHANNEL] = self.scheduler.wake
                    group.create_task(listen(self.engine, listeners, stop), name="listener")
        finally:
            for channel in self.channels.values():
                try:
                    await channel.close()
                except Exception:
                    logger.exception("closing the %s channel failed", channel.kind)
            receipts_stop.set()
            done, _ = await asyncio.wait({inbox}, timeout=RECEIPTS_GRACE)
            if not done:
                inbox.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await inbox


async def run_worker(settings: Settings) -> None:
    """The ``rassylka worker`` process: until SIGTERM or SIGINT, then a graceful stop."""
    engine = create_checked_engine(settings.database_url)
    worker = Worker.open(engine, settings)
    # What the process holds once started moves out of the collector's sight, as in the API
    # processes (``app._freeze_heap``): full collections then walk only what came since.
    gc.collect()
    gc.freeze()
    metrics: MetricsServer | None = None
    if settings.metrics_port is not None:
        metrics = MetricsServer(
            create_sessionmaker(engine), port=settings.metrics_port, host=settings.metrics_host
        )
        try:
            await metrics.start()
        except OSError as error:  # the port is taken, most likely: one line, not a traceback
            await engine.dispose()
            raise SystemExit(
                f"Не открыть порт метрик {settings.metrics_host}:{settings.metrics_port} "
                f"(RASSYLKA_METRICS_HOST/_PORT): {error.strerror or error}"
            ) from None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.stop)
    try:
        await run_until_stopped(worker)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        if metrics is not None:
            await metrics.stop()
        await engine.dispose()


async def run_until_stopped(worker: Worker, *, grace: float = STOP_GRACE) -> None:
    """Run ``worker``; once it is asked to stop, give its sends ``grace`` seconds, then cancel
    (a cancelled send's message comes back when its lease runs out)."""
    task = asyncio.create_task(worker.run(), name="worker")
    stopped = asyncio.create_task(worker.stop_event.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            done, _ = await asyncio.wait({task}, timeout=grace)
            if not done:
                logger.warning("in-flight sends did not finish in %s s; cancelling them", grace)
                task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        stopped.cancel()
