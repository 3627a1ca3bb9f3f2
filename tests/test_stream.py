"""The live status stream (Server-Sent Events) against a real uvicorn server, read with httpx
and parsed here line by line, on both databases: a mailing's events as a real worker sends it
to a real SMTP server, resuming with Last-Event-ID, the project filter, heartbeats, the
maximum lifetime, a server stop, errors, and on PostgreSQL the delay from another engine's
commit to the stream."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from conftest import LiveServer, StartServer, StartWorker
from helpers import assert_error, assert_ok, make_project, make_template
from rassylka.db import create_sessionmaker, utcnow
from rassylka.engine.scheduler import Scheduler
from rassylka.events.schemas import StatusEvent
from rassylka.messages import queue
from rassylka.messages.models import Message, MessageEvent
from smtp_peer import SmtpPeer
from test_dispatcher import all_final, arrange, client, until

WAIT = 30.0


@dataclass
class Sse:
    """One Server-Sent Events message as a client sees it."""

    event: str | None = None
    id: str | None = None
    data: str | None = None
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    def status(self) -> dict[str, Any]:
        assert self.event == "status", self
        assert self.data is not None
        payload: dict[str, Any] = json.loads(self.data)
        assert str(payload["id"]) == self.id
        return payload


class SseReader:
    """The messages of an open ``text/event-stream`` response, in order."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()

    async def next(self, seconds: float = WAIT) -> Sse | None:
        """The next message, or None once the server has closed the stream."""
        message = Sse()
        seen = False
        async with asyncio.timeout(seconds):
            async for line in self.lines:
                if line == "":
                    if seen:
                        return message
                    continue
                seen = True
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "":
                    message.comments.append(value)
                elif name == "data":
                    message.data = value if message.data is None else f"{message.data}\n{value}"
                elif name == "retry":
                    message.retry = int(value)
                elif name in ("event", "id"):
                    setattr(message, name, value)
        return None

    async def next_status(self, seconds: float = WAIT) -> dict[str, Any]:
        """The next status event, skipping heartbeats."""
        while True:
            message = await self.next(seconds)
            assert message is not None, "the stream ended"
            if message.event is not None or message.data is not None:
                return message.status()


@asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None
) -> AsyncIterator[SseReader]:
    """An open stream whose first message (the ``retry`` hint) is already read, so its
    cursor is fixed by the time this returns."""
    async with client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        reader = SseReader(response)
        hello = await reader.next()
        assert hello is not None
        assert hello.retry == 1000, "EventSource clients reconnect after a second"
        assert hello.event is None
        assert hello.data is None
        yield reader


async def eventually(check: Callable[[], bool], seconds: float = WAIT) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"not reached in {seconds} s"
        await asyncio.sleep(0.01)


async def database_events(engine: AsyncEngine, mailing_id: int) -> list[dict[str, Any]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(MessageEvent).where(MessageEvent.mailing_id == mailing_id).order_by("id")
        )
        return [dict(row) for row in rows.mappings()]


def brief(event: dict[str, Any]) -> tuple[int, int, str | None, str]:
    return (event["id"], event["message_id"], event["old_status"], event["status"])


async def test_a_mailings_events_arrive_live_and_resume_exactly_after_a_reconnect(
    api: httpx.AsyncClient,
    live_server: LiveServer,
    engine: AsyncEngine,
    smtp: SmtpPeer,
    start_worker: StartWorker,
) -> None:
    smtp.delay = 0.02  # the sends take a while, so the reconnect falls in the middle of them
    recipients = [client(n, f"user{n}@example.ru") for n in range(1, 11)]
    recipients += [client(11, "later@example.ru"), client(12, None, phone="+79161234567")]
    mailing_id = await arrange(api, recipients)
    mailing = assert_ok(await api.get(f"/mailing/{mailing_id}"), 200)
    other = {
        "name": "Другая",
        "project_id": mailing["project_id"],
        "template_id": mailing["template_id"],
        "status": 1,
        "channels": [1],
        "event": "2020-08-02",
    }
    other_id = assert_ok(await api.post("/mailing/create", json=other))["id"]
    hub = live_server.app.state.event_hub

    async with open_stream(api, f"/mailing/{mailing_id}/events") as first:
        await start_worker()
        before = [await first.next_status() for _ in range(8)]
    # The client left: its generator ends and its subscription goes.
    await eventually(lambda: hub.subscribers == 0)

    resume = {"Last-Event-ID": str(before[-1]["id"])}
    after: list[dict[str, Any]] = []
    async with open_stream(api, f"/mailing/{mailing_id}/events?since=0", headers=resume) as second:
        await until(lambda: all_final(engine))
        expected = await database_events(engine, mailing_id)
        while not after or after[-1]["id"] < expected[-1]["id"]:
            after.append(await second.next_status())

    streamed = before + after
    assert [brief(event) for event in streamed] == [brief(event) for event in expected]
    assert {event["mailing_id"] for event in streamed} == {mailing_id}
    assert {event["project_id"] for event in streamed} == {mailing["project_id"]}
    assert [StatusEvent.model_validate(event).id for event in streamed] == [
        event["id"] for event in expected
    ]
    assert set(streamed[0]) == set(StatusEvent.model_fields)
    statuses = {(event["client_guid"], event["status"]) for event in streamed}
    assert ("c1", "sent") in statuses
    assert ("c11", "failed") in statuses
    assert ("c12", "skipped") in statuses
    assert {event["channel"] for event in streamed} == {"email"}
    assert await database_events(engine, other_id), "the other mailing had events, not streamed"


