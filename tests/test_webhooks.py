"""Outgoing webhooks on both databases: the /webhook endpoints, and deliveries to a real HTTP
receiver (Starlette under uvicorn on 127.0.0.1) that checks every signature with the algorithm
of docs/webhooks.md — signed, every event, in order per message, retried through a refusing,
failing or slow receiver, never holding up the sending of the mailing."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from conftest import FAST_RETRY
from helpers import assert_error, assert_ok, fields, make_project
from rassylka.channels.smtp import SmtpChannel, SmtpConfig
from rassylka.config import Settings
from rassylka.db import create_sessionmaker, utcnow
from rassylka.engine.dispatcher import DispatchConfig
from rassylka.engine.worker import Worker, run_until_stopped
from rassylka.messages.models import Message, MessageEvent
from rassylka.webhooks import repository
from rassylka.webhooks.delivery import WebhookConfig, WebhookSender
from smtp_peer import SmtpPeer
from test_dispatcher import all_final, arrange, client, until

TOLERANCE = 300  # seconds; docs/webhooks.md


# -- the receiver: a CRM's endpoint ------------------------------------------------------------


@dataclass
class Received:
    webhook_id: int
    event_id: int
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass
class Receiver:
    """A real HTTP server that verifies each request as a CRM would and records it.

    ``fail_first`` requests get 500; the first request for each event id sleeps ``slow_first``
    seconds before answering. Until ``start()`` its port is bound but not listening, so
    connections to it are refused.
    """

    secrets: dict[int, str] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    answered: Counter[int] = field(default_factory=Counter)
    fail_first: int = 0
    slow_first: float = 0.0
    in_flight: set[tuple[int, int]] = field(default_factory=set)
    overlaps: list[tuple[int, int]] = field(default_factory=list)
    seen: set[tuple[int, int]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}/hooks/rassylka"
        app = Starlette(routes=[Route("/hooks/rassylka", self.handle, methods=["POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.server.serve(sockets=[self.socket]))
        while not self.server.started:
            if self.task.done():
                self.task.result()
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self.task is not None:
            self.server.should_exit = True
            await self.task
        self.socket.close()

    def verify(self, headers: dict[str, str], raw: bytes) -> str | None:
        """What is wrong with a request, by the documented algorithm; None if nothing."""
        secret = self.secrets.get(int(headers.get("x-rassylka-webhook-id", "0")))
        if secret is None:
            return "unknown webhook"
        timestamp = headers.get("x-rassylka-timestamp", "")
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > TOLERANCE:
            return f"bad timestamp {timestamp!r}"
        expected = hmac.new(secret.encode(), timestamp.encode() + b"." + raw, hashlib.sha256)
        given = headers.get("x-rassylka-signature", "")
        if not hmac.compare_digest(f"v1={expected.hexdigest()}", given):
            return f"bad signature {given!r}"
        return None

    async def handle(self, request: Request) -> Response:
        raw = await request.body()
        headers = dict(request.headers)
        problem = self.verify(headers, raw)
        if problem is not None:
            self.rejected.append(problem)
            self.answered[400] += 1
            return Response(problem, status_code=400)
        key = (int(headers["x-rassylka-webhook-id"]), int(headers["x-rassylka-event-id"]))
        if key in self.in_flight:
            self.overlaps.append(key)
        self.in_flight.add(key)
        try:
            if self.slow_first and key not in self.seen:
                self.seen.add(key)
                await asyncio.sleep(self.slow_first)
            if self.fail_first > 0:
                self.fail_first -= 1
                self.answered[500] += 1
                return Response("CRM is having a bad day", status_code=500)
            self.received.append(Received(key[0], key[1], json.loads(raw), headers))
            self.answered[200] += 1
            return Response(status_code=204)
        finally:
            self.in_flight.discard(key)

    def event_ids(self, webhook_id: int) -> list[int]:
        return [r.event_id for r in self.received if r.webhook_id == webhook_id]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    peer = Receiver()
    yield peer
    await peer.stop()


class Workers:
    """Workers sending email to ``smtp`` and webhooks with fast retries (settings as
    ``RASSYLKA_WEBHOOK_*`` would give them)."""

    def __init__(self, engine: AsyncEngine, smtp: SmtpPeer, database_url: str) -> None:
        self.engine = engine
        self.smtp = smtp
        self.database_url = database_url
        self.running: dict[int, tuple[Worker, asyncio.Task[None]]] = {}

    async def start(self, **webhook_settings: Any) -> Worker:
        settings = Settings(
            database_url=self.database_url,
            **{
                "webhook_poll_interval": 0.05,
                "webhook_retry_base_delay": 0.1,
                "webhook_retry_max_delay": 0.3,
                "webhook_max_attempts": 100,
                **webhook_settings,
            },
        )
        config = DispatchConfig(poll_interval=0.05, retry=FAST_RETRY, error_rate_window=1000)
        channel = SmtpChannel(SmtpConfig(host="127.0.0.1", port=self.smtp.port, pool_size=4))
        worker = Worker(
            self.engine, {1: channel}, config, webhooks=WebhookConfig.from_settings(settings)
        )
        task = asyncio.create_task(run_until_stopped(worker, grace=10))
        self.running[id(worker)] = (worker, task)
        return worker

    async def stop(self, worker: Worker) -> None:
        worker.stop()
        await self.running.pop(id(worker))[1]

    async def stop_all(self) -> None:
        for worker, _ in list(self.running.values()):
            await self.stop(worker)


@pytest.fixture
async def workers(engine: AsyncEngine, smtp: SmtpPeer, database_url: str) -> AsyncIterator[Workers]:
    running = Workers(engine, smtp, database_url)
    yield running
    await running.stop_all()


async def make_webhook(api: httpx.AsyncClient, receiver: Receiver, **body: Any) -> dict[str, Any]:
    data = assert_ok(
        await api.post("/webhook/create", json={"project": "010", "url": receiver.url, **body})
    )
    receiver.secrets[data["id"]] = data["secret"]
    return data


async def deliveries(api: httpx.AsyncClient, webhook_id: int, **query: str) -> dict[str, Any]:
    return assert_ok(
        await api.get(f"/webhook/{webhook_id}/deliveries", params={"limit": 1000, **query}), 200
    )


async def project_events(engine: AsyncEngine) -> list[tuple[int, int, str]]:
    """(event id, message id, status) of every event, oldest first."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(MessageEvent.id, MessageEvent.message_id, MessageEvent.status).order_by(
                MessageEvent.id
            )
        )
        return [(row[0], row[1], row[2]) for row in rows]


