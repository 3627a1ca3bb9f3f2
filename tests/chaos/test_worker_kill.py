"""Workers killed mid-mailing (issue 7, point 1), on PostgreSQL with real processes: a mailing
made through the API, two ``rassylka worker`` processes sending it to an SMTP sink that counts
every recipient.

SIGKILL, ten times at random moments: every message ends final, none is lost (the sink saw
every recipient), and the messages sent twice are no more than were in flight at the kills —
counted after each kill as the messages still ``sending``: the killed worker's claims stay so
until their lease runs out, so the count holds all of them (and the live worker's, which makes
it an upper bound). SIGTERM: the in-flight sends finish, the worker exits 0, nothing twice.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from conftest import POSTGRESQL_ONLY
from harness import (
    CountingSink,
    Service,
    all_final,
    counts,
    email_address,
    make_mailing,
    report,
    sending,
    service_env,
    until,
)

pytestmark = [pytest.mark.chaos, POSTGRESQL_ONLY]

TOTAL = 20_000
KILLS = 10
LEASE = 4.0


@pytest.fixture
async def sink() -> AsyncIterator[CountingSink]:
    peer = CountingSink().start()
    yield peer
    peer.stop()


def worker_env(database_url: str, sink: CountingSink, **more: object) -> dict[str, str]:
    return service_env(
        database_url,
        smtp_host="127.0.0.1",
        smtp_port=sink.port,
        dispatch_lease=LEASE,
        dispatch_batch_size=100,
        dispatch_poll_interval=0.2,
        retry_base_delay=0.5,
        retry_max_delay=2,
        **more,
    )


async def test_workers_killed_ten_times_lose_nothing_and_repeat_only_what_was_in_flight(
    backend: str,
    api: httpx.AsyncClient,
    engine: AsyncEngine,
    database_url: str,
    sink: CountingSink,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seed = random.randrange(1 << 30)
    chance = random.Random(seed)
    await make_mailing(api, TOTAL)
    # A rate limit per worker stretches the mailing over the kills (20 s at least).
    env = worker_env(database_url, sink, email_rate_limit=500)
    workers = [Service(("worker",), env, tmp_path / f"worker{n}.log") for n in range(2)]
    started = time.monotonic()
    try:
        for worker in workers:
            await worker.start()
        await until(lambda: asyncio.sleep(0, sink.count() >= 300), seconds=60, what="first sends")
        windows: list[int] = []
        exposed: set[int] = set()
        sent_at_kill: list[int] = []
        for kill in range(KILLS):
            # A random moment in each eleventh of the mailing, so the kills span all of it.
            moment = int(chance.uniform(kill, kill + 1) / (KILLS + 1) * TOTAL)
            await until(
                lambda n=moment: asyncio.sleep(0, sink.count() >= n), seconds=120, what="sends"
            )
            victim = chance.choice(workers)
            await victim.kill()
            # The dead worker's claims stay 'sending' until their lease ends: all are counted
            # (with the live worker's, so the figure is an upper bound of the window).
            claimed = await sending(engine)
            windows.append(len(claimed))
            exposed |= claimed
            sent_at_kill.append(sink.count())
            await victim.start()
            await victim.ready()  # each kill hits a worker that is sending, not starting
        await until(lambda: all_final(engine, TOTAL), seconds=180, what="every message final")
        elapsed = time.monotonic() - started
        found = await counts(engine)
    finally:
        for worker in workers:
            await worker.stop()
    missing = [n for n in range(TOTAL) if sink.received[email_address(n)] == 0]
    duplicates = sink.duplicates()
    report(
        capsys,
        "workers SIGKILLed",
        messages=TOTAL,
        kills=len(windows),
        seed=seed,
        sink_count_at_kills=sent_at_kill,
        in_flight_at_kills=windows,
        exposed=len(exposed),
        duplicates=duplicates,
        lost=len(missing),
        seconds=round(elapsed, 1),
        statuses=dict(found),
    )
    assert found == {"sent": TOTAL}, found
    assert not missing, f"{len(missing)} recipients never reached the sink, e.g. {missing[:5]}"
    assert sent_at_kill[-1] < TOTAL, "the kills came after the mailing was done"
    # Only a message in flight at a kill may be sent twice (each counted once).
    twice = {address for address, n in sink.received.items() if n > 1}
    assert duplicates <= len(exposed)
    assert len(twice) <= len(exposed)


async def test_sigterm_lets_in_flight_sends_finish_and_nothing_is_sent_twice(
    backend: str,
    api: httpx.AsyncClient,
    engine: AsyncEngine,
    database_url: str,
    sink: CountingSink,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    total = 3_000
    sink.delay = 0.02  # each DATA takes a while: there are sends in flight at the signal
    await make_mailing(api, total)
    env = worker_env(database_url, sink, email_concurrency=8)
    workers = [Service(("worker",), env, tmp_path / f"worker{n}.log") for n in range(2)]
    started = time.monotonic()
    try:
        for worker in workers:
            await worker.start()
        await until(lambda: asyncio.sleep(0, sink.count() >= 300), seconds=60, what="first sends")
        in_flight = (await counts(engine))["sending"]
        signalled = time.monotonic()
        code = await workers[0].terminate()
        stopped_in = time.monotonic() - signalled
        sent_at_signal = sink.count()
        await until(lambda: all_final(engine, total), seconds=120, what="every message final")
        elapsed = time.monotonic() - started
        found = await counts(engine)
    finally:
        for worker in workers:
            await worker.stop()
    missing = [n for n in range(total) if sink.received[email_address(n)] == 0]
    report(
        capsys,
        "worker SIGTERMed",
        messages=total,
        sending_at_signal=in_flight,
        exit_code=code,
        stopped_in_s=round(stopped_in, 2),
        duplicates=sink.duplicates(),
        lost=len(missing),
        seconds=round(elapsed, 1),
    )
    assert code == 0, workers[0].text()[-3000:]
    assert sent_at_signal < total, "the signal came after the mailing was done"
    assert found == {"sent": total}, found
    assert not missing
    assert sink.duplicates() == 0
    assert "Traceback" not in workers[0].text()
