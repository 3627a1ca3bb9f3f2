"""How fast the sending engine gets messages to a real peer, against the transport alone.

For each database it stores a project, a template (Cyrillic subject, text and HTML, with
``{{ first_name }}``), N clients and an active email mailing that is due; times the scheduler's
tick that materialises the N messages; then runs one ``Worker`` (scheduler and dispatcher, as
``rassylka worker`` does) until every message is final, sending through:

- ``smtp``: ``SmtpChannel`` to Postfix's ``smtp-sink`` on 127.0.0.1 (a subprocess, counting
  what it receives), ``--pool-size`` connections;
- ``outbox``: ``OutboxChannel`` into a temporary directory (one fsynced file per message).

The yardstick is the same transport alone: a fresh channel sending N equivalent messages,
already rendered, from ``--concurrency`` tasks each sending one message at a time (the shape of
the dispatcher's senders), no database. Engine msg/s over transport msg/s says what the
engine's claims, renders and writes cost on top of the transport.

    .venv/bin/python bench/dispatch.py [--messages N] [--pool-size P] [--concurrency C]
                                       [--transport smtp|outbox|both] [--budget S]
                                       [--database-url URL] [--postgres-url URL]

Without ``--database-url`` it runs on a temporary SQLite file and, if reachable, on a database
of its own created (and dropped) on the PostgreSQL server at ``--postgres-url``.

``--budget`` caps each sending phase: past it the transport alone begins no new message, and
the worker is stopped gracefully (in-flight sends finish, every outcome is written); the phase
then counts what was sent (for the engine: the rows recorded ``sent``) over the time until it
had stopped. smtp-sink is stopped and scratch data removed on any exit, Ctrl-C and SIGTERM
included.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import pwd
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import asyncpg
from sqlalchemy import Table, delete, func, insert, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from peers import HTML, SMTP_SINK, SUBJECT, TEXT, Sink, postgres
from rassylka.channels.base import (
    Accepted,
    Channel,
    ChannelKind,
    OutboundMessage,
    Outcome,
)
from rassylka.channels.outbox import OutboxChannel
from rassylka.channels.smtp import SmtpChannel, SmtpConfig
from rassylka.clients.models import Client
from rassylka.db import create_engine, create_sessionmaker, utcnow
from rassylka.engine.dispatcher import DispatchConfig
from rassylka.engine.scheduler import Scheduler
from rassylka.engine.worker import STOP_GRACE, Worker, run_until_stopped
from rassylka.mailings.models import Channel as MailingChannel
from rassylka.mailings.models import Mailing, MailingStatus
from rassylka.messages.models import Message, MessageStatus
from rassylka.migrate import upgrade
from rassylka.projects.models import Project
from rassylka.templates.models import Template
from rassylka.templates.rendering import TemplateSources, compiled, context_for

DEFAULT_MESSAGES = 20_000
DEFAULT_POOL_SIZE = 8
DEFAULT_CONCURRENCY = 16
DEFAULT_POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
DEFAULT_BUDGET = 15.0
"""Seconds per sending phase; past them the phase stops and reports what it sent so far."""
TRANSPORTS = ("smtp", "outbox")
FINAL_POLL = 0.02
"""How often the database is asked whether every message is final, once all are sent."""
WRITE_TAIL = 30.0
"""How long the last outcomes may take to be written once the peer has every message."""

CLIENT = cast(Table, Client.__table__)
MESSAGE = cast(Table, Message.__table__)
MAILING = cast(Table, Mailing.__table__)
EMAIL = MailingChannel.EMAIL


# -- the data -----------------------------------------------------------------------------------


def client_rows(count: int, project_id: int) -> list[dict[str, Any]]:
    now = utcnow()
    return [
        {
            "project_id": project_id,
            "guid": f"d{i:07d}",
            "first_name": f"Имя{i}",
            "last_name": "Фамилия",
            "middle_name": "Отчество",
            "email": f"user{i}@example.com",
            "phone": f"+7916{i:07d}",
            "timezone": "Europe/Moscow",
            "tags": ["bench"],
            "attributes": {"city": "Москва"},
            "created_at": now,
            "updated_at": now,
        }
        for i in range(count)
    ]


def built_messages(count: int, kind: ChannelKind = ChannelKind.EMAIL) -> list[OutboundMessage]:
    """What the engine hands the transport for ``client_rows``, rendered by the same code."""
    template = compiled(TemplateSources(email_subject=SUBJECT, email_text=TEXT, email_html=HTML))
    project = {"id": 1, "code": "bench", "name": "Бенчмарк"}
    mailing = {"id": 1, "name": "Бенчмарк", "event": "2020-01-01T03:00:00+03:00"}
    messages = []
    for i, row in enumerate(client_rows(count, 1)):
        client = {key: value for key, value in row.items() if key not in ("created_at",)}
        context = context_for(
            client=client, project=project, mailing=mailing, unsubscribe_url=f"http://u/{i}"
        )
        email = template.render_email(context)
        messages.append(
            OutboundMessage(
                id=i + 1,
                kind=kind,
                to=row["email"],
                subject=email.subject,
                text=email.text,
                html=email.html,
            )
        )
    return messages


# -- the SMTP peer ------------------------------------------------------------------------------


@contextmanager
def peer(transport: str, workdir: Path, pool_size: int) -> Iterator[tuple[Channel, Any]]:
    """A fresh channel of ``transport`` and what counts its messages at the other end (the
    smtp-sink or the outbox directory); the sink is stopped whatever happens."""
    if transport == "smtp":
        if not os.access(SMTP_SINK, os.X_OK):
            raise RuntimeError("smtp-sink (Debian package postfix) is not installed")
        sink = Sink(workdir)
        try:
            config = SmtpConfig(
                host="127.0.0.1",
                port=sink.port,
                pool_size=pool_size,
                sender="Магазин «Пример» <news@example.ru>",
            )
            yield SmtpChannel(config), sink
        finally:
            sink.stop()
    else:
        directory = Path(tempfile.mkdtemp(prefix="outbox-", dir=workdir))
        try:
            yield OutboxChannel(ChannelKind.EMAIL, directory, sender="news@example.ru"), directory
        finally:
            shutil.rmtree(directory, ignore_errors=True)


async def received(counter: Any, expected: int) -> int:
    """What the other end has: smtp-sink's count (given a moment to catch up), or the number
    of ``.eml`` files in the outbox."""
    if isinstance(counter, Sink):
        for _ in range(200):
            if counter.messages() >= expected:
                break
            await asyncio.sleep(0.01)
        return counter.messages()
    return await asyncio.to_thread(_count_files, Path(counter))


def _count_files(directory: Path) -> int:
    return sum(1 for _ in directory.rglob("*.eml"))


class Counting:
    """A channel that counts what its transport accepted and says when ``target`` is reached;
    one attribute lookup and an addition per send."""

    def __init__(self, transport: Channel, target: int) -> None:
        self.transport = transport
        self.kind = transport.kind
        self.send_batch = getattr(transport, "send_batch", 1)
        self.target = target
        self.accepted = 0
        self.last_reply = ""
        self.reached = asyncio.Event()
        self.reached_at = 0.0

    async def send(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
        outcomes = await self.transport.send(messages)
        for outcome in outcomes:
            if isinstance(outcome, Accepted):
                self.accepted += 1
            else:
                self.last_reply = outcome.reply
        if self.accepted >= self.target and not self.reached.is_set():
            self.reached_at = time.perf_counter()
            self.reached.set()
        return outcomes

    async def close(self) -> None:
        await self.transport.close()


# -- the measurements ---------------------------------------------------------------------------


@dataclass
class Phase:
    transport: str
    name: str
    messages: int
    seconds: float | None = None
    problem: str | None = None
    note: str | None = None

    @property
    def rate(self) -> float | None:
        return self.messages / self.seconds if self.seconds else None


@dataclass
class Report:
    backend: str
    version: str = ""
    phases: list[Phase] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Options:
    messages: int
    pool_size: int
    concurrency: int
    budget: float
    transports: tuple[str, ...]
    workdir: Path


async def arrange(engine: AsyncEngine, count: int, tag: str) -> tuple[int, int]:
    """A project with ``count`` clients and a template; their ids."""
    now = utcnow()
    async with engine.begin() as connection:
        project_id = (
            await connection.execute(
                insert(Project)
                .values(code=f"bench-{tag}", name="Бенчмарк", created_at=now, updated_at=now)
                .returning(Project.id)
            )
        ).scalar_one()
        template_id = (
            await connection.execute(
                insert(Template)
                .values(
                    project_id=project_id,
                    name="Весенние новости",
                    email_subject=SUBJECT,
                    email_text=TEXT,
                    email_html=HTML,
                    created_at=now,
                    updated_at=now,
                )
                .returning(Template.id)
            )
        ).scalar_one()
        await connection.execute(insert(CLIENT), client_rows(count, project_id))
    return int(project_id), int(template_id)


async def due_mailing(engine: AsyncEngine, project_id: int, template_id: int, name: str) -> int:
    now = utcnow()
    async with engine.begin() as connection:
        mailing_id = (
            await connection.execute(
                insert(Mailing)
                .values(
                    project_id=project_id,
                    template_id=template_id,
                    name=name,
                    status=MailingStatus.ACTIVE,
                    channels=[EMAIL],
                    event_at=now - timedelta(minutes=1),
                    next_run_at=now - timedelta(minutes=1),  # what the API's create sets
                    timezone="Europe/Moscow",
                    created_at=now,
                    updated_at=now,
                )
                .returning(Mailing.id)
            )
        ).scalar_one()
    return int(mailing_id)


async def count_messages(engine: AsyncEngine, run_id: int, *statuses: str) -> int:
    async with engine.connect() as connection:
        found = await connection.scalar(
            select(func.count())
            .select_from(MESSAGE)
            .where(MESSAGE.c.run_id == run_id, MESSAGE.c.status.in_(statuses))
        )
    return int(found or 0)


async def other_work(engine: AsyncEngine) -> int:
    """Email messages waiting in the database that are not the bench's, and active mailings."""
    async with engine.connect() as connection:
        queued = await connection.scalar(
            select(func.count())
            .select_from(MESSAGE)
            .where(
                MESSAGE.c.channel == EMAIL,
                MESSAGE.c.status.in_([MessageStatus.QUEUED, MessageStatus.SENDING]),
            )
        )
        active = await connection.scalar(
            select(func.count())
            .select_from(MAILING)
            .where(MAILING.c.status == MailingStatus.ACTIVE)
        )
    return int(queued or 0) + int(active or 0)