def assert_in_order_per_message(receiver: Receiver, webhook_id: int) -> None:
    """Per message, event ids first arrive in increasing order."""
    first_seen: dict[int, list[int]] = defaultdict(list)
    for received in receiver.received:
        if received.webhook_id != webhook_id:
            continue
        ids = first_seen[received.body["data"]["message_id"]]
        if received.event_id not in ids:
            ids.append(received.event_id)
    assert first_seen, "nothing received"
    for message_id, ids in first_seen.items():
        assert ids == sorted(ids), f"message {message_id}: events arrived as {ids}"


# -- the API -------------------------------------------------------------------------------


async def test_a_webhook_is_validated_and_its_secret_shown_only_once(
    api: httpx.AsyncClient,
) -> None:
    project_id = await make_project(api)
    url = "https://crm.example/hooks"

    async def refused(body: dict[str, Any]) -> set[str]:
        return fields(
            assert_error(await api.post("/webhook/create", json=body), 400, "Ошибка валидации")
        )

    assert await refused({"project_id": project_id, "url": "ftp://crm.example/x"}) == {"url"}
    assert await refused({"project_id": project_id, "url": "https://"}) == {"url"}
    assert await refused({"project_id": project_id}) == {"url"}
    assert await refused({"url": url}) == {"body"}
    assert await refused({"project_id": 999999, "url": url}) == {"project_id"}
    assert await refused({"project": "nope", "url": url}) == {"project"}
    assert await refused({"project_id": project_id, "url": url, "secret": "short"}) == {"secret"}
    assert await refused({"project_id": project_id, "url": url, "events": ["lost"]}) == {"events"}
    assert await refused({"project_id": project_id, "url": url, "events": []}) == {"events"}
    assert await refused({"project_id": project_id, "url": url, "events": ["*", "sent"]}) == {
        "events"
    }
    assert await refused({"project_id": project_id, "url": url, "colour": "red"}) == {"colour"}
    assert_error(await api.post("/webhook/create", content=b"{"), 400, "Ошибка валидации")

    given = "s" * 16
    mine = assert_ok(
        await api.post(
            "/webhook/create",
            json={
                "project_id": project_id,
                "url": url,
                "events": ["failed", "sent", "sent"],
                "secret": given,
                "description": "CRM",
            },
        )
    )
    assert mine["secret"] == given
    assert mine["events"] == ["sent", "failed"], "lifecycle order, each once"
    assert mine["active"] is True
    generated = assert_ok(
        await api.post("/webhook/create", json={"project": "010", "url": "http://10.0.0.1:81/x"})
    )
    assert len(generated["secret"]) >= 40  # token_urlsafe(32)
    assert generated["events"] == ["*"]
    assert generated["project_id"] == project_id

    listed = assert_ok(await api.get(f"/webhook/list?project_id={project_id}"), 200)
    assert listed["total"] == 2
    assert [item["id"] for item in listed["items"]] == [mine["id"], generated["id"]]
    assert all("secret" not in item for item in listed["items"])
    read = assert_ok(await api.get(f"/webhook/{mine['id']}"), 200)
    assert "secret" not in read
    assert read["description"] == "CRM"
    assert assert_ok(await api.get("/webhook/list?project=010&limit=1"), 200)["total"] == 2
    assert_error(await api.get("/webhook/list?project=nope"), 400, "Ошибка валидации")

    changed = assert_ok(
        await api.put(
            f"/webhook/{mine['id']}/update",
            json={"url": "https://crm.example/v2", "events": ["*"], "active": False},
        )
    )
    assert (changed["url"], changed["events"], changed["active"]) == (
        "https://crm.example/v2",
        ["*"],
        False,
    )
    assert changed["secret"] is None, "a secret is shown only when the server makes one"
    rotated = assert_ok(
        await api.put(f"/webhook/{mine['id']}/update", json={"rotate_secret": True})
    )
    assert rotated["secret"]
    assert rotated["secret"] != given
    for body in ({}, {"secret": "short"}, {"primary key": mine["id"] + 1, "active": True}):
        assert_error(
            await api.put(f"/webhook/{mine['id']}/update", json=body), 400, "Ошибка валидации"
        )

    empty = await deliveries(api, mine["id"])
    assert (empty["total"], empty["items"]) == (0, [])
    assert_error(
        await api.get(f"/webhook/{mine['id']}/deliveries?status=lost"), 400, "Ошибка валидации"
    )
    for request in (
        api.get("/webhook/999999"),
        api.put("/webhook/999999/update", json={"active": True}),
        api.delete("/webhook/999999"),
        api.get("/webhook/999999/deliveries"),
    ):
        assert_error(await request, 404, "Страница не найдена")
    assert assert_ok(await api.delete(f"/webhook/{mine['id']}"), 200)["id"] == mine["id"]
    assert_error(await api.get(f"/webhook/{mine['id']}"), 404, "Страница не найдена")


