"""``rassylka worker`` as a real process: it sends, and SIGTERM stops it gracefully — the
sends in flight finish, the rest go back to the queue, and it exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from conftest import POSTGRESQL_ONLY
from rassylka.db import create_checked_engine, create_engine
from smtp_peer import SmtpPeer
from test_dispatcher import arrange, client, statuses, until

RASSYLKA = Path(sys.executable).with_name("rassylka")


async def test_sigterm_finishes_sends_in_flight_and_releases_the_rest(
    api: httpx.AsyncClient,
    engine: AsyncEngine,
    database_url: str,
    smtp: SmtpPeer,
    tmp_path: Path,
) -> None:
    smtp.delay = 0.4
    await arrange(api, [client(n, f"user{n}@example.ru") for n in range(40)])
    env = {key: value for key, value in os.environ.items() if not key.startswith("RASSYLKA_")}
    env.update(
        RASSYLKA_DATABASE_URL=database_url,
        RASSYLKA_SMTP_HOST="127.0.0.1",
        RASSYLKA_SMTP_PORT=str(smtp.port),
        RASSYLKA_EMAIL_CONCURRENCY="3",
        RASSYLKA_DISPATCH_POLL_INTERVAL="0.1",
        PYTHONUNBUFFERED="1",
    )
    log = tmp_path / "worker.log"
    with log.open("w") as output:
        process = await asyncio.create_subprocess_exec(
            str(RASSYLKA), "worker", cwd=tmp_path, env=env, stdout=output, stderr=output
        )
        try:
            await until(lambda: asyncio.sleep(0, len(smtp.received) >= 3), seconds=30)
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert process.returncode == 0, log.read_text()
    found = await statuses(engine)
    sent = {address for address, row in found.items() if row["status"] == "sent"}
    queued = [row for row in found.values() if row["status"] == "queued"]
    assert {str(message["To"]) for message in smtp.received} == sent
    assert len(sent) + len(queued) == 40, "nothing left 'sending'"
    assert len(queued) >= 20, "it stopped soon after the signal"
    assert all(row["attempts"] == 0 for row in queued)
    assert "email → SmtpChannel" in log.read_text()


@POSTGRESQL_ONLY
async def test_the_workers_pool_replaces_connections_the_server_closed(
    backend: str, database_url: str
) -> None:
    """The worker's engine checks a pooled connection when it is taken, without a round trip
    on asyncpg: after the server terminated them (a restart), the next transaction opens a new
    connection instead of failing."""
    engine = create_checked_engine(database_url)
    try:
        async with engine.connect() as connection:
            first = await connection.scalar(text("SELECT pg_backend_pid()"))
        other = create_engine(database_url)  # a connection of its own, outside the pool
        try:
            async with other.connect() as killer:
                cut = await killer.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
        finally:
            await other.dispose()
        assert cut
        await asyncio.sleep(0.2)  # the closed socket reaches the event loop
        async with engine.connect() as connection:
            second = await connection.scalar(text("SELECT pg_backend_pid()"))
        assert second != first
    finally:
        await engine.dispose()