async def test_the_stream_hears_a_runs_skipped_messages_not_its_queued_ones(
    api: httpx.AsyncClient, engine: AsyncEngine, live_server: LiveServer
) -> None:
    """A run's messages made ``queued`` push no event (a million of them would reach every
    reader before the first send); the ``skipped`` ones do. A later change of a queued
    message (its expiry here) arrives as usual."""
    mailing_id = await arrange(
        api,
        [
            client(1, "ok@example.ru"),
            client(2, "out@example.ru", opted_out=True),
            client(3, "ok3@example.ru"),
        ],
    )
    async with open_stream(api, f"/mailing/{mailing_id}/events") as live:
        assert await Scheduler(create_sessionmaker(engine)).tick()
        skipped = await live.next_status()
        assert (skipped["client_guid"], skipped["old_status"], skipped["status"]) == (
            "c2",
            None,
            "skipped",
        )
        assert skipped["reason"] == "Клиент отказался от рассылок"
        assert_ok(await api.post(f"/mailing/{mailing_id}/cancel"), 200)
        expired = [await live.next_status() for _ in range(2)]
    # Nothing between the skip and the expiries: no creation event of c1's or c3's.
    assert [(event["client_guid"], event["old_status"], event["status"]) for event in expired] == [
        ("c1", "queued", "expired"),
        ("c3", "queued", "expired"),
    ]
    assert expired[0]["id"] > skipped["id"]
    assert [brief(event) for event in [skipped, *expired]] == [
        brief(event) for event in await database_events(engine, mailing_id)
    ]


async def _two_projects(api: httpx.AsyncClient, engine: AsyncEngine) -> tuple[int, int, int, int]:
    """Project A with a mailing to three clients, two of them opted out, project B with one to
    two clients, one opted out; both started (a message made ``queued`` has no event; the
    ``skipped`` ones of the opted out have theirs). Returns (project A, mailing A, project B,
    mailing B)."""
    found: list[int] = []
    for code, guids in (("A", ["a1", "a2", "a3"]), ("B", ["b1", "b2"])):
        project_id = await make_project(api, code=code, name=f"Проект {code}")
        template_id = await make_template(api, project_id)
        people = [
            {
                "guid": guid,
                "first_name": guid,
                "last_name": code,
                "email": f"{guid}@example.ru",
                "opted_out": guid[1:] != "1",
            }
            for guid in guids
        ]
        imported = assert_ok(
            await api.post("/client/import", json={"project": code, "clients": people})
        )
        assert imported["created"] == len(guids), imported
        body = {
            "name": f"Рассылка {code}",
            "project_id": project_id,
            "template_id": template_id,
            "status": 1,
            "channels": [1],
            "event": "2020-08-02",
        }
        found += [project_id, int(assert_ok(await api.post("/mailing/create", json=body))["id"])]
    started = await Scheduler(create_sessionmaker(engine)).tick()
    assert len(started) == 2, started
    project_a, mailing_a, project_b, mailing_b = found
    return project_a, mailing_a, project_b, mailing_b