# -- deliveries ----------------------------------------------------------------------------


async def test_every_event_of_a_mailing_arrives_signed_and_in_order_per_message(
    api: httpx.AsyncClient,
    engine: AsyncEngine,
    smtp: SmtpPeer,
    workers: Workers,
    receiver: Receiver,
) -> None:
    await receiver.start()
    mailing_id = await arrange(
        api,
        [
            client(1, "anna@example.ru"),
            client(2, "boris@example.ru"),
            client(3, "later@example.ru"),  # 450 at RCPT: retried, then failed
            client(4, None, phone="+79161234567"),  # skipped: no email
        ],
    )
    everything = await make_webhook(api, receiver)
    outcomes = await make_webhook(
        api, receiver, events=["sent", "failed"], secret="0123456789abcdef-outcomes"
    )
    await workers.start()
    await until(lambda: all_final(engine))
    events = await project_events(engine)
    # sent twice, three tries of "later" (each try's outcome), one skip; a message made queued
    # has no event (docs/stream.md), nor has a claim (queued → sending).
    assert len(events) == 2 + 3 + 1

    async def all_delivered() -> bool:
        done = await deliveries(api, everything["id"], status="delivered")
        return bool(done["total"] == len(events))

    await until(all_delivered)
    await until(lambda: _count(receiver, outcomes["id"], 3))
    assert receiver.rejected == []

    assert sorted(set(receiver.event_ids(everything["id"]))) == [event[0] for event in events]
    assert_in_order_per_message(receiver, everything["id"])
    by_id = {event[0]: event for event in events}
    for received in receiver.received:
        event_id, message_id, status = by_id[received.event_id]
        body = received.body
        assert body["id"] == event_id
        assert body["type"] == "message.status"
        assert body["created_at"] == body["data"]["created_at"]
        data = body["data"]
        assert (data["id"], data["message_id"], data["status"]) == (event_id, message_id, status)
        assert data["mailing_id"] == mailing_id
        assert data["channel"] == "email"
        headers = received.headers
        assert headers["content-type"] == "application/json"
        assert headers["user-agent"].startswith("Rassylka-Webhooks/")
        assert headers["x-rassylka-event-id"] == str(event_id)
    changes = sorted(
        (r.body["data"]["old_status"] or "", r.body["data"]["status"])
        for r in receiver.received
        if r.webhook_id == everything["id"]
    )
    assert changes == [
        ("", "skipped"),
        ("sending", "failed"),
        ("sending", "queued"),
        ("sending", "queued"),
        ("sending", "sent"),
        ("sending", "sent"),
    ], "the skip's creation is heard, the queued ones' are not; a temporary failure is"
    only_outcomes = [r for r in receiver.received if r.webhook_id == outcomes["id"]]
    assert sorted(r.body["data"]["status"] for r in only_outcomes) == ["failed", "sent", "sent"]
    assert {r.body["data"]["client_guid"] for r in only_outcomes} == {"c1", "c2", "c3"}

    listed = await deliveries(api, everything["id"])
    assert listed["total"] == len(events)
    for item in listed["items"]:
        assert item["status"] == "delivered"
        assert item["attempts"] == 1
        assert item["last_http_status"] == 204
        assert item["last_error"] is None
        assert item["delivered_at"] is not None
        assert item["duration_ms"] >= 0
    read = assert_ok(await api.get(f"/webhook/{everything['id']}"), 200)
    assert read["last_event_id"] == events[-1][0]


