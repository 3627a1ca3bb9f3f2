"""Schedules, send windows, the lifecycle and the scheduler, on both databases.

The scheduler is driven with an injected clock (``Scheduler.tick(now=…)``): no test sleeps for
minutes. Pausing during a run is checked against a real SMTP server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from conftest import StartWorker
from helpers import assert_error, assert_ok, make_project, make_template
from rassylka.clients.models import Client
from rassylka.db import create_engine, create_sessionmaker
from rassylka.engine.scheduler import Scheduler
from rassylka.messages.models import Message, Run
from smtp_peer import SmtpPeer
from test_dispatcher import all_final, statuses, until

CLIENTS: list[dict[str, Any]] = [
    {"guid": "msk", "first_name": "А", "last_name": "А", "email": "msk@example.ru",
     "timezone": "Europe/Moscow"},
    {"guid": "vvo", "first_name": "Б", "last_name": "Б", "email": "vvo@example.ru",
     "timezone": "Asia/Vladivostok"},
    {"guid": "nyc", "first_name": "В", "last_name": "В", "email": "nyc@example.ru",
     "timezone": "America/New_York"},
    {"guid": "ber", "first_name": "Г", "last_name": "Г", "email": "ber@example.ru",
     "timezone": "Europe/Berlin"},
]  # fmt: skip


INVALID = "Ошибка валидации"
NOT_FOUND = "Страница не найдена"
ILLEGAL = "Недопустимая смена статуса рассылки"


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


async def mailing(api: httpx.AsyncClient, *, clients: list[dict[str, Any]] | None = None,
                  **fields: Any) -> dict[str, Any]:  # fmt: skip
    project_id = await make_project(api)
    template_id = await make_template(api, project_id)
    if clients is None:
        clients = CLIENTS
    if clients:
        assert_ok(await api.post("/client/import", json={"project": "010", "clients": clients}))
    body = {
        "name": "Рассылка",
        "project_id": project_id,
        "template_id": template_id,
        "status": 1,
        "channels": [1],
        "event": "2030-01-01T00:00:00Z",
        **fields,
    }
    return assert_ok(await api.post("/mailing/create", json=body))


async def messages_by_address(engine: AsyncEngine) -> dict[str, Any]:
    async with engine.connect() as connection:
        rows = (await connection.execute(select(Message))).mappings().all()
    return {str(row["address"]): row for row in rows}


async def runs(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as connection:
        return list(
            (await connection.execute(select(Run).order_by(Run.scheduled_at))).mappings().all()
        )


# -- the API --------------------------------------------------------------------------------


async def test_a_recurring_mailing_shows_its_schedule_and_next_run(
    api: httpx.AsyncClient,
) -> None:
    data = await mailing(
        api,
        event="2030-01-01",
        timezone="Europe/Moscow",
        schedule={"cron": "0 10 * * 1", "max_runs": 3},
        send_window={"start": "09:00", "end": "21:00", "days": [5, 1, 2]},
        ends_at="2030-06-30",
    )
    assert data["schedule"] == {
        "cron": "0 10 * * 1",
        "rrule": None,
        "until": None,
        "max_runs": 3,
        "catch_up": "once",
    }
    assert data["send_window"] == {"start": "09:00", "end": "21:00", "days": [1, 2, 5]}
    # 2030-01-07 is the first Monday; 10:00 in Moscow is 07:00 UTC.
    assert data["next_run_at"] == "2030-01-07T07:00:00Z"
    assert data["ends_at"] == "2030-06-30T21:00:00Z", "through the whole last day, in Moscow"
    assert data["runs_count"] == 0
    preview = assert_ok(await api.get(f"/mailing/{data['id']}/schedule?count=5"), 200)
    assert preview == {
        "timezone": "Europe/Moscow",
        "runs": [
            "2030-01-07T10:00:00+03:00",
            "2030-01-14T10:00:00+03:00",
            "2030-01-21T10:00:00+03:00",
        ],
    }


async def test_a_date_event_with_a_window_starts_at_the_windows_opening(
    api: httpx.AsyncClient,
) -> None:
    data = await mailing(
        api,
        event="2030-03-05",
        timezone="Asia/Vladivostok",
        send_window={"start": "09:30", "end": "20:00"},
    )
    assert data["event"] == "2030-03-05T09:30:00+10:00"
    assert data["next_run_at"] == "2030-03-04T23:30:00Z"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"schedule": {"cron": "61 * * * *"}}, "schedule.cron"),
        ({"schedule": {"cron": "0 0 30 2 *"}}, "schedule.cron"),
        ({"schedule": {"rrule": "FREQ=SOMETIMES"}}, "schedule.rrule"),
        ({"schedule": {"cron": "0 10 * * *", "rrule": "FREQ=DAILY"}}, "schedule"),
        ({"schedule": {}}, "schedule"),
        ({"schedule": {"cron": "0 10 * * *", "max_runs": 0}}, "schedule.max_runs"),
        ({"send_window": {"start": "25:00", "end": "21:00"}}, "send_window.start"),
        ({"send_window": {"start": "09:00", "end": "09:00"}}, "send_window"),
        ({"send_window": {"start": "09:00", "end": "21:00", "days": [8]}}, "send_window.days"),
        ({"ends_at": "2029-12-31"}, "ends_at"),
        ({"status": 3}, "status"),
    ],
)
async def test_bad_schedules_are_400_in_the_envelope(
    api: httpx.AsyncClient, fields: dict[str, Any], field: str
) -> None:
    project_id = await make_project(api)
    template_id = await make_template(api, project_id)
    body = {
        "name": "m",
        "project_id": project_id,
        "template_id": template_id,
        "status": 1,
        "channels": [1],
        "event": "2030-01-01",
        **fields,
    }
    details = assert_error(await api.post("/mailing/create", json=body), 400, INVALID)
    assert any(detail["field"].startswith(field) for detail in details), details


async def test_the_lifecycle_allows_the_legal_moves_only(api: httpx.AsyncClient) -> None:
    data = await mailing(api, status=0)
    id = data["id"]
    for action, status in [("pause", 409), ("resume", 409)]:
        details = assert_error(await api.post(f"/mailing/{id}/{action}"), status, ILLEGAL)
        assert details[0]["field"] == "status"
        assert "черновик" in details[0]["message"]
    assert assert_ok(await api.post(f"/mailing/{id}/start"), 200)["status"] == 1
    assert_error(await api.post(f"/mailing/{id}/start"), 409, ILLEGAL)
    assert assert_ok(await api.post(f"/mailing/{id}/pause"), 200)["status"] == 2
    assert assert_ok(await api.post(f"/mailing/{id}/resume"), 200)["status"] == 1
    assert assert_ok(await api.post(f"/mailing/{id}/cancel"), 200)["status"] == 4
    assert_error(await api.post(f"/mailing/{id}/resume"), 409, ILLEGAL)
    assert_error(await api.put(f"/mailing/{id}/update", json={"status": 1}), 409, ILLEGAL)
    assert_error(await api.post("/mailing/999999/pause"), 404, NOT_FOUND)


async def test_the_status_set_by_update_follows_the_same_rules(api: httpx.AsyncClient) -> None:
    id = (await mailing(api, status=0))["id"]
    assert assert_ok(await api.put(f"/mailing/{id}/update", json={"status": 1}))["status"] == 1
    assert assert_ok(await api.put(f"/mailing/{id}/update", json={"status": 2}))["status"] == 2
    details = assert_error(await api.put(f"/mailing/{id}/update", json={"status": 3}), 409, ILLEGAL)
    assert "завершена" in details[0]["message"]
    cleared = assert_ok(
        await api.put(f"/mailing/{id}/update", json={"schedule": {"cron": "0 9 * * *"}})
    )
    assert cleared["schedule"]["cron"] == "0 9 * * *"
    back = assert_ok(await api.put(f"/mailing/{id}/update", json={"schedule": None}))
    assert back["schedule"] is None


# -- the scheduler, with an injected clock -----------------------------------------------------


async def test_recurring_runs_start_on_time_once_each(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    data = await mailing(
        api, event="2030-01-01", timezone="Europe/Moscow", schedule={"cron": "0 10 * * *"}
    )
    scheduler = Scheduler(create_sessionmaker(engine))
    assert await scheduler.tick(now=utc(2030, 1, 1, 6, 59, 59)) == []
    first = await scheduler.tick(now=utc(2030, 1, 1, 7, 0, 0))
    assert len(first) == 1
    assert await scheduler.tick(now=utc(2030, 1, 1, 7, 0, 30)) == [], "one run per occurrence"
    second = await scheduler.tick(now=utc(2030, 1, 2, 7, 0, 1))
    assert len(second) == 1
    found = await runs(engine)
    assert [run["scheduled_at"] for run in found] == [utc(2030, 1, 1, 7), utc(2030, 1, 2, 7)]
    async with engine.connect() as connection:
        per_run = (await connection.execute(select(Message.run_id, Message.address))).all()
    assert len(per_run) == 2 * len(CLIENTS), "each client once per run"
    listed = assert_ok(await api.get(f"/mailing/{data['id']}/runs"), 200)
    assert listed["total"] == 2
    assert listed["items"][0]["scheduled_at"] == "2030-01-02T07:00:00Z"
    assert listed["items"][0]["counts"] == {"queued": 4}
    assert listed["items"][0]["total"] == 4
    read = assert_ok(await api.get(f"/mailing/{data['id']}"), 200)
    assert read["runs_count"] == 2
    assert read["next_run_at"] == "2030-01-03T07:00:00Z"


@pytest.mark.parametrize(("catch_up", "started"), [("once", 1), ("skip", 0)])
async def test_after_downtime_missed_runs_never_come_as_a_burst(
    api: httpx.AsyncClient, engine: AsyncEngine, catch_up: str, started: int
) -> None:
    data = await mailing(
        api,
        event="2030-01-01",
        timezone="UTC",
        schedule={"cron": "0 * * * *", "catch_up": catch_up},
    )
    scheduler = Scheduler(create_sessionmaker(engine))
    assert len(await scheduler.tick(now=utc(2030, 1, 1, 0, 0, 1))) == 1
    # Down for 5 days: 119 hourly runs missed.
    assert len(await scheduler.tick(now=utc(2030, 1, 6, 0, 30))) == started
    read = assert_ok(await api.get(f"/mailing/{data['id']}"), 200)
    assert read["next_run_at"] == "2030-01-06T01:00:00Z"
    assert read["runs_count"] == 1 + started


async def test_a_one_off_in_the_past_starts_now_and_completes(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    data = await mailing(api, event="2020-01-01", clients=[])
    scheduler = Scheduler(create_sessionmaker(engine))
    assert len(await scheduler.tick(now=utc(2030, 1, 1))) == 1
    read = assert_ok(await api.get(f"/mailing/{data['id']}"), 200)
    assert read["status"] == 3, "a run with nobody to send to is over at once"
    assert read["next_run_at"] is None


async def test_each_recipient_waits_for_their_own_window(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await mailing(
        api,
        event="2030-03-30T21:00:00Z",
        send_window={"start": "09:00", "end": "21:00"},
    )
    run_at = utc(2030, 3, 30, 21, 0)
    await Scheduler(create_sessionmaker(engine)).tick(now=run_at)
    found = await messages_by_address(engine)
    # 21:00 UTC on Saturday 30 March 2030: midnight in Moscow, 07:00 Sunday in Vladivostok,
    # 17:00 in New York (inside), 22:00 in Berlin — whose clocks go forward that night.
    assert found["msk@example.ru"]["next_attempt_at"] == utc(2030, 3, 31, 6, 0)  # 09:00 MSK
    assert found["vvo@example.ru"]["next_attempt_at"] == utc(2030, 3, 30, 23, 0)  # 09:00 VLAT
    assert found["nyc@example.ru"]["next_attempt_at"] == run_at
    assert found["ber@example.ru"]["next_attempt_at"] == utc(2030, 3, 31, 7, 0)  # 09:00 CEST
    assert {row["timezone"] for row in found.values()} == {
        "Europe/Moscow",
        "Asia/Vladivostok",
        "America/New_York",
        "Europe/Berlin",
    }


async def test_a_client_without_a_zone_gets_the_mailings_own(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    clients = [{"guid": "x", "first_name": "Х", "last_name": "Х", "email": "x@example.ru"}]
    await mailing(
        api,
        clients=clients,
        timezone="Asia/Kolkata",
        event="2030-01-10T00:00:00Z",
        send_window={"start": "09:00", "end": "18:00"},
    )
    await Scheduler(create_sessionmaker(engine)).tick(now=utc(2030, 1, 10))
    found = await messages_by_address(engine)
    assert found["x@example.ru"]["timezone"] == "Asia/Kolkata"
    assert found["x@example.ru"]["next_attempt_at"] == utc(2030, 1, 10, 3, 30)


async def test_nothing_is_sent_after_ends_at(api: httpx.AsyncClient, engine: AsyncEngine) -> None:
    data = await mailing(
        api,
        event="2030-01-01T00:00:00Z",
        ends_at="2030-01-01T06:00:00Z",
        send_window={"start": "09:00", "end": "21:00"},
    )
    scheduler = Scheduler(create_sessionmaker(engine))
    await scheduler.tick(now=utc(2030, 1, 1, 0, 0, 1))
    await scheduler.tick(now=utc(2030, 1, 1, 6, 0, 0))
    found = await messages_by_address(engine)
    by_status = {row["status"] for row in found.values()}
    assert by_status == {"expired"}, "every recipient was outside the window until the end"
    assert {row["reason"] for row in found.values()} == {"Срок рассылки истёк"}
    read = assert_ok(await api.get(f"/mailing/{data['id']}"), 200)
    assert read["status"] == 3


async def test_cancel_expires_what_is_queued(api: httpx.AsyncClient, engine: AsyncEngine) -> None:
    data = await mailing(api, event="2030-01-01T00:00:00Z")
    await Scheduler(create_sessionmaker(engine)).tick(now=utc(2030, 1, 1, 0, 0, 1))
    assert_ok(await api.post(f"/mailing/{data['id']}/cancel"), 200)
    found = await messages_by_address(engine)
    assert {(row["status"], row["reason"]) for row in found.values()} == {
        ("expired", "Рассылка отменена")
    }


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_two_schedulers_racing_start_a_run_once(
    api: httpx.AsyncClient, engine: AsyncEngine, database_url: str
) -> None:
    await mailing(api, event="2030-01-01T00:00:00Z", schedule={"cron": "0 * * * *"})
    engines = [create_engine(database_url) for _ in range(4)]
    try:
        schedulers = [Scheduler(create_sessionmaker(each)) for each in engines]
        now = utc(2030, 1, 1, 0, 0, 5)
        started = await asyncio.gather(*(scheduler.tick(now=now) for scheduler in schedulers))
    finally:
        for each in engines:
            await each.dispose()
    assert sorted(len(runs) for runs in started) == [0, 0, 0, 1]
    assert len(await runs(engine)) == 1
    assert len(await messages_by_address(engine)) == len(CLIENTS)


# -- pausing and resuming during a run, against a real SMTP server --------------------------


async def test_pause_stops_sends_within_a_second_and_resume_sends_the_rest_once(
    api: httpx.AsyncClient, engine: AsyncEngine, smtp: SmtpPeer, start_worker: StartWorker
) -> None:
    smtp.delay = 0.05
    clients = [
        {"guid": f"c{n}", "first_name": "И", "last_name": "П", "email": f"user{n}@example.ru"}
        for n in range(60)
    ]
    data = await mailing(api, clients=clients, event="2020-01-01")
    await start_worker(concurrency={1: 2})
    await until(lambda: asyncio.sleep(0, len(smtp.received) >= 5))
    assert_ok(await api.post(f"/mailing/{data['id']}/pause"), 200)
    await asyncio.sleep(1.0)
    after_a_second = len(smtp.received)
    await asyncio.sleep(1.0)
    assert len(smtp.received) == after_a_second, "nothing sent a second after the pause"
    assert after_a_second < 60
    found = await statuses(engine)
    assert sum(row["status"] == "queued" for row in found.values()) == 60 - after_a_second
    assert_ok(await api.post(f"/mailing/{data['id']}/resume"), 200)
    await until(lambda: all_final(engine))
    recipients = smtp.recipients()
    assert len(recipients) == 60
    assert set(recipients.values()) == {1}, "nothing sent twice"

    async def completed() -> bool:
        return bool((await api.get(f"/mailing/{data['id']}")).json()["data"]["status"] == 3)

    await until(completed)
    listed = assert_ok(await api.get(f"/mailing/{data['id']}/runs"), 200)
    assert listed["items"][0]["counts"] == {"sent": 60}
    assert listed["items"][0]["status"] == "finished"


async def test_a_phone_that_names_one_zone_sets_the_recipients_zone(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    clients = [
        # A Novosibirsk landline names one zone; a Russian mobile names 16, so no answer.
        {"guid": "nsk", "first_name": "Н", "last_name": "Н", "phone": "+7 383 222-33-44"},
        {"guid": "mob", "first_name": "М", "last_name": "М", "phone": "+7 916 123-45-67"},
    ]
    data = await mailing(
        api,
        clients=clients,
        channels=[2],
        timezone="Europe/Moscow",
        event="2030-01-10T02:00:00Z",
        send_window={"start": "09:00", "end": "21:00"},
    )
    await Scheduler(create_sessionmaker(engine)).tick(now=utc(2030, 1, 10, 2, 0))
    found = await messages_by_address(engine)
    assert found["+73832223344"]["timezone"] == "Asia/Novosibirsk"
    assert found["+73832223344"]["next_attempt_at"] == utc(2030, 1, 10, 2, 0)  # 09:00 there
    assert found["+79161234567"]["timezone"] == "Europe/Moscow"
    assert found["+79161234567"]["next_attempt_at"] == utc(2030, 1, 10, 6, 0)  # 09:00 MSK
    # Changing the number moves the zone with it.
    listed = assert_ok(await api.get("/client/list?project=010"), 200)["items"]
    nsk = next(client for client in listed if client["guid"] == "nsk")
    assert_ok(await api.put(f"/client/{nsk['id']}/update", json={"phone": "+7 495 123-45-67"}))
    async with engine.connect() as connection:
        zone = await connection.scalar(select(Client.phone_timezone).where(Client.id == nsk["id"]))
    assert zone == "Europe/Moscow"
    assert_ok(await api.post(f"/mailing/{data['id']}/cancel"), 200)


async def test_who_opts_out_or_is_suppressed_after_the_run_is_made_is_never_sent(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await mailing(api, event="2030-01-01T00:00:00Z")
    await Scheduler(create_sessionmaker(engine)).tick(now=utc(2030, 1, 1, 0, 0, 1))
    listed = assert_ok(await api.get("/client/list?project=010"), 200)["items"]
    msk = next(client for client in listed if client["guid"] == "msk")
    assert_ok(await api.put(f"/client/{msk['id']}/update", json={"opted_out": True}))
    assert_ok(
        await api.post(
            "/suppression/create",
            json={"project": "010", "address": "VVO@Example.RU", "reason": "жалоба"},
        )
    )
    imported = {**CLIENTS[2], "opted_out": "да"}
    assert_ok(await api.post("/client/import", json={"project": "010", "clients": [imported]}))
    newcomer = {"guid": "new", "first_name": "Н", "last_name": "Н", "email": "new@example.ru"}
    assert_ok(await api.post("/client/import", json={"project": "010", "clients": [newcomer]}))
    found = await messages_by_address(engine)
    assert (found["msk@example.ru"]["status"], found["msk@example.ru"]["reason"]) == (
        "skipped",
        "Клиент отказался от рассылок",
    )
    assert found["vvo@example.ru"]["status"] == "skipped"
    assert found["vvo@example.ru"]["reason"] == "Адрес в списке подавления: жалоба"
    assert found["nyc@example.ru"]["status"] == "skipped"
    assert found["ber@example.ru"]["status"] == "queued"
    assert "new@example.ru" not in found, "who joins after a run was made is not added to it"


async def test_a_materialisation_cut_short_leaves_nothing_and_runs_again_whole(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    count = 20_000
    clients = [
        {"guid": f"c{n}", "first_name": "И", "last_name": "П", "email": f"u{n}@example.ru"}
        for n in range(count)
    ]
    await mailing(api, clients=clients, channels=[1], event="2030-01-01T00:00:00Z")
    scheduler = Scheduler(create_sessionmaker(engine))
    now = utc(2030, 1, 1, 0, 0, 1)
    for delay in (0.01, 0.05, 0.1):  # killed at different points of the run's transaction
        task = asyncio.create_task(scheduler.tick(now=now))
        await asyncio.sleep(delay)
        if task.done():
            break
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        async with engine.connect() as connection:
            made = await connection.scalar(select(func.count()).select_from(Message))
        # Cut inside the run's transaction: nothing; after its commit: the whole run.
        assert (len(await runs(engine)), made) in {(0, 0), (1, count)}
    await scheduler.tick(now=now)
    assert len(await runs(engine)) == 1
    async with engine.connect() as connection:
        total = await connection.scalar(select(func.count()).select_from(Message))
        distinct = await connection.scalar(select(func.count(func.distinct(Message.client_id))))
    assert total == count
    assert distinct == count


async def test_a_mailing_due_at_t_starts_within_a_second_of_t(
    api: httpx.AsyncClient,
    engine: AsyncEngine,
    backend: str,
    smtp: SmtpPeer,
    start_worker: StartWorker,
) -> None:
    worker = await start_worker()
    await asyncio.sleep(0.3)  # the scheduler has looked and found nothing: it sleeps 30 s
    due = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    data = await mailing(api, clients=CLIENTS[:1], event=due.isoformat())
    if backend == "sqlite":
        worker.wake_scheduler()  # what the embedded app does after the commit
    # on PostgreSQL the API's NOTIFY wakes it from another connection

    async def started() -> bool:
        return bool(await runs(engine))

    await until(started, seconds=10)
    [run] = await runs(engine)
    assert run["scheduled_at"] == due
    lag = (run["started_at"] - due).total_seconds()
    assert 0 <= lag < 1.0, lag
    assert data["next_run_at"] == due.strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_a_mailing_that_fell_due_during_a_tick_is_started_at_once_not_a_second_later(
    api: httpx.AsyncClient, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    due = utc(2030, 1, 1, 0, 0, 0) + timedelta(milliseconds=500)
    await mailing(api, clients=CLIENTS[:1], event=due.isoformat())
    clock = [due - timedelta(milliseconds=100)]
    scheduler = Scheduler(create_sessionmaker(engine), clock=lambda: clock[0])
    assert await scheduler.tick() == []
    clock[0] = due + timedelta(milliseconds=50)  # the tick took 150 ms: it is due now
    assert await scheduler.seconds_to_next() == 0.0

    def failing(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("advancing failed")

    # Due at the tick and still due after it (it failed): a second, not a spin.
    monkeypatch.setattr("rassylka.engine.scheduler.advance", failing)
    assert await scheduler.tick() == []
    assert await scheduler.seconds_to_next() == 1.0
    monkeypatch.undo()
    assert len(await scheduler.tick()) == 1
    assert await scheduler.seconds_to_next() == 30.0, "nothing left to do"


async def test_cancel_during_a_run_stops_the_sends_and_expires_the_rest(
    api: httpx.AsyncClient, engine: AsyncEngine, smtp: SmtpPeer, start_worker: StartWorker
) -> None:
    smtp.delay = 0.05
    clients = [
        {"guid": f"c{n}", "first_name": "И", "last_name": "П", "email": f"user{n}@example.ru"}
        for n in range(40)
    ]
    data = await mailing(api, clients=clients, event="2020-01-01")
    await start_worker(concurrency={1: 2})
    await until(lambda: asyncio.sleep(0, len(smtp.received) >= 3))
    assert_ok(await api.post(f"/mailing/{data['id']}/cancel"), 200)
    await asyncio.sleep(1.0)
    sent_then = len(smtp.received)
    await asyncio.sleep(0.5)
    assert len(smtp.received) == sent_then
    found = await statuses(engine)
    by_status = Counter(row["status"] for row in found.values())
    assert by_status["sent"] == sent_then
    assert by_status["expired"] + by_status["queued"] == 40 - sent_then
    assert by_status["sending"] == 0
    assert_ok(await api.get(f"/mailing/{data['id']}"), 200)


async def test_an_rrule_schedule_runs_on_its_days_in_the_mailings_zone(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    data = await mailing(
        api,
        event="2030-03-01",
        timezone="America/New_York",
        schedule={"rrule": "FREQ=WEEKLY;BYDAY=SU;BYHOUR=9;BYMINUTE=0", "max_runs": 2},
    )
    preview = assert_ok(await api.get(f"/mailing/{data['id']}/schedule?count=5"), 200)
    # New York's clocks go forward on 10 March 2030: 09:00 is 14:00 UTC before, 13:00 after.
    assert preview["runs"] == ["2030-03-03T09:00:00-05:00", "2030-03-10T09:00:00-04:00"]
    scheduler = Scheduler(create_sessionmaker(engine))
    assert len(await scheduler.tick(now=utc(2030, 3, 3, 14, 0, 1))) == 1
    assert len(await scheduler.tick(now=utc(2030, 3, 10, 13, 0, 1))) == 1
    assert await scheduler.tick(now=utc(2030, 3, 17, 13, 0, 1)) == [], "max_runs reached"
    read = assert_ok(await api.get(f"/mailing/{data['id']}"), 200)
    assert read["runs_count"] == 2
    assert read["next_run_at"] is None
