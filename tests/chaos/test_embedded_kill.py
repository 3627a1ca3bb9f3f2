"""The embedded default killed mid-mailing (issue 7, point 4): ``rassylka serve`` on its SQLite
file, SIGKILLed twice while it sends and started again each time. The file is in WAL mode;
every message ends final, none is lost, and no more are sent twice than were in flight."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from harness import (
    CountingSink,
    Service,
    all_final,
    counts,
    email_address,
    free_port,
    make_mailing,
    report,
    sending,
    service_env,
    until,
    wait_for_http,
)
from rassylka.db import create_engine

pytestmark = pytest.mark.chaos

TOTAL = 3_000
KILLS = 2


async def test_the_embedded_default_killed_mid_mailing_loses_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = tmp_path / "rassylka.db"
    url = f"sqlite+aiosqlite:///{database}"
    sink = CountingSink().start()
    port = free_port()
    env = service_env(
        url,
        smtp_host="127.0.0.1",
        smtp_port=sink.port,
        email_rate_limit=300,  # ~10 s of sending, so the kills fall in the middle
        dispatch_lease=4,
        dispatch_poll_interval=0.2,
    )
    serve = Service(("serve", "--port", str(port)), env, tmp_path / "serve.log")
    engine = create_engine(url)
    windows: list[int] = []
    exposed: set[int] = set()
    try:
        await serve.start()
        await wait_for_http(f"http://127.0.0.1:{port}", serve)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as api:
            await make_mailing(api, TOTAL)
        started = time.monotonic()
        for kill in range(KILLS):
            enough = 600 * (kill + 1)
            await until(
                lambda n=enough: asyncio.sleep(0, sink.count() >= n), seconds=60, what="sends"
            )
            await serve.kill()
            claimed = await sending(engine)
            windows.append(len(claimed))
            exposed |= claimed
            await serve.start()
            await wait_for_http(f"http://127.0.0.1:{port}", serve)
        await until(lambda: all_final(engine, TOTAL), seconds=120, what="every message final")
        elapsed = time.monotonic() - started
        found = await counts(engine)
    finally:
        await serve.stop()
        await engine.dispose()
        sink.stop()
    with sqlite3.connect(database) as connection:
        journal = connection.execute("PRAGMA journal_mode").fetchone()[0]
    missing = [n for n in range(TOTAL) if sink.received[email_address(n)] == 0]
    report(
        capsys,
        "embedded (SQLite) SIGKILLed",
        messages=TOTAL,
        kills=KILLS,
        journal_mode=journal,
        in_flight_at_kills=windows,
        duplicates=sink.duplicates(),
        lost=len(missing),
        seconds=round(elapsed, 1),
    )
    assert journal == "wal"
    assert found == {"sent": TOTAL}, found
    assert not missing
    assert sink.duplicates() <= len(exposed)