async def _count(receiver: Receiver, webhook_id: int, expected: int) -> bool:
    return len(receiver.event_ids(webhook_id)) >= expected


async def test_a_receiver_that_refuses_then_fails_then_recovers_gets_everything(
    api: httpx.AsyncClient,
    engine: AsyncEngine,
    smtp: SmtpPeer,
    workers: Workers,
    receiver: Receiver,
) -> None:
    await arrange(api, [client(1, "anna@example.ru"), client(2, "boris@example.ru")])
    webhook = await make_webhook(api, receiver)
    await workers.start()
    # The receiver is down (connections refused): the mailing is sent all the same.
    await until(lambda: all_final(engine))
    async with engine.connect() as connection:
        sent = await connection.scalar(select(func.count()).where(Message.status == "sent"))
    assert sent == 2
    assert receiver.received == []

    async def retried_after_refusals() -> bool:
        pending = await deliveries(api, webhook["id"], status="pending")
        return any(
            item["attempts"] >= 2 and (item["last_error"] or "").startswith("Ошибка соединения")
            for item in pending["items"]
        )

    await until(retried_after_refusals)
    receiver.fail_first = 3
    await receiver.start()
    events = await project_events(engine)
    assert len(events) == 2  # sent each (a message made queued has no event)

    async def all_delivered() -> bool:
        done = await deliveries(api, webhook["id"], status="delivered")
        return bool(done["total"] == len(events))

    await until(all_delivered)
    assert receiver.answered[500] == 3
    assert receiver.rejected == []
    assert sorted(set(receiver.event_ids(webhook["id"]))) == [event[0] for event in events]
    assert_in_order_per_message(receiver, webhook["id"])
    items = (await deliveries(api, webhook["id"]))["items"]
    assert all(item["status"] == "delivered" for item in items)
    assert all(item["last_http_status"] == 204 for item in items)
    assert max(item["attempts"] for item in items) >= 2
    assert sum(item["attempts"] for item in items) >= len(items) + 3, "refusals and 500s retried"