async def materialise(engine: AsyncEngine, phase: Phase) -> int:
    """The scheduler's tick that starts the mailing; the run's id."""
    scheduler = Scheduler(create_sessionmaker(engine))
    start = time.perf_counter()
    runs = await scheduler.tick()
    phase.seconds = time.perf_counter() - start
    if len(runs) != 1:
        raise RuntimeError(f"the tick started runs {runs}, expected one")
    queued = await count_messages(engine, runs[0], MessageStatus.QUEUED)
    if queued != phase.messages:
        phase.problem = f"{queued:,} messages queued, expected {phase.messages:,}"
    return runs[0]


async def transport_alone(
    channel: Channel, messages: list[OutboundMessage], concurrency: int, budget: float
) -> tuple[float, int, int, str | None]:
    """``concurrency`` tasks each sending the next message, one per ``send``: the seconds, the
    messages tried and accepted, and the last refusal if any. Past ``budget`` none is begun."""
    pending = iter(messages)
    tried = accepted = 0
    refusal: str | None = None
    start = time.perf_counter()
    stop_at = start + budget if budget > 0 else math.inf

    async def sender() -> None:
        nonlocal tried, accepted, refusal
        for message in pending:
            tried += 1
            (outcome,) = await channel.send([message])
            if isinstance(outcome, Accepted):
                accepted += 1
            else:
                refusal = outcome.reply
            if time.perf_counter() > stop_at:
                return

    try:
        async with asyncio.TaskGroup() as group:
            for n in range(concurrency):
                group.create_task(sender(), name=f"bench-sender-{n}")
        return time.perf_counter() - start, tried, accepted, refusal
    finally:
        await channel.close()


