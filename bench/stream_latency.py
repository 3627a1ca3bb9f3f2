"""How soon a status change committed by another process is on the live stream.

Starts ``rassylka serve`` on 127.0.0.1 (a subprocess, as in production) on a scratch database,
creates one mailing through the API and lets the server's own worker send its one message (to
the outbox). Then this process plays a worker in another process: with its own engine it
commits, one at a time, ``--events`` delivery notes on that message (``queue.settle``, the
path receipts and bounces take, each writing an event and, on PostgreSQL, a NOTIFY), while
``--streams`` clients hold ``GET /mailing/{id}/events`` open. For each event and each stream
it measures the time from the writer's commit returning to the event's arrival on the stream.

    .venv/bin/python bench/stream_latency.py [--events N] [--streams 1,100] [--interval S]
                                             [--postgres-url URL] [--no-sqlite]

PostgreSQL: a database of its own created (and dropped) on the server at ``--postgres-url``;
SQLite: a temporary file. The figure judged is PostgreSQL's median with one stream: the target
is under 200 ms (the hub LISTENs, so it is a few milliseconds); SQLite is polled every 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AsyncExitStack,
    asynccontextmanager,
    contextmanager,
    suppress,
)
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
from sqlalchemy import select
from sqlalchemy.engine import make_url

from peers import free_port, postgres
from rassylka.db import create_engine, create_sessionmaker, utcnow
from rassylka.messages import queue
from rassylka.messages.models import Message

DEFAULT_POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"


@dataclass
class Row:
    database: str
    streams: int
    latencies: list[float] = field(default_factory=list)

    def figures(self) -> tuple[float, float, float]:
        ordered = sorted(self.latencies)
        p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
        return statistics.median(ordered) * 1000, p95 * 1000, ordered[-1] * 1000


# -- the server ---------------------------------------------------------------------------------


@contextmanager
def running_server(database_url: str, workdir: Path) -> Iterator[str]:
    """``rassylka serve`` on ``database_url`` (migrated on start); its base URL."""
    port = free_port()
    env = {
        **os.environ,
        "RASSYLKA_DATABASE_URL": database_url,
        "RASSYLKA_API_KEYS": "",
        "RASSYLKA_OUTBOX_DIR": str(workdir / "outbox"),
        "RASSYLKA_DISPATCH_POLL_INTERVAL": "0.1",
    }
    log_path = workdir / f"server-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "rassylka", "serve", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited:\n{log_path.read_text()[-3000:]}")
            with suppress(httpx.TransportError):
                if httpx.get(f"{base}/health").status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def sent_mailing(base: str) -> int:
    """A mailing whose one email the server's worker has sent; its id."""
    with httpx.Client(base_url=base, timeout=30) as http:

        def created(path: str, body: dict[str, object]) -> int:
            response = http.post(path, json=body)
            if response.status_code != 201:
                raise RuntimeError(f"{path}: {response.text}")
            return int(response.json()["data"].get("id", 0))

        project = created("/project/create", {"name": "Бенчмарк", "code": "bench"})
        template = created(
            "/template/create",
            {"project_id": project, "name": "Письмо", "email_subject": "Тема", "email_text": "Т"},
        )
        http.post(
            "/client/import",
            json={
                "project": "bench",
                "clients": [{"guid": "g1", "first_name": "А", "last_name": "Б", "email": "a@b.ru"}],
            },
        ).raise_for_status()
        return created(
            "/mailing/create",
            {
                "name": "Бенчмарк",
                "project_id": project,
                "template_id": template,
                "status": 1,
                "channels": [1],
                "event": "2020-08-02",
            },
        )


# -- the measurement ----------------------------------------------------------------------------


@asynccontextmanager
async def stream_receipts(
    http: httpx.AsyncClient, url: str, arrivals: dict[str, float]
) -> AsyncIterator[None]:
    """Hold ``url`` open, noting when each status event arrives (by its reason)."""
    opened = asyncio.Event()

    async def read() -> None:
        async with http.stream("GET", url) as response:
            response.raise_for_status()
            event = None
            async for line in response.aiter_lines():
                now = time.perf_counter()
                opened.set()
                if line.startswith("event:"):
                    event = line.partition(":")[2].strip()
                elif line.startswith("data:") and event == "status":
                    arrivals[json.loads(line.partition(":")[2])["reason"]] = now
                elif line == "":
                    event = None

    task = asyncio.create_task(read())
    try:
        async with asyncio.timeout(30):
            await opened.wait()  # the first message (the retry hint): its cursor is fixed
        yield
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