async def test_a_receiver_slower_than_the_timeout_counts_as_a_failure_and_is_retried(
    api: httpx.AsyncClient,
    engine: AsyncEngine,
    smtp: SmtpPeer,
    workers: Workers,
    receiver: Receiver,
) -> None:
    receiver.slow_first = 3.0
    await receiver.start()
    await arrange(api, [client(1, "anna@example.ru")])
    webhook = await make_webhook(api, receiver, events=["sent"])
    await workers.start(webhook_timeout=0.5)
    await until(lambda: all_final(engine))

    async def delivered() -> bool:
        return bool((await deliveries(api, webhook["id"], status="delivered"))["total"] == 1)

    await until(delivered)
    [item] = (await deliveries(api, webhook["id"]))["items"]
    assert item["attempts"] >= 2, "the first POST timed out"
    assert item["last_http_status"] == 204
    [received] = receiver.received
    assert received.body["data"]["status"] == "sent"
    assert received.event_id == item["event_id"]


# -- leases: several senders, and a claim whose worker died --------------------------------


async def test_two_senders_deliver_each_event_once_and_never_at_the_same_time(
    api: httpx.AsyncClient,
    engine: AsyncEngine,
    smtp: SmtpPeer,
    workers: Workers,
    receiver: Receiver,
) -> None:
    await receiver.start()
    await arrange(api, [client(n, f"user{n}@example.ru") for n in range(1, 21)])
    webhook = await make_webhook(api, receiver)
    await workers.start()
    second = WebhookSender(
        create_sessionmaker(engine), WebhookConfig(poll_interval=0.02, concurrency=4)
    )
    stop = asyncio.Event()
    other = asyncio.create_task(second.run(stop))
    try:
        await until(lambda: all_final(engine))
        events = await project_events(engine)
        assert len(events) == 20  # sent: neither the creation as queued nor the claim has one
        await until(lambda: _count(receiver, webhook["id"], len(events)), seconds=30)
    finally:
        stop.set()
        await other
    assert receiver.overlaps == []
    counts = Counter(receiver.event_ids(webhook["id"]))
    assert sorted(counts) == [event[0] for event in events]
    assert set(counts.values()) == {1}, "a fast receiver gets each event exactly once"
    assert_in_order_per_message(receiver, webhook["id"])


async def test_a_dead_workers_claim_is_delivered_after_its_lease_and_a_paused_webhook_catches_up(
    api: httpx.AsyncClient,
    engine: AsyncEngine,
    smtp: SmtpPeer,
    workers: Workers,
    receiver: Receiver,
) -> None:
    await receiver.start()
    await arrange(api, [client(1, "anna@example.ru")])
    webhook = await make_webhook(api, receiver, events=["sent"], active=False)
    worker = await workers.start()
    await until(lambda: all_final(engine))
    await asyncio.sleep(0.3)  # several of the sender's looks: a paused webhook hears nothing
    assert (await deliveries(api, webhook["id"]))["total"] == 0
    await workers.stop(worker)
    assert_ok(await api.put(f"/webhook/{webhook['id']}/update", json={"active": True}))

    sessionmaker = create_sessionmaker(engine)
    now = utcnow()
    async with sessionmaker() as session, session.begin():
        filled = await repository.fill(session, limit=100, now=now)
        assert (filled.webhooks, filled.deliveries) == (1, 1), "the paused time is caught up"
    async with sessionmaker() as session, session.begin():
        [claimed] = await repository.claim(
            session, limit=10, now=now, lease_until=utcnow() + timedelta(seconds=1)
        )  # ... and this worker dies before it POSTs
    async with sessionmaker() as session, session.begin():
        assert await repository.claim(session, limit=10, now=utcnow(), lease_until=utcnow()) == []
    sender = WebhookSender(sessionmaker, WebhookConfig(poll_interval=0.05))
    stop = asyncio.Event()
    task = asyncio.create_task(sender.run(stop))
    try:
        await until(lambda: _count(receiver, webhook["id"], 1))
    finally:
        stop.set()
        await task
    [item] = (await deliveries(api, webhook["id"]))["items"]
    assert item["event_id"] == claimed.event_id
    assert (item["status"], item["attempts"]) == ("delivered", 2)
    assert receiver.event_ids(webhook["id"]) == [claimed.event_id]