async def engine_run(
    engine: AsyncEngine,
    channel: Channel,
    run_id: int,
    phase: Phase,
    options: Options,
) -> tuple[int, float | None, str | None]:
    """One worker from its start until every message of the run is final; if ``budget`` runs
    out first, until it has stopped gracefully (every outcome written), and ``phase`` then
    counts the messages recorded as sent. The messages sent, when the peer had the last of
    them (None if cut), and a note if the budget cut the phase."""
    counting = Counting(channel, phase.messages)
    config = DispatchConfig(concurrency={EMAIL: options.concurrency})
    worker = Worker(engine, {EMAIL: counting}, config)
    start = time.perf_counter()
    task = asyncio.create_task(run_until_stopped(worker), name="bench-worker")
    peer_seconds: float | None = None
    try:
        timeout = options.budget if options.budget > 0 else None
        reached = asyncio.ensure_future(counting.reached.wait())
        try:
            done, _ = await asyncio.wait(
                {reached, task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            reached.cancel()
        if task in done:
            await task
            raise RuntimeError("the worker stopped by itself")
        if counting.reached.is_set():
            peer_seconds = counting.reached_at - start
            tail_end = time.perf_counter() + WRITE_TAIL
            while await count_messages(engine, run_id, MessageStatus.QUEUED, MessageStatus.SENDING):
                if time.perf_counter() > tail_end:
                    phase.problem = f"outcomes not all written {WRITE_TAIL:.0f} s after sending"
                    break
                await asyncio.sleep(FINAL_POLL)
            phase.seconds = time.perf_counter() - start
        worker.stop()
        await asyncio.wait_for(asyncio.shield(task), timeout=STOP_GRACE + 30)
        if phase.seconds is None:
            phase.seconds = time.perf_counter() - start
    finally:
        worker.stop()
        if not task.done():
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
    sent = await count_messages(engine, run_id, MessageStatus.SENT)
    note = None
    if peer_seconds is None:
        note = f"{options.budget:.0f} s --budget, {sent:,} of {phase.messages:,} sent"
        phase.messages = sent
        if counting.last_reply:
            phase.problem = f"last refusal: {counting.last_reply}"
    elif sent != phase.messages:
        phase.problem = f"{sent:,} of {phase.messages:,} recorded as sent"
    # What a cut phase left must neither go out with the next phase nor slow its claims.
    async with engine.begin() as connection:
        await connection.execute(
            delete(MESSAGE).where(
                MESSAGE.c.run_id == run_id,
                MESSAGE.c.status.in_([MessageStatus.QUEUED, MessageStatus.SENDING]),
            )
        )
    return sent, peer_seconds, note


async def measure(url: str, report: Report, options: Options, *, clean_up: bool) -> None:
    engine = create_engine(url)
    project_id: int | None = None
    try:
        await upgrade(engine)
        if clean_up and await other_work(engine):
            raise RuntimeError(
                "the database has active mailings or queued email: the bench's worker would"
                " send them to smtp-sink; use a scratch database"
            )
        tag = uuid.uuid4().hex[:6]
        start = time.perf_counter()
        project_id, template_id = await arrange(engine, options.messages, tag)
        _progress(report.backend, f"{options.messages:,} clients stored", start)
        prepared = built_messages(options.messages)
        for transport in options.transports:
            await one_transport(
                engine, report, options, transport, project_id, template_id, prepared
            )
    finally:
        try:
            if clean_up and project_id is not None:
                async with engine.begin() as connection:  # runs and messages go with them
                    await connection.execute(
                        delete(MAILING).where(MAILING.c.project_id == project_id)
                    )
                    await connection.execute(delete(Project).where(Project.id == project_id))
        finally:
            await engine.dispose()


async def one_transport(
    engine: AsyncEngine,
    report: Report,
    options: Options,
    transport: str,
    project_id: int,
    template_id: int,
    prepared: list[OutboundMessage],
) -> None:
    count = options.messages
    mailing_id = await due_mailing(engine, project_id, template_id, f"Бенчмарк {transport}")
    made = Phase(transport, "materialise", count)
    report.phases.append(made)
    run_id = await materialise(engine, made)
    _progress(
        report.backend, f"{transport}: mailing {mailing_id} materialised", seconds=made.seconds
    )

    # The yardstick in two halves, one before and one after the engine, so that a drift in the
    # machine's speed (a shared VM's varies by 10-20 % within a minute) weighs on both sides.
    alone = Phase(transport, "transport alone", count)
    report.phases.append(alone)
    sent = Phase(transport, "engine", count)
    report.phases.append(sent)
    halves = (prepared[: max(1, count // 2)], prepared[max(1, count // 2) :])
    tried = accepted = arrived = 0
    seconds = 0.0
    refusal: str | None = None
    for half, part in enumerate(halves):
        if half == 1:
            await engine_phase(engine, options, transport, run_id, sent, report.backend)
        if not part:
            continue
        with peer(transport, options.workdir, options.pool_size) as (channel, counter):
            took, tried_now, accepted_now, refused = await transport_alone(
                channel, part, options.concurrency, options.budget / 2
            )
            arrived += await received(counter, accepted_now)
        seconds += took
        tried += tried_now
        accepted += accepted_now
        refusal = refused or refusal
        _progress(report.backend, f"{transport}: {accepted_now:,} sent alone", seconds=took)
    alone.seconds, alone.messages = seconds, accepted
    problems = []
    if tried < count:
        alone.note = (
            f"{options.budget:.0f} s --budget, {accepted:,} of {count:,} sent"
            " (half before the engine, half after)"
        )
    if accepted < tried:
        problems.append(f"{tried - accepted:,} refused, the last: {refusal}")
    if arrived != accepted:
        problems.append(f"the peer has {arrived:,}")
    alone.problem = "; ".join(problems) or None


async def engine_phase(
    engine: AsyncEngine, options: Options, transport: str, run_id: int, sent: Phase, backend: str
) -> None:
    with peer(transport, options.workdir, options.pool_size) as (channel, counter):
        in_db, peer_seconds, note = await engine_run(engine, channel, run_id, sent, options)
        arrived = await received(counter, in_db)
    sent.note = note
    if arrived != in_db:
        extra = f"the peer has {arrived:,} messages, the database {in_db:,} sent"
        sent.problem = f"{sent.problem}; {extra}" if sent.problem else extra
    detail = f" (the peer had all after {peer_seconds:.2f} s)" if peer_seconds else ""
    _progress(backend, f"{transport}: {in_db:,} sent by the engine{detail}", seconds=sent.seconds)


def _progress(
    backend: str, what: str, start: float | None = None, *, seconds: float | None = None
) -> None:
    if seconds is None and start is not None:
        seconds = time.perf_counter() - start
    took = f" in {seconds:.2f} s" if seconds is not None else ""
    print(f"  {backend}: {what}{took}", file=sys.stderr, flush=True)


# -- the databases ------------------------------------------------------------------------------


def benchpostgres(admin_url: str, options: Options) -> Report:
    report = Report("postgresql")
    name = f"rassylka_bench_dispatch_{os.getpid()}"
    try:
        report.version = asyncio.run(postgres(admin_url, f'CREATE DATABASE "{name}"'))
    except (TimeoutError, OSError, asyncpg.PostgresError) as error:
        report.notes.append(f"postgresql: skipped, {make_url(admin_url).host} unreachable: {error}")
        return report
    try:
        url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        asyncio.run(measure(url, report, options, clean_up=False))
    finally:
        asyncio.run(postgres(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    return report


def bench_url(url: str, options: Options, *, clean_up: bool = False) -> Report:
    backend = make_url(url).get_backend_name()
    report = Report(backend)
    if backend == "sqlite":
        report.version = sqlite3.sqlite_version
    else:
        with suppress(Exception):
            report.version = asyncio.run(postgres(url))
    asyncio.run(measure(url, report, options, clean_up=clean_up))
    return report


# -- the table ----------------------------------------------------------------------------------


def print_table(reports: list[Report], options: Options) -> None:
    print()
    print(
        f"Sending {options.messages:,} emails: pool {options.pool_size},"
        f" concurrency {options.concurrency} ({os.cpu_count()} CPUs)"
    )
    print()
    header = (
        f"{'database':<18} {'transport':<9} {'phase':<15} {'messages':>8}"
        f" {'seconds':>8} {'msg/s':>8} {'÷ transport':>11}"
    )
    print(header)
    print("-" * len(header))
    for report in reports:
        database = f"{report.backend} {report.version}".strip()
        shown = ""
        for phase in report.phases:
            alone = next(
                (
                    p.rate
                    for p in report.phases
                    if p.transport == phase.transport and p.name == "transport alone"
                ),
                None,
            )
            if phase.rate is None:
                figures = f"{'—':>8} {'—':>8} {'—':>11}"
            else:
                ratio = (
                    f"{phase.rate / alone:11.3f}"
                    if alone and phase.name != "materialise"
                    else f"{'—':>11}"
                )
                figures = f"{phase.seconds:8.2f} {phase.rate:8,.0f} {ratio}"
            transport = phase.transport if phase.transport != shown else ""
            shown = phase.transport
            print(f"{database:<18} {transport:<9} {phase.name:<15} {phase.messages:>8,} {figures}")
            if phase.problem:
                print(f"{'':<18}   ! {phase.problem}")
            database = ""
    notes = [
        f"{report.backend} {phase.transport} {phase.name}: {phase.note}"
        for report in reports
        for phase in report.phases
        if phase.note
    ]
    notes += [note for report in reports for note in report.notes]
    if notes:
        print()
        for note in notes:
            print(f"note: {note}")
    print()
    print("materialise: the scheduler's tick that makes the run's messages (INSERT … SELECT).")
    print("transport alone: the same messages, already rendered, sent from as many tasks as")
    print("the engine's senders, no database. engine: one worker, from its start until every")
    print("message's row is final. ÷ transport: engine msg/s over transport-alone msg/s.")


def _interrupted(_signum: int, _frame: Any) -> None:
    """SIGTERM as Ctrl-C: asyncio.run then cancels the running phase, whose clean-up runs."""
    os.kill(os.getpid(), signal.SIGINT)


def main() -> None:
    try:
        run()
    except KeyboardInterrupt:
        print("interrupted; smtp-sink stopped, scratch data removed", file=sys.stderr)
        sys.exit(130)


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=DEFAULT_MESSAGES, help="clients to send to")
    parser.add_argument("--pool-size", type=int, default=DEFAULT_POOL_SIZE, help="SMTP connections")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help="the engine's email senders, and the tasks sending the transport alone",
    )
    parser.add_argument(
        "--transport", choices=(*TRANSPORTS, "both"), default="both", help="what carries email"
    )
    parser.add_argument(
        "--database-url",
        help="benchmark only this database (it must hold no active mailing or queued email;"
        " the bench's project is deleted afterwards)",
    )
    parser.add_argument(
        "--postgres-url",
        default=DEFAULT_POSTGRES,
        help="PostgreSQL server to create a scratch database on ('' to skip PostgreSQL)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=DEFAULT_BUDGET,
        help="seconds per sending phase, after which it stops and reports what it sent (0: none)",
    )
    args = parser.parse_args()
    if args.messages < 1 or args.pool_size < 1 or args.concurrency < 1:
        parser.error("--messages, --pool-size and --concurrency must be positive")
    signal.signal(signal.SIGTERM, _interrupted)
    if os.geteuid() == 0:
        pwd.getpwnam("nobody")  # smtp-sink runs as nobody under root

    reports: list[Report] = []
    with tempfile.TemporaryDirectory(prefix="rassylka-bench-") as tmp:
        options = Options(
            messages=args.messages,
            pool_size=args.pool_size,
            concurrency=args.concurrency,
            budget=args.budget,
            transports=TRANSPORTS if args.transport == "both" else (args.transport,),
            workdir=Path(tmp),
        )
        try:
            if args.database_url:
                reports.append(bench_url(args.database_url, options, clean_up=True))
            else:
                sqlite_url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
                reports.append(bench_url(sqlite_url, options))
                if args.postgres_url:
                    reports.append(benchpostgres(args.postgres_url, options))
        finally:
            if reports:
                print_table(reports, options)


if __name__ == "__main__":
    main()