async def test_the_project_stream_filters_and_a_stream_starts_now_unless_asked(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    project_a, mailing_a, project_b, mailing_b = await _two_projects(api, engine)
    history = [(event["mailing_id"], event["status"]) for event in await _all_events(engine)]
    # The skipped messages' creation events; the queued ones have none (see docs/stream.md).
    assert sorted(history) == sorted(
        [(mailing_a, "skipped"), (mailing_a, "skipped"), (mailing_b, "skipped")]
    )

    async with (
        open_stream(api, "/events?since=0") as everything,
        open_stream(api, f"/events?project_id={project_a}&since=0") as only_a,
        open_stream(api, f"/events?project_id={project_a}") as only_a_from_now,
        open_stream(api, f"/mailing/{mailing_a}/events") as mailing_from_now,
    ):
        replayed = [await everything.next_status() for _ in range(3)]
        assert [(event["mailing_id"], event["status"]) for event in replayed] == history
        assert {event["project_id"] for event in replayed} == {project_a, project_b}
        skipped_a = [await only_a.next_status() for _ in range(2)]
        assert {(event["project_id"], event["status"]) for event in skipped_a} == {
            (project_a, "skipped")
        }

        # B's expiry (of b1, its one queued message) is written before A's: a stream that did
        # not filter would show it first.
        assert_ok(await api.post(f"/mailing/{mailing_b}/cancel"), 200)
        assert_ok(await api.post(f"/mailing/{mailing_a}/cancel"), 200)
        expired_b = await everything.next_status()
        assert (expired_b["mailing_id"], expired_b["status"]) == (mailing_b, "expired")
        for reader in (only_a, only_a_from_now, mailing_from_now):
            event = await reader.next_status()
            assert (event["project_id"], event["mailing_id"], event["status"]) == (
                project_a,
                mailing_a,
                "expired",
            )
            assert event["id"] > expired_b["id"]

    # The query parameter resumes like the header, for clients that cannot set one.
    url = f"/events?project_id={project_a}&last_event_id={skipped_a[0]['id']}"
    async with open_stream(api, url) as resumed:
        assert await resumed.next_status() == skipped_a[1]


async def _all_events(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as connection:
        rows = await connection.execute(select(MessageEvent).order_by(MessageEvent.id))
        return [dict(row) for row in rows.mappings()]


async def test_unknown_mailings_and_projects_are_404_and_bad_cursors_400(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    project_a, mailing_a, _, _ = await _two_projects(api, engine)
    assert_error(await api.get("/mailing/999999/events"), 404, "Страница не найдена")
    assert_error(await api.get("/mailing/abc/events"), 404, "Страница не найдена")
    assert_error(await api.get("/events?project_id=999999"), 404, "Страница не найдена")
    url = f"/mailing/{mailing_a}/events"
    for bad in ("abc", "-1", "1.5", "１２", "99999999999999999999999", "1 2"):
        details = assert_error(
            await api.get(url, headers={"Last-Event-ID": bad.encode()}), 400, "Ошибка валидации"
        )
        assert [detail["field"] for detail in details] == ["Last-Event-ID"], bad
    for query in ("last_event_id=-1", "last_event_id=x", "since=-5", "since=1e3", "project_id=0"):
        assert_error(await api.get(f"/events?{query}"), 400, "Ошибка валидации")
    assert_error(await api.get(f"/events?project_id={project_a}&since=x"), 400, "Ошибка валидации")


async def test_heartbeats_flow_and_the_lifetime_ends_with_reconnect(
    start_server: StartServer,
) -> None:
    server = await start_server(sse_ping=0.2, sse_max_lifetime=1.5)
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=WAIT) as client,
        open_stream(client, "/events") as stream,
    ):
        heartbeats = 0
        while True:
            message = await stream.next()
            assert message is not None, "the stream ended without saying so"
            if message.event is None:
                assert message.data is None
                assert message.comments
                assert message.comments[0].startswith("ping")
                heartbeats += 1
                continue
            break
        assert heartbeats >= 2, "a ping every 0.2 s over a 1.5 s lifetime"
        assert message.event == "reconnect"
        assert message.retry == 1000
        assert message.data is not None
        assert json.loads(message.data) == {"reason": "lifetime", "last_event_id": 0}
        assert message.id == "0", "EventSource resumes from the cursor it was given"
        assert await stream.next() is None, "the server closes the stream after it"


async def test_stopping_the_server_ends_open_streams_promptly(start_server: StartServer) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT) as client:
        async with open_stream(client, "/events") as stream:
            started = time.monotonic()
            stopping = asyncio.create_task(server.stop())
            goodbye = await stream.next()
            assert goodbye is not None
            assert goodbye.event == "reconnect"
            assert goodbye.data is not None
            assert json.loads(goodbye.data)["reason"] == "shutdown"
            assert await stream.next() is None
        await asyncio.wait_for(stopping, WAIT)
        elapsed = time.monotonic() - started
    print(f"\nserver with an open stream stopped in {elapsed:.2f} s")
    # Its stream lifetime is an hour: without the goodbye, the stop would wait for it.
    assert elapsed < 15


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_an_event_committed_by_another_engine_reaches_the_stream_at_once(
    api: httpx.AsyncClient,
    live_server: LiveServer,
    engine: AsyncEngine,
    smtp: SmtpPeer,
    start_worker: StartWorker,
) -> None:
    """``engine`` is not the server's: its commits reach the server only through PostgreSQL
    (the NOTIFY), as a worker's in another process do."""
    mailing_id = await arrange(api, [client(1, "ok@example.ru")])
    await start_worker()
    await until(lambda: all_final(engine))
    async with engine.connect() as connection:
        message_id = await connection.scalar(select(Message.id).where(Message.status == "sent"))
    assert message_id is not None
    hub = live_server.app.state.event_hub
    await eventually(lambda: hub.listening)

    sessionmaker = create_sessionmaker(engine)
    latencies = []
    async with open_stream(api, f"/mailing/{mailing_id}/events") as stream:
        for n in range(20):
            async with sessionmaker() as session, session.begin():
                note = queue.Verdict(message_id, "sent", f"отметка {n}")
                assert await queue.settle(session, verdicts=[note], now=utcnow()) == [message_id]
            committed = time.perf_counter()
            event = await stream.next_status()
            latencies.append(time.perf_counter() - committed)
            assert (event["message_id"], event["reason"]) == (message_id, f"отметка {n}")
    latencies.sort()
    median = statistics.median(latencies)
    print(
        f"\ncommit → stream on PostgreSQL: median {median * 1000:.1f} ms, "
        f"max {latencies[-1] * 1000:.1f} ms over {len(latencies)} events"
    )
    assert median < 2.0


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_a_lost_listen_connection_falls_back_to_polling_and_comes_back(
    api: httpx.AsyncClient, live_server: LiveServer, engine: AsyncEngine
) -> None:
    project_a, mailing_a, _, mailing_b = await _two_projects(api, engine)
    hub = live_server.app.state.event_hub
    await eventually(lambda: hub.listening)
    killed = await _listener_pid(engine)
    assert killed is not None
    async with open_stream(api, f"/events?project_id={project_a}") as stream:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": killed})
        # Written while nothing listens: found by polling all the same.
        assert_ok(await api.post(f"/mailing/{mailing_b}/cancel"), 200)
        assert_ok(await api.post(f"/mailing/{mailing_a}/cancel"), 200)
        event = await stream.next_status()
        assert (event["mailing_id"], event["status"]) == (mailing_a, "expired")

    async def listens_again() -> bool:
        return await _listener_pid(engine) not in (None, killed)

    await until(listens_again, seconds=WAIT)
    await eventually(lambda: hub.listening)


async def _listen_pids(engine: AsyncEngine) -> list[int]:
    async with engine.connect() as connection:
        rows = await connection.scalars(
            text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND query LIKE 'LISTEN%rassylka_events%'"
            )
        )
        return list(rows)


async def _listener_pid(engine: AsyncEngine) -> int | None:
    pids = await _listen_pids(engine)
    return pids[0] if len(pids) == 1 else None


async def test_more_events_than_a_batch_stream_whole_and_in_order(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    count = 1200  # over two batches of 500, for the hub's shared reads and a replay's own
    # Opted out: each message is made skipped, with its event (a queued one would have none).
    people = [client(n, f"user{n}@example.ru", opted_out=True) for n in range(1, count + 1)]
    async with open_stream(api, "/events") as live:
        mailing_id = await arrange(api, people)
        assert await Scheduler(create_sessionmaker(engine)).tick()
        expected = [brief(event) for event in await database_events(engine, mailing_id)]
        assert len(expected) == count
        streamed = [brief(await live.next_status()) for _ in range(count)]
        assert streamed == expected
    async with open_stream(api, f"/mailing/{mailing_id}/events?since=0") as replay:
        assert [brief(await replay.next_status()) for _ in range(count)] == expected
