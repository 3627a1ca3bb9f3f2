"""``GET /metrics`` on a real server, both databases: the counts move by what was really done
(a mailing through the real SMTP peer, SMS receipts from the real SMSC, a refused webhook), the
queue depth follows the queue, and the route is behind the API key when keys exist.

The metrics are per process and the tests share one process: each compares a scrape after
with a scrape before, never an absolute count.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from conftest import FAST_RETRY, POSTGRESQL_ONLY, StartServer, StartWorker
from helpers import assert_error, assert_ok
from rassylka.channels.smpp import SmppChannel
from rassylka.db import create_engine, create_sessionmaker
from rassylka.engine.dispatcher import DispatchConfig
from rassylka.engine.receipts import ReceiptInbox
from rassylka.engine.scheduler import Scheduler
from rassylka.engine.worker import Worker, run_until_stopped
from rassylka.messages.models import Message
from rassylka.metrics import definitions, depth
from rassylka.metrics.server import MetricsServer
from smsc_peer import Smsc, start_smsc
from smtp_peer import SmtpPeer
from test_dispatcher import all_final, arrange, client, until
from test_receipts import settled
from test_webhooks import Workers
from test_worker_cli import RASSYLKA

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(api: httpx.AsyncClient) -> Samples:
    response = await api.get("/metrics")
    assert response.status_code == 200, response.text
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def rise(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def test_a_mailing_moves_the_status_counts_the_latency_and_the_queue_depth(
    api: httpx.AsyncClient, engine: AsyncEngine, smtp: SmtpPeer, start_worker: StartWorker
) -> None:
    await arrange(
        api,
        [
            client(1, "anna@example.ru"),
            client(2, "boris@example.ru"),
            client(3, "vera@example.ru"),
            client(4, None, phone="+79161234567"),  # no email: skipped
        ],
    )
    before = await scrape(api)
    # The run is made (its messages queued and due) by a scheduler alone: nothing sends yet.
    assert await Scheduler(create_sessionmaker(engine)).tick()
    queued = await scrape(api)
    assert value(queued, "rassylka_queue_depth", channel="email") == 3
    assert value(queued, "rassylka_queue_depth", channel="sms") == 0
    assert rise(before, queued, "rassylka_messages_total", channel="email", status="queued") == 3
    assert rise(before, queued, "rassylka_messages_total", channel="email", status="skipped") == 1

    await start_worker()
    await until(lambda: all_final(engine))
    after = await scrape(api)
    assert len(smtp.received) == 3
    assert rise(before, after, "rassylka_messages_total", channel="email", status="sent") == 3
    assert rise(before, after, "rassylka_messages_total", channel="email", status="failed") == 0
    assert rise(before, after, "rassylka_messages_total", channel="sms", status="sent") == 0
    sends = rise(before, after, "rassylka_send_seconds_count", channel="email")
    assert 1 <= sends <= 3, "one observation per send call (a call may carry a batch)"
    assert rise(before, after, "rassylka_send_seconds_sum", channel="email") > 0
    assert value(after, "rassylka_queue_depth", channel="email") == 0


async def test_transient_and_permanent_errors_count_as_retried_and_failed(
    api: httpx.AsyncClient, engine: AsyncEngine, smtp: SmtpPeer, start_worker: StartWorker
) -> None:
    # smtp_peer: later… gets 450 (FAST_RETRY: 3 attempts, so 2 retries), never… gets 550.
    mailing_id = await arrange(api, [client(1, "later@example.ru"), client(2, "never@example.ru")])
    before = await scrape(api)
    await start_worker()
    await until(lambda: all_final(engine))
    after = await scrape(api)
    labels = {"channel": "email"}
    assert rise(before, after, "rassylka_messages_total", status="retried", **labels) == 2
    assert rise(before, after, "rassylka_messages_total", status="failed", **labels) == 2
    assert rise(before, after, "rassylka_messages_total", status="sent", **labels) == 0
    # A person queues the failed ones again.
    answer = await api.post(f"/mailing/{mailing_id}/retry-failed")
    assert answer.status_code in (200, 201), answer.text
    again = await scrape(api)
    assert rise(after, again, "rassylka_messages_total", status="requeued", **labels) == 2


async def test_cancelling_a_mailing_counts_its_queued_messages_expired(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    mailing_id = await arrange(api, [client(1, "anna@example.ru"), client(2, "boris@example.ru")])
    assert await Scheduler(create_sessionmaker(engine)).tick()
    before = await scrape(api)
    assert value(before, "rassylka_queue_depth", channel="email") == 2
    assert (await api.post(f"/mailing/{mailing_id}/cancel")).status_code in (200, 201)
    after = await scrape(api)
    assert rise(before, after, "rassylka_messages_total", channel="email", status="expired") == 2
    assert value(after, "rassylka_queue_depth", channel="email") == 0


@pytest.fixture
async def smsc() -> AsyncIterator[Smsc]:
    peer = await start_smsc()
    yield peer
    await peer.stop()


async def test_smpp_receipts_are_counted_and_settle_messages_as_delivered(
    api: httpx.AsyncClient, engine: AsyncEngine, smsc: Smsc
) -> None:
    await arrange(
        api,
        [client(1, None, phone="+79161234501"), client(2, None, phone="+79161234502")],
        channels=[2],
    )
    before = await scrape(api)
    inbox = ReceiptInbox(create_sessionmaker(engine))
    channel = SmppChannel(smsc.config(), on_receipt=inbox.receive)
    worker = Worker(
        engine, {2: channel}, DispatchConfig(poll_interval=0.05, retry=FAST_RETRY), receipts=inbox
    )
    task = asyncio.create_task(run_until_stopped(worker))
    try:
        await until(lambda: settled(engine))
    finally:
        worker.stop()
        await task
    after = await scrape(api)
    assert rise(before, after, "rassylka_messages_total", channel="sms", status="sent") == 2
    assert rise(before, after, "rassylka_messages_total", channel="sms", status="delivered") == 2
    matched = rise(before, after, "rassylka_receipts_total", source="smpp", outcome="matched")
    assert matched >= 2, "a receipt per part, each matched"
    assert rise(before, after, "rassylka_receipts_total", source="smpp", outcome="rejected") == 0


async def test_http_callbacks_and_bounces_are_counted_by_source_and_outcome(
    api: httpx.AsyncClient,
) -> None:
    before = await scrape(api)
    # A callback naming a message not recorded (yet): stored to wait for it.
    answer = await api.post("/webhook/sms/status", json={"id": "never-sent", "status": "delivered"})
    assert answer.status_code == 200, answer.text
    unreadable = await api.post(
        "/webhook/sms/status", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert unreadable.status_code == 400
    bounce = await api.post("/webhook/bounce", json={"message_id": 987654, "type": "hard"})
    assert bounce.status_code == 404, bounce.text
    after = await scrape(api)
    assert rise(before, after, "rassylka_receipts_total", source="http", outcome="waiting") == 1
    assert rise(before, after, "rassylka_receipts_total", source="http", outcome="rejected") == 1
    assert rise(before, after, "rassylka_receipts_total", source="http", outcome="matched") == 0
    assert rise(before, after, "rassylka_receipts_total", source="bounce", outcome="unmatched") == 1


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_webhook_whose_target_refuses_is_counted_as_failed(
    api: httpx.AsyncClient, engine: AsyncEngine, smtp: SmtpPeer, database_url: str
) -> None:
    await arrange(api, [client(1, "anna@example.ru")])
    url = f"http://127.0.0.1:{_closed_port()}/hook"
    assert_ok(await api.post("/webhook/create", json={"project": "010", "url": url}))
    before = await scrape(api)
    # Workers as in test_webhooks: fast retries, so the refusals come within the test.
    workers = Workers(engine, smtp, database_url)
    await workers.start()
    try:

        async def refused_twice() -> bool:
            now = await scrape(api)
            return rise(before, now, "rassylka_webhook_failures_total", reason="connection") >= 2

        await until(refused_twice)
    finally:
        await workers.stop_all()
    after = await scrape(api)
    assert rise(before, after, "rassylka_webhook_failures_total", reason="http") == 0


async def test_a_rolled_back_change_is_not_counted(engine: AsyncEngine) -> None:
    sessionmaker = create_sessionmaker(engine)
    labels = {"channel": "sms", "status": "expired"}

    def count() -> float:
        return REGISTRY.get_sample_value("rassylka_messages_total", labels) or 0.0

    start = count()
    async with sessionmaker() as session:
        await session.begin()
        await session.execute(update(Message).values(reason=None))
        definitions.on_commit(session, [(2, "expired")] * 5)
        await session.rollback()
        assert count() == start
        # The same session's next transaction counts only what it noted itself.
        async with session.begin():
            definitions.on_commit(session, [(2, "expired")] * 3)
            assert count() == start, "not before the commit"
    assert count() == start + 3


async def test_metrics_take_the_api_key_when_keys_exist(start_server: StartServer) -> None:
    server = await start_server(api_keys=["first-key"])
    async with httpx.AsyncClient(base_url=server.url) as client_:
        assert_error(await client_.get("/metrics"), 403, "Доступ запрещен")
        answer = await client_.get("/metrics", headers={"Authorization": "Bearer first-key"})
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
        samples = parse(answer.text)
        # prometheus-client's own collectors come with ours.
        assert any(name == "python_info" for name, _ in samples)
        assert any(name == "process_cpu_seconds_total" for name, _ in samples)
        assert (
            "rassylka_messages_total",
            frozenset({("channel", "email"), ("status", "sent")}),
        ) in (samples)
        openmetrics = await client_.get(
            "/metrics",
            headers={
                "Authorization": "Bearer first-key",
                "Accept": "application/openmetrics-text; version=1.0.0",
            },
        )
        assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
        assert openmetrics.text.endswith("# EOF\n")
    schema = (await httpx.AsyncClient(base_url=server.url).get("/openapi.json")).json()
    assert "/metrics" not in schema["paths"]


async def test_the_queue_depth_is_nan_when_the_database_does_not_answer() -> None:
    """A scrape of a process whose database went away still answers (``/metrics`` itself is
    behind the key check, which needs the database: the worker's own server has none)."""
    nowhere = create_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{_closed_port()}/x")
    try:
        await depth.refresh(create_sessionmaker(nowhere))
    finally:
        await nowhere.dispose()
    samples = parse(generate_latest().decode())
    assert math.isnan(value(samples, "rassylka_queue_depth", channel="email"))
    assert math.isnan(value(samples, "rassylka_queue_depth", channel="sms"))


@POSTGRESQL_ONLY
async def test_a_scrape_does_not_wait_for_a_locked_queue(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """A count that cannot finish (the table locked by another session) is given up: the
    scrape answers, the depth NaN, the other metrics as usual."""
    async with engine.connect() as locker:
        await locker.execute(text("LOCK TABLE message IN ACCESS EXCLUSIVE MODE"))
        answer = await api.get("/metrics")
        await locker.rollback()
    assert answer.status_code == 200
    samples = parse(answer.text)
    assert math.isnan(value(samples, "rassylka_queue_depth", channel="email"))
    assert ("rassylka_messages_total", frozenset({("channel", "sms"), ("status", "sent")})) in (
        samples
    )
    assert value(await scrape(api), "rassylka_queue_depth", channel="email") == 0


async def test_the_standalone_workers_metrics_server(
    engine: AsyncEngine, api: httpx.AsyncClient
) -> None:
    await arrange(api, [client(1, "anna@example.ru")])
    await Scheduler(create_sessionmaker(engine)).tick()
    server = MetricsServer(create_sessionmaker(engine), port=0)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client_:
            answer = await client_.get("/metrics")
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("text/plain")
            assert value(parse(answer.text), "rassylka_queue_depth", channel="email") == 1
            assert (await client_.get("/")).status_code == 404
            assert (await client_.post("/metrics")).status_code == 405
    finally:
        await server.stop()


async def test_rassylka_worker_serves_its_metrics_on_the_port_it_is_given(
    api: httpx.AsyncClient, database_url: str, smtp: SmtpPeer, tmp_path: Path
) -> None:
    """A real ``rassylka worker`` process with ``RASSYLKA_METRICS_PORT=0`` (a free port, which
    it logs): its own counts, from zero, are what it sent."""
    await arrange(api, [client(1, "anna@example.ru"), client(2, "boris@example.ru")])
    env = {key: value for key, value in os.environ.items() if not key.startswith("RASSYLKA_")}
    env.update(
        RASSYLKA_DATABASE_URL=database_url,
        RASSYLKA_SMTP_HOST="127.0.0.1",
        RASSYLKA_SMTP_PORT=str(smtp.port),
        RASSYLKA_DISPATCH_POLL_INTERVAL="0.1",
        RASSYLKA_METRICS_PORT="0",
        PYTHONUNBUFFERED="1",
    )
    log = tmp_path / "worker.log"
    with log.open("w") as output:
        process = await asyncio.create_subprocess_exec(
            str(RASSYLKA), "worker", cwd=tmp_path, env=env, stdout=output, stderr=output
        )
        try:
            await until(lambda: asyncio.sleep(0, len(smtp.received) == 2), seconds=30)
            found = re.search(r"metrics on (http://127\.0\.0\.1:\d+)/metrics", log.read_text())
            assert found, log.read_text()
            async with httpx.AsyncClient(base_url=found.group(1)) as client_:

                async def recorded() -> bool:
                    samples = parse((await client_.get("/metrics")).text)
                    sent = value(samples, "rassylka_messages_total", channel="email", status="sent")
                    return sent == 2

                await until(recorded)
                answer = await client_.get("/metrics")
            samples = parse(answer.text)
            assert value(samples, "rassylka_messages_total", channel="email", status="queued") == 2
            assert value(samples, "rassylka_send_seconds_count", channel="email") >= 1
            assert value(samples, "rassylka_queue_depth", channel="email") == 0
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert process.returncode == 0, log.read_text()


async def test_a_taken_metrics_port_stops_the_worker_with_one_line(
    database_url: str, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {key: value for key, value in os.environ.items() if not key.startswith("RASSYLKA_")}
        env.update(
            RASSYLKA_DATABASE_URL=database_url,
            RASSYLKA_METRICS_PORT=str(taken.getsockname()[1]),
        )
        process = await asyncio.create_subprocess_exec(
            str(RASSYLKA),
            "worker",
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(60):
            _, stderr = await process.communicate()
    said = stderr.decode()
    assert process.returncode == 1, said
    assert "Не открыть порт метрик" in said
    assert "Traceback" not in said
