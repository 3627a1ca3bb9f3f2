"""An active mailing whose moment has come becomes one message per client per channel."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import event, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from conftest import POSTGRESQL_ONLY
from helpers import assert_ok, make_project, make_template
from rassylka.clients.models import Client
from rassylka.db import create_sessionmaker, utcnow
from rassylka.engine.scheduler import Scheduler
from rassylka.mailings.models import Mailing
from rassylka.messages import queue, repository
from rassylka.messages.models import Message, MessageEvent, Run
from rassylka.suppressions.models import Suppression
from test_dispatcher import until

CLIENTS: list[dict[str, Any]] = [
    {
        "guid": "both",
        "first_name": "А",
        "last_name": "А",
        "email": "a@example.com",
        "phone": "+79160000001",
    },
    {"guid": "mail", "first_name": "Б", "last_name": "Б", "email": "b@example.com"},
    {"guid": "phone", "first_name": "В", "last_name": "В", "phone": "+79160000003"},
]


async def arrange(api: httpx.AsyncClient, **mailing: Any) -> int:
    project_id = await make_project(api, code="010")
    await make_project(api, code="other")
    template_id = await make_template(api, project_id)
    data = assert_ok(await api.post("/client/import", json={"project": "010", "clients": CLIENTS}))
    assert data["created"] == 3
    outsider = {**CLIENTS[0], "project": "other"}
    assert_ok(await api.post("/client/create", json=outsider))
    body = {
        "name": "m",
        "project_id": project_id,
        "template_id": template_id,
        "status": 1,
        "channels": [1, 2],
        "event": "2020-08-02",
    }
    body.update(mailing)
    return int(assert_ok(await api.post("/mailing/create", json=body))["id"])


async def start(engine: AsyncEngine) -> list[int]:
    return await Scheduler(create_sessionmaker(engine)).tick()


async def messages(engine: AsyncEngine) -> dict[tuple[str | None, int], tuple[str, str | None]]:
    """(address or guid, channel) → (status, reason) of every message."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(
                Message.address, Message.channel, Message.status, Message.reason, Message.client_id
            )
        )
        return {
            (row.address or f"client {row.client_id}", row.channel): (row.status, row.reason)
            for row in rows
        }


async def test_a_due_mailing_becomes_messages(api: httpx.AsyncClient, engine: AsyncEngine) -> None:
    mailing_id = await arrange(api)
    [run_id] = await start(engine)
    found = await messages(engine)
    assert len(found) == 6, (
        "3 clients of the project × 2 channels; the other project's client is not in"
    )
    assert found[("a@example.com", 1)] == ("queued", None)
    assert found[("+79160000001", 2)] == ("queued", None)
    assert found[("b@example.com", 1)] == ("queued", None)
    assert found[("+79160000003", 2)] == ("queued", None)
    skipped = {key: value for key, value in found.items() if value[0] == "skipped"}
    assert sorted(reason for _, reason in skipped.values()) == [
        "У клиента нет email",
        "У клиента нет телефона",
    ]
    async with engine.connect() as connection:
        run = (await connection.execute(select(Run))).one()
        assert (run.id, run.mailing_id, run.status) == (run_id, mailing_id, "running")
        due = await connection.scalars(
            select(Message.next_attempt_at).where(Message.status == "queued")
        )
        assert all(moment is not None for moment in due)