async def measure(
    database_url: str, base: str, mailing_id: int, *, streams: int, events: int, interval: float
) -> list[float]:
    engine = create_engine(database_url)
    try:
        sessionmaker = create_sessionmaker(engine)
        deadline = time.monotonic() + 60
        while True:
            async with engine.connect() as connection:
                message_id = await connection.scalar(
                    select(Message.id).where(
                        Message.mailing_id == mailing_id, Message.status == "sent"
                    )
                )
            if message_id is not None:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the server's worker did not send the message")
            await asyncio.sleep(0.1)
        arrivals: list[dict[str, float]] = [{} for _ in range(streams)]
        committed: dict[str, float] = {}
        limits = httpx.Limits(max_connections=streams + 1)
        async with httpx.AsyncClient(base_url=base, timeout=None, limits=limits) as http:
            url = f"/mailing/{mailing_id}/events"
            async with _all(stream_receipts(http, url, seen) for seen in arrivals):
                for n in range(events):
                    reason = f"{streams}:{n}"
                    async with sessionmaker() as session, session.begin():
                        note = queue.Verdict(message_id, "sent", reason)
                        await queue.settle(session, verdicts=[note], now=utcnow())
                    committed[reason] = time.perf_counter()
                    await asyncio.sleep(interval)
                wait_until = time.monotonic() + 30
                while any(len(seen) < events for seen in arrivals):
                    if time.monotonic() > wait_until:
                        raise RuntimeError("some events never reached a stream")
                    await asyncio.sleep(0.05)
        return [seen[reason] - at for seen in arrivals for reason, at in committed.items()]
    finally:
        await engine.dispose()


@asynccontextmanager
async def _all(contexts: Iterable[AbstractAsyncContextManager[None]]) -> AsyncIterator[None]:
    async with AsyncExitStack() as stack:
        for context in contexts:
            await stack.enter_async_context(context)
        yield


def bench(
    name: str, version: str, database_url: str, args: argparse.Namespace, workdir: Path
) -> list[Row]:
    rows = []
    with running_server(database_url, workdir) as base:
        mailing_id = sent_mailing(base)
        for streams in args.streams:
            latencies = asyncio.run(
                measure(
                    database_url,
                    base,
                    mailing_id,
                    streams=streams,
                    events=args.events,
                    interval=args.interval,
                )
            )
            row = Row(f"{name} {version}", streams, latencies)
            median, p95, _ = row.figures()
            print(
                f"{name}: {streams} streams, median {median:.1f} ms, p95 {p95:.1f} ms",
                file=sys.stderr,
            )
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument(
        "--streams",
        type=lambda text: [int(part) for part in text.split(",")],
        default=[1, 100],
        help="comma-separated numbers of open streams, one measurement each (default 1,100)",
    )
    parser.add_argument(
        "--interval", type=float, default=0.05, help="seconds between the writer's commits"
    )
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES, help="'' skips PostgreSQL")
    parser.add_argument("--no-sqlite", action="store_true")
    args = parser.parse_args()

    rows: list[Row] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="rassylka-bench-") as directory:
        workdir = Path(directory)
        if not args.no_sqlite:
            url = f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
            rows += bench("sqlite", sqlite3.sqlite_version, url, args, workdir)
        if args.postgres_url:
            name = f"rassylka_bench_{os.getpid()}"
            try:
                version = asyncio.run(postgres(args.postgres_url, f'CREATE DATABASE "{name}"'))
            except (TimeoutError, OSError, asyncpg.PostgresError) as error:
                notes.append(f"postgresql: skipped, unreachable: {error}")
            else:
                try:
                    url = make_url(args.postgres_url).set(database=name)
                    rendered = url.render_as_string(hide_password=False)
                    rows += bench("postgresql", version, rendered, args, workdir)
                finally:
                    drop = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
                    asyncio.run(postgres(args.postgres_url, drop))

    print(
        f"\nCommit in another process → event on the live stream, {args.events} events "
        f"{args.interval * 1000:.0f} ms apart ({os.cpu_count()} CPUs)\n"
    )
    header = f"{'database':<18} {'streams':>7} {'received':>9} {'median ms':>10} {'p95 ms':>8}"
    header += f" {'max ms':>8}"
    print(header)
    print("-" * len(header))
    previous = None
    for row in rows:
        median, p95, worst = row.figures()
        label = row.database if row.database != previous else ""
        previous = row.database
        print(
            f"{label:<18} {row.streams:>7} {len(row.latencies):>9,} {median:>10.1f}"
            f" {p95:>8.1f} {worst:>8.1f}"
        )
    for note in notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
