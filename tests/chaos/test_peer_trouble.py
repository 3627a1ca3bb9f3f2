"""Peers in trouble (issue 7, point 3), end to end: a mailing made through the API, sent by a
``rassylka worker`` process on PostgreSQL to a real peer that misbehaves, counted at the peer.

SMTP answering 421/451 for a while, then recovering: all delivered, with retries. 550: failed,
the peer's reply kept. Unreachable for 30 s, then up: retried, then delivered. SMPP
``ESME_RTHROTTLED`` for a while: retried later, all delivered. The SMPP connection cut with
submits in flight: the worker binds again, every SMS is delivered, and no more are submitted
twice than the window holds.

A peer refusing everything spends a mailing's error budget (docs/engine.md): after
``RASSYLKA_ERROR_RATE_WINDOW`` failed sends the mailing pauses for a person to look. These
tests are about retries, so they set a window the mailing never fills; one test shows the
budget's pause and the resume after it.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from conftest import POSTGRESQL_ONLY
from harness import (
    CountingSink,
    Service,
    all_final,
    counts,
    email_address,
    free_port,
    make_mailing,
    report,
    service_env,
    until,
)
from rassylka.messages.models import Message
from smsc_peer import PASSWORD, SYSTEM_ID, Smsc, start_smsc

pytestmark = [pytest.mark.chaos, POSTGRESQL_ONLY]

RETRIES = {
    "retry_base_delay": 0.3,
    "retry_max_delay": 1.5,
    "retry_max_attempts": 100,
    "dispatch_poll_interval": 0.1,
    "error_rate_window": 100_000,  # see the module's docstring
}


@pytest.fixture
async def workers(tmp_path: Path) -> AsyncIterator[list[Service]]:
    started: list[Service] = []
    yield started
    for worker in started:
        await worker.stop()


async def start_worker(
    workers: list[Service], database_url: str, tmp_path: Path, **settings: object
) -> Service:
    env = service_env(database_url, **{**RETRIES, **settings})
    worker = Service(("worker",), env, tmp_path / f"worker{len(workers)}.log")
    workers.append(worker)
    await worker.start()
    await worker.ready()
    return worker


async def rows(engine: AsyncEngine) -> list[Message]:
    async with engine.connect() as connection:
        return list((await connection.execute(select(Message))).all())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "refusal", ["421 4.3.2 Service shutting down", "451 4.3.0 Local problem, try again later"]
)
async def test_smtp_refusing_for_a_while_then_recovering_delivers_everything(
    backend: str,
    refusal: str,
    api: httpx.AsyncClient,
    engine: AsyncEngine,
    database_url: str,
    workers: list[Service],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    total = 200
    sink = CountingSink(refusal=refusal).start()
    try:
        await make_mailing(api, total)
        await start_worker(
            workers, database_url, tmp_path, smtp_host="127.0.0.1", smtp_port=sink.port
        )
        await until(lambda: asyncio.sleep(0, sink.refused >= total), seconds=30, what="refusals")
        await asyncio.sleep(2)
        sink.refusal = None
        recovered = time.monotonic()
        await until(lambda: all_final(engine, total), seconds=60, what="every message final")
        took = time.monotonic() - recovered
    finally:
        sink.stop()
    found = await rows(engine)
    attempts = Counter(row.attempts for row in found)
    report(
        capsys,
        f"SMTP {refusal[:3]} for a while",
        messages=total,
        refused=sink.refused,
        attempts=dict(sorted(attempts.items())),
        delivered_after_recovery_s=round(took, 1),
        duplicates=sink.duplicates(),
    )
    assert {row.status for row in found} == {"sent"}
    assert all(row.attempts > 1 for row in found), "each was refused at least once"
    assert all(sink.received[email_address(n)] == 1 for n in range(total))


async def test_smtp_refusing_everything_spends_the_budget_pauses_and_resumes_without_repeats(
    backend: str,
    api: httpx.AsyncClient,
    engine: AsyncEngine,
    database_url: str,
    workers: list[Service],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With the default error budget (50 sends, half failing) a peer that refuses everything
    pauses the mailing, with its reply as the reason; resumed once the peer is back, it is all
    delivered, nothing twice."""
    total = 200
    sink = CountingSink(refusal="421 4.3.2 Service shutting down").start()
    try:
        mailing_id = await make_mailing(api, total)
        await start_worker(
            workers,
            database_url,
            tmp_path,
            smtp_host="127.0.0.1",
            smtp_port=sink.port,
            error_rate_window=50,
        )

        async def mailing() -> dict[str, object]:
            return dict((await api.get(f"/mailing/{mailing_id}")).json()["data"])

        async def paused() -> bool:
            return (await mailing())["status"] == 2

        await until(paused, seconds=30, what="the mailing paused")
        reason = str((await mailing())["status_reason"])
        sink.refusal = None
        response = await api.post(f"/mailing/{mailing_id}/resume")
        assert response.status_code == 200, response.text
        resumed = time.monotonic()
        await until(lambda: all_final(engine, total), seconds=60, what="every message final")
        took = time.monotonic() - resumed
    finally:
        sink.stop()
    report(
        capsys,
        "SMTP 421 with the error budget",
        messages=total,
        refused=sink.refused,
        delivered_after_resume_s=round(took, 1),
        duplicates=sink.duplicates(),
    )
    assert reason.startswith("Приостановлена автоматически: 50 из 50")
    assert "421 4.3.2 Service shutting down" in reason
    assert {row.status for row in await rows(engine)} == {"sent"}
    assert all(sink.received[email_address(n)] == 1 for n in range(total))