async def test_starting_twice_makes_nothing_twice(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await arrange(api)
    assert len(await start(engine)) == 1
    assert await start(engine) == []
    assert len(await messages(engine)) == 6


async def test_only_one_channel(api: httpx.AsyncClient, engine: AsyncEngine) -> None:
    await arrange(api, channels=["sms"])
    await start(engine)
    found = await messages(engine)
    assert {channel for _, channel in found} == {2}
    assert len(found) == 3


async def test_not_yet_due_or_not_active_starts_nothing(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    mailing_id = await arrange(api, event="2999-01-01")
    assert await start(engine) == [], "active, not yet due"
    assert_ok(await api.post(f"/mailing/{mailing_id}/pause"), 200)
    assert_ok(await api.put(f"/mailing/{mailing_id}/update", json={"event": "2020-01-01"}))
    assert await start(engine) == [], "due, but paused"
    assert await messages(engine) == {}
    assert_ok(await api.post(f"/mailing/{mailing_id}/resume"), 200)
    assert len(await start(engine)) == 1
    assert await start(engine) == [], "a one-off runs once"


# -- audiences ----------------------------------------------------------------------------------


def person(guid: str, **fields: Any) -> dict[str, Any]:
    return {"guid": guid, "first_name": "Имя", "last_name": "Фамилия", **fields}


AUDIENCE_CLIENTS = [
    person(
        "a",
        email="a@example.com",
        tags=["vip", "moscow"],
        attributes={"city": "Москва", "orders": 3, "subscribed": True},
    ),
    person(
        "b",
        email="b@example.com",
        tags=["vip"],
        attributes={"city": "Тверь", "orders": "3", "subscribed": False},
    ),
    person(
        "c",
        email="c@example.com",
        tags=["moscow", "новый"],
        attributes={"city": "Москва", "orders": 3.0},
    ),
    person("d", email="d@example.com"),
    person(
        "e",
        email="e@example.com",
        tags=["новый"],
        attributes={"city": ["Москва"], "orders": 4, "subscribed": "true", "vip": 1},
    ),
]

# audience → the guids it selects (each a mailing of its own, all started at once).
AUDIENCES: list[tuple[dict[str, Any] | None, set[str]]] = [
    (None, {"a", "b", "c", "d", "e"}),
    ({}, {"a", "b", "c", "d", "e"}),
    ({"tags_any": [], "tags_all": None, "attributes": {}}, {"a", "b", "c", "d", "e"}),
    ({"tags_any": ["vip", "новый"]}, {"a", "b", "c", "e"}),
    ({"tags_any": ["nobody has it"]}, set()),
    ({"tags_all": ["vip", "moscow"]}, {"a"}),
    ({"tags_all": ["moscow"]}, {"a", "c"}),
    ({"tags_all": ["moscow", "moscow"]}, {"a", "c"}),
    ({"attributes": {"city": "Москва"}}, {"a", "c"}),  # e's city is a list, not the string
    ({"attributes": {"orders": 3}}, {"a", "c"}),  # 3.0 is 3; the string "3" is not
    ({"attributes": {"orders": "3"}}, {"b"}),
    ({"attributes": {"orders": 3.5}}, set()),
    ({"attributes": {"subscribed": True}}, {"a"}),  # the string "true" is not true
    ({"attributes": {"subscribed": False}}, {"b"}),
    ({"attributes": {"vip": True}}, set()),  # 1 is not true
    ({"attributes": {"absent": "x"}}, set()),
    ({"attributes": {"city": "Москва", "orders": 3}}, {"a", "c"}),
    ({"attributes": {"city": "Москва", "orders": 4}}, set()),
    (
        {
            "tags_any": ["vip", "новый"],
            "tags_all": ["moscow"],
            "attributes": {"city": "Москва", "orders": 3},
        },
        {"a", "c"},
    ),
    ({"tags_any": ["vip"], "attributes": {"subscribed": True}}, {"a"}),
]


async def make_mailing(api: httpx.AsyncClient, project_id: int, **fields: Any) -> int:
    template_id = await make_template(api, project_id)
    body = {
        "name": "m",
        "project_id": project_id,
        "template_id": template_id,
        "status": 1,
        "channels": [1],
        "event": "2020-08-02",
        **fields,
    }
    return int(assert_ok(await api.post("/mailing/create", json=body))["id"])


async def set_audience(engine: AsyncEngine, mailing_id: int, audience: Any) -> None:
    """Straight into the column: the API's audience field is wired up elsewhere."""
    async with engine.begin() as connection:
        await connection.execute(
            update(Mailing).where(Mailing.id == mailing_id).values(audience=audience)
        )


async def recipients(engine: AsyncEngine) -> dict[int, set[str]]:
    """mailing id → the guids of the clients it made messages for."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(Message.mailing_id, Client.guid).join(Client, Client.id == Message.client_id)
        )
        found: dict[int, set[str]] = {}
        for mailing_id, guid in rows:
            found.setdefault(mailing_id, set()).add(guid)
        return found


async def test_audience_selects_clients_by_tags_and_attributes(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    project_id = await make_project(api, code="010")
    data = assert_ok(
        await api.post("/client/import", json={"project": "010", "clients": AUDIENCE_CLIENTS})
    )
    assert data["created"] == len(AUDIENCE_CLIENTS), data
    mailings = []
    for audience, _ in AUDIENCES:
        mailing_id = await make_mailing(api, project_id)
        await set_audience(engine, mailing_id, audience)
        mailings.append(mailing_id)
    assert len(await start(engine)) == len(AUDIENCES)
    found = await recipients(engine)
    for mailing_id, (audience, expected) in zip(mailings, AUDIENCES, strict=True):
        assert found.get(mailing_id, set()) == expected, audience


# -- skipped: opted out, suppressed --------------------------------------------------------------

SKIPPING_CLIENTS = [
    person("ok", email="ok@example.com", phone="+79160000001"),
    person("out", email="out@example.com", phone="+79160000002", opted_out=True),
    person("mail-suppressed", email="Ms@Example.com", phone="+79160000003"),
    person("phone-suppressed", email="ps@example.com", phone="+79160000004"),
    person("out-and-suppressed", email="os@example.com", phone="+79160000005", opted_out=True),
    person("phone-only-out", phone="+79160000006", opted_out=True),
    person("phone-only-suppressed", phone="+79160000007"),
    person("elsewhere", email="elsewhere@example.com", phone="+79160000008"),
]
OPTED_OUT = "Клиент отказался от рассылок"
SUPPRESSED = "Адрес в списке подавления"


async def test_opted_out_and_suppressed_clients_are_skipped_with_the_reason(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    project_id = await make_project(api, code="010")
    await make_project(api, code="other")
    data = assert_ok(
        await api.post("/client/import", json={"project": "010", "clients": SKIPPING_CLIENTS})
    )
    assert data["created"] == len(SKIPPING_CLIENTS), data
    suppressions = [
        ("010", "Ms@EXAMPLE.COM", "Жалоба на спам"),  # the domain's case does not matter
        ("010", "8 916 000-00-04", None),
        ("010", "os@example.com", "Отписка"),
        ("010", "+7 916 000 00 05", None),
        ("010", "79160000007", "Номер отключён"),
        ("other", "elsewhere@example.com", "Другой проект"),
        ("other", "+79160000008", None),
    ]
    for project, address, reason in suppressions:
        body = {"project": project, "address": address, "reason": reason}
        assert_ok(await api.post("/suppression/create", json=body))
    await make_mailing(api, project_id, channels=[1, 2])
    await start(engine)

    found = await messages(engine)
    assert found == {
        ("ok@example.com", 1): ("queued", None),
        ("+79160000001", 2): ("queued", None),
        ("out@example.com", 1): ("skipped", OPTED_OUT),
        ("+79160000002", 2): ("skipped", OPTED_OUT),
        ("Ms@example.com", 1): ("skipped", f"{SUPPRESSED}: Жалоба на спам"),
        ("+79160000003", 2): ("queued", None),
        ("ps@example.com", 1): ("queued", None),
        ("+79160000004", 2): ("skipped", SUPPRESSED),
        # Opted out comes before suppressed; no contact before either.
        ("os@example.com", 1): ("skipped", OPTED_OUT),
        ("+79160000005", 2): ("skipped", OPTED_OUT),
        (await client_key(engine, "phone-only-out"), 1): ("skipped", "У клиента нет email"),
        ("+79160000006", 2): ("skipped", OPTED_OUT),
        (await client_key(engine, "phone-only-suppressed"), 1): (
            "skipped",
            "У клиента нет email",
        ),
        ("+79160000007", 2): ("skipped", f"{SUPPRESSED}: Номер отключён"),
        # Another project's suppressions do not apply here.
        ("elsewhere@example.com", 1): ("queued", None),
        ("+79160000008", 2): ("queued", None),
    }
    async with engine.connect() as connection:
        rows = await connection.execute(select(Message.status, Message.next_attempt_at))
        for status, next_attempt_at in rows:
            assert (next_attempt_at is None) == (status == "skipped")


async def client_key(engine: AsyncEngine, guid: str) -> str:
    """The key ``messages`` gives a message without an address."""
    async with engine.connect() as connection:
        client_id = await connection.scalar(select(Client.id).where(Client.guid == guid))
    return f"client {client_id}"


# -- the recipient's timezone ---------------------------------------------------------------------


async def test_each_message_keeps_the_recipients_timezone(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    project_id = await make_project(api, code="010")
    clients = [
        person("own", email="own@example.com", phone="+79160000001", timezone="Asia/Vladivostok"),
        person("phone", email="phone@example.com", phone="+79160000002"),
        person("none", email="none@example.com", phone="+79160000003", opted_out=True),
    ]
    assert_ok(await api.post("/client/import", json={"project": "010", "clients": clients}))
    async with engine.begin() as connection:
        # phone_timezone is another part's to fill; set here as that part would.
        await connection.execute(
            update(Client)
            .where(Client.guid.in_(["own", "phone"]))
            .values(phone_timezone="Asia/Yekaterinburg")
        )
    await make_mailing(api, project_id, channels=[1, 2], timezone="Europe/Kaliningrad")
    await start(engine)
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(Client.guid, Message.channel, Message.timezone).join(
                Client, Client.id == Message.client_id
            )
        )
        zones = {(guid, channel): zone for guid, channel, zone in rows}
    assert zones == {
        ("own", 1): "Asia/Vladivostok",
        ("own", 2): "Asia/Vladivostok",
        ("phone", 1): "Asia/Yekaterinburg",
        ("phone", 2): "Asia/Yekaterinburg",
        ("none", 1): "Europe/Kaliningrad",  # skipped messages carry it too
        ("none", 2): "Europe/Kaliningrad",
    }


# -- idempotence and volume ------------------------------------------------------------------------


async def materialize(
    engine: AsyncEngine, run_id: int, mailing_id: int, audience: Any = None
) -> None:
    async with create_sessionmaker(engine)() as session, session.begin():
        mailing = await session.get(Mailing, mailing_id)
        assert mailing is not None
        await repository.materialize(
            session,
            run_id=run_id,
            mailing_id=mailing_id,
            project_id=mailing.project_id,
            channels=mailing.channels,
            audience=audience,
            mailing_timezone=mailing.timezone,
            now=utcnow(),
        )


async def test_only_skipped_messages_get_a_stored_creation_event_in_message_order(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """A message made ``queued`` has no stored creation event (its history reads it from the
    row); each ``skipped`` one has one: old status none, its status and reason, the client's
    guid, event ids in message order. (Materialising twice is not guarded against any more:
    ``start`` makes a run once, see ``test_starting_twice_makes_nothing_twice``.)"""
    project_id = await make_project(api, code="010")
    assert_ok(
        await api.post("/client/import", json={"project": "010", "clients": SKIPPING_CLIENTS})
    )
    body = {"project": "010", "address": "ms@example.com", "reason": "Жалоба"}
    assert_ok(await api.post("/suppression/create", json=body))
    await make_mailing(api, project_id, channels=[1, 2])
    [run_id] = await start(engine)
    async with engine.connect() as connection:
        made = (
            await connection.execute(
                select(Message.id, Message.client_id, Message.status, Message.reason)
                .where(Message.run_id == run_id)
                .order_by(Message.id)
            )
        ).all()
        logged = (
            await connection.execute(
                select(
                    MessageEvent.message_id,
                    MessageEvent.client_id,
                    MessageEvent.status,
                    MessageEvent.reason,
                    MessageEvent.old_status,
                    MessageEvent.client_guid,
                    Client.guid,
                )
                .join(Client, Client.id == MessageEvent.client_id)
                .where(MessageEvent.run_id == run_id)
                .order_by(MessageEvent.id)
            )
        ).all()
    assert len(made) == 2 * len(SKIPPING_CLIENTS)
    assert {row.status for row in made} == {"queued", "skipped"}
    skipped = [tuple(row) for row in made if row.status == "skipped"]
    assert [tuple(row[:4]) for row in logged] == skipped
    assert all(row.old_status is None and row.client_guid == row.guid for row in logged)


async def test_event_ids_stay_unique_and_increasing_across_runs_and_outcomes(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """A run's skipped messages' events, a claim's outcomes (a temporary failure, which is a
    ``queued`` event again, and a send) and the next run's skipped events: ids unique and in
    the order written — what the live stream's cursor relies on. (A claim itself writes no
    event; neither does a message made queued.)"""
    project_id = await make_project(api, code="010")
    assert_ok(
        await api.post("/client/import", json={"project": "010", "clients": SKIPPING_CLIENTS})
    )
    await make_mailing(api, project_id, channels=[1, 2])
    [first] = await start(engine)
    async with create_sessionmaker(engine)() as session, session.begin():
        now = utcnow()
        claimed = await queue.claim(
            session, channel=1, limit=2, now=now, lease_until=now + timedelta(minutes=5)
        )
        assert len(claimed) == 2
        await queue.record(
            session,
            sent=[queue.SentResult(claimed[0].id, None, "250 Ok", 1)],
            retries=[queue.RetryResult(claimed[1].id, "451 Later", now + timedelta(minutes=1))],
            failed=[],
            now=now,
        )
    await make_mailing(api, project_id, channels=[2, 1])
    [second] = await start(engine)
    async with engine.connect() as connection:
        logged = (
            await connection.execute(
                select(
                    MessageEvent.id,
                    MessageEvent.run_id,
                    MessageEvent.old_status,
                    MessageEvent.status,
                ).order_by(MessageEvent.id)
            )
        ).all()
        skipped = await connection.scalar(
            select(func.count()).select_from(Message).where(Message.status == "skipped")
        )
    ids = [row.id for row in logged]
    assert len(set(ids)) == len(ids) == skipped + len(claimed)
    # In id order: the first run's skipped creations, the outcomes, the second run's.
    kinds = [(row.run_id, row.old_status, row.status) for row in logged]
    first_created = [kind for kind in kinds if kind == (first, None, "skipped")]
    outcomes = [kind for kind in kinds if kind[:2] == (first, "sending")]
    second_created = [kind for kind in kinds if kind == (second, None, "skipped")]
    assert kinds == first_created + outcomes + second_created
    assert sorted(outcomes) == [(first, "sending", "queued"), (first, "sending", "sent")]
    assert len(first_created) == len(second_created) == skipped // 2 > 0
    if engine.dialect.name == "postgresql":
        # The events' sequence was not moved by hand: the next id drawn follows the last one.
        async with engine.connect() as connection:
            following = await connection.scalar(text("SELECT nextval('message_event_id_seq')"))
        assert following == ids[-1] + 1


@POSTGRESQL_ONLY
async def test_a_run_takes_the_events_lock_only_for_its_skipped_messages_events(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """While another transaction holds the events lock (a worker writing outcomes), a run's
    messages are all made; only the statement of its skipped messages' events waits for it."""
    project_id = await make_project(api, code="010")
    assert_ok(
        await api.post("/client/import", json={"project": "010", "clients": SKIPPING_CLIENTS})
    )
    mailing_id = await make_mailing(api, project_id, channels=[1, 2])
    async with engine.connect() as holder:
        await holder.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": queue.EVENTS_LOCK})
        with counting_statements(engine) as statements:
            started = asyncio.create_task(start(engine))
            waiting = "SELECT pg_advisory_xact_lock"

            async def waits_for_the_lock() -> bool:
                return any(sql.startswith(waiting) for sql in statements)

            await until(waits_for_the_lock)
            await asyncio.sleep(0.2)
            assert not started.done(), "the run waits for the events lock"
            made = [sql for sql in statements if sql.startswith("INSERT INTO message (")]
            assert len(made) == 2, "both channels' messages were made before it"
            first_wait = next(i for i, sql in enumerate(statements) if sql.startswith(waiting))
            assert not any("message_event" in sql for sql in statements[:first_wait])
            await holder.rollback()
            [run_id] = await started
    async with engine.connect() as connection:
        logged = await connection.scalar(
            select(func.count()).select_from(MessageEvent).where(MessageEvent.run_id == run_id)
        )
        mine = await connection.scalar(
            select(func.count()).select_from(Message).where(Message.mailing_id == mailing_id)
        )
    assert mine == 2 * len(SKIPPING_CLIENTS)
    assert logged
    assert logged < mine


@contextmanager
def counting_statements(engine: AsyncEngine) -> Iterator[list[str]]:
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(args[2])

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count)


BULK = 100_000


# audience → which of the BULK clients (numbered i) it selects.
BULK_AUDIENCES: list[tuple[dict[str, Any], Callable[[int], bool]]] = [
    ({"tags_any": ["even", "nobody"]}, lambda i: i % 2 == 0),
    ({"tags_all": ["third", "even"]}, lambda i: i % 6 == 0),
]


async def test_a_hundred_thousand_clients_with_a_tags_filter_in_one_statement_per_channel(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """Set-wise whatever the audience's size: one INSERT … SELECT per channel, no rows
    through Python. Every tenth client opted out, every hundredth email suppressed."""
    project_id = await make_project(api, code="010")
    now = utcnow()
    rows = [
        {
            "project_id": project_id,
            "guid": f"g{i}",
            "first_name": "Имя",
            "last_name": "Фамилия",
            "middle_name": "",
            "email": f"u{i}@example.com",
            "phone": f"+7916{i:07d}",
            "tags": ["all"] + (["even"] if i % 2 == 0 else []) + (["third"] if i % 3 == 0 else []),
            "attributes": {"n": i},
            "opted_out": i % 10 == 0,
            "created_at": now,
            "updated_at": now,
        }
        for i in range(BULK)
    ]
    suppressed = [
        {"project_id": project_id, "address": f"u{i}@example.com", "created_at": now}
        for i in range(6, BULK, 100)
    ]
    async with engine.begin() as connection:
        await connection.execute(insert(Client), rows)
        await connection.execute(insert(Suppression), suppressed)
    for audience, chosen in BULK_AUDIENCES:
        mailing_id = await make_mailing(api, project_id, channels=[1, 2])
        async with create_sessionmaker(engine)() as session, session.begin():
            mailing = await session.get(Mailing, mailing_id)
            assert mailing is not None
            run_id = await repository.create_run(
                session, mailing_id=mailing_id, scheduled_at=mailing.event_at, now=utcnow()
            )
        assert run_id is not None
        with counting_statements(engine) as statements:
            await materialize(engine, run_id, mailing_id, audience)
        inserts = [sql for sql in statements if "INSERT INTO message (" in sql]
        assert len(inserts) == 2, statements
        async with engine.connect() as connection:
            counts = dict(
                (
                    await connection.execute(
                        select(Message.status, func.count())
                        .where(Message.mailing_id == mailing_id)
                        .group_by(Message.status)
                    )
                ).all()
            )
        expected = [i for i in range(BULK) if chosen(i)]
        opted_out = [i for i in expected if i % 10 == 0]
        email_suppressed = [i for i in expected if i % 100 == 6]
        skipped = 2 * len(opted_out) + len(email_suppressed)
        assert counts == {"queued": 2 * len(expected) - skipped, "skipped": skipped}, audience