async def test_smtp_550_fails_the_message_with_the_peers_reply(
    backend: str,
    api: httpx.AsyncClient,
    engine: AsyncEngine,
    database_url: str,
    workers: list[Service],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    total = 40

    def address(n: int) -> str:
        return f"never{n}@example.ru" if n % 4 == 0 else email_address(n)

    sink = CountingSink().start()
    try:
        await make_mailing(api, total, address=address)
        await start_worker(
            workers, database_url, tmp_path, smtp_host="127.0.0.1", smtp_port=sink.port
        )
        await until(lambda: all_final(engine, total), seconds=60, what="every message final")
    finally:
        sink.stop()
    found = {row.address: row for row in await rows(engine)}
    refused = [found[address(n)] for n in range(total) if n % 4 == 0]
    report(capsys, "SMTP 550", messages=total, statuses=dict(await counts(engine)))
    for row in refused:
        assert row.status == "failed"
        assert row.attempts == 1, "a permanent refusal is not retried"
        assert row.reply.startswith("550 5.1.1")
        assert "Recipient address rejected: no such user" in row.reason
    assert {found[address(n)].status for n in range(total) if n % 4} == {"sent"}
    assert sink.count() == total - len(refused)


async def test_smtp_unreachable_for_30_s_is_retried_then_delivered(
    backend: str,
    api: httpx.AsyncClient,
    engine: AsyncEngine,
    database_url: str,
    workers: list[Service],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    total = 100
    port = free_port()  # nothing listens on it for now: connections are refused
    await make_mailing(api, total)
    await start_worker(workers, database_url, tmp_path, smtp_host="127.0.0.1", smtp_port=port)
    down_since = time.monotonic()
    await asyncio.sleep(30)
    sink = CountingSink(port=port).start()
    try:
        up = time.monotonic()
        await until(lambda: all_final(engine, total), seconds=60, what="every message final")
        took = time.monotonic() - up
    finally:
        sink.stop()
    found = await rows(engine)
    attempts = [row.attempts for row in found]
    report(
        capsys,
        "SMTP unreachable",
        messages=total,
        unreachable_s=round(up - down_since, 1),
        attempts_min=min(attempts),
        attempts_max=max(attempts),
        delivered_after_up_s=round(took, 1),
        duplicates=sink.duplicates(),
    )
    assert {row.status for row in found} == {"sent"}
    assert min(attempts) > 1
    assert all(sink.received[email_address(n)] == 1 for n in range(total))


@pytest.fixture
async def smsc() -> AsyncIterator[Smsc]:
    peer = await start_smsc()
    yield peer
    await peer.stop()


def phone(suffix: str) -> object:
    """Phone numbers whose last two digits are ``suffix`` (the test SMSC's verdict)."""
    return lambda n: f"+79{n:07d}{suffix}"


def smpp_settings(smsc: Smsc, **more: object) -> dict[str, object]:
    return {
        "smpp_host": "127.0.0.1",
        "smpp_port": smsc.port,
        "smpp_system_id": SYSTEM_ID,
        "smpp_password": PASSWORD,
        "smpp_source_addr": "Rassylka",
        **more,
    }


def accepted_by_destination(smsc: Smsc) -> Counter[str]:
    return Counter(
        str(event["destination_addr"]) for event in smsc.of("submit_sm") if event["status"] == 0
    )


async def test_smpp_throttled_for_a_while_is_retried_and_all_delivered(
    backend: str,
    api: httpx.AsyncClient,
    engine: AsyncEngine,
    database_url: str,
    smsc: Smsc,
    workers: list[Service],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    total = 200
    assert smsc.process.stdin is not None
    smsc.process.stdin.write(b"throttle on\n")
    await make_mailing(api, total, channel=2, address=phone("00"))  # type: ignore[arg-type]
    await start_worker(workers, database_url, tmp_path, **smpp_settings(smsc))
    await smsc.wait_for(lambda: len(smsc.of("submit_sm", verdict="throttled")) >= total, 30)
    await asyncio.sleep(2)
    smsc.process.stdin.write(b"throttle off\n")
    recovered = time.monotonic()
    await until(lambda: all_final(engine, total), seconds=60, what="every message final")
    took = time.monotonic() - recovered
    found = await rows(engine)
    accepted = accepted_by_destination(smsc)
    report(
        capsys,
        "SMPP ESME_RTHROTTLED for a while",
        messages=total,
        throttled=len(smsc.of("submit_sm", verdict="throttled")),
        attempts_max=max(row.attempts for row in found),
        delivered_after_recovery_s=round(took, 1),
        statuses=dict(await counts(engine)),
        duplicates=sum(n - 1 for n in accepted.values()),
    )
    assert {row.status for row in found} <= {"sent", "delivered"}
    assert all(row.attempts > 1 for row in found)
    assert len(accepted) == total
    assert set(accepted.values()) == {1}


async def test_smpp_connection_cut_mid_window_rebinds_and_loses_nothing(
    backend: str,
    api: httpx.AsyncClient,
    engine: AsyncEngine,
    database_url: str,
    smsc: Smsc,
    workers: list[Service],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    total, window = 1_000, 10
    # Destinations ending 33 are answered after 30 ms: the window is full when the cut comes.
    await make_mailing(api, total, channel=2, address=phone("33"))  # type: ignore[arg-type]
    await start_worker(workers, database_url, tmp_path, **smpp_settings(smsc, smpp_window=window))
    await smsc.wait_for(lambda: len(smsc.of("submit_sm")) >= 100, 30)
    in_flight = smsc.of("submit_sm")[-1]["outstanding"]
    smsc.signal(signal.SIGUSR2)
    await until(lambda: all_final(engine, total), seconds=90, what="every message final")
    found = await rows(engine)
    accepted = accepted_by_destination(smsc)
    duplicates = sum(n - 1 for n in accepted.values())
    binds = len(smsc.of("bind"))
    report(
        capsys,
        "SMPP connection cut",
        messages=total,
        window=window,
        outstanding_at_cut=in_flight,
        binds=binds,
        statuses=dict(await counts(engine)),
        duplicates=duplicates,
    )
    assert binds >= 2, "it bound again"
    assert {row.status for row in found} <= {"sent", "delivered"}
    assert len(accepted) == total, "every SMS reached the SMSC"
    assert duplicates <= window
