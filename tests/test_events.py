"""Every status change of every message is an event, written with the change; a mailing's
messages are listed with their whole history."""

from __future__ import annotations

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from conftest import StartWorker
from helpers import assert_error, assert_ok
from rassylka.db import create_sessionmaker, utcnow
from rassylka.engine.scheduler import Scheduler
from rassylka.messages import queue
from rassylka.messages.models import Message, MessageEvent
from smtp_peer import SmtpPeer
from test_dispatcher import all_final, arrange, client, until


def path(history: list[dict[str, object]]) -> list[tuple[object, object]]:
    return [(event["old_status"], event["status"]) for event in history]


async def test_each_message_carries_its_whole_history(
    api: httpx.AsyncClient, engine: AsyncEngine, smtp: SmtpPeer, start_worker: StartWorker
) -> None:
    mailing_id = await arrange(
        api,
        [
            client(1, "ok@example.ru"),
            client(2, "later@example.ru"),
            client(3, None, phone="+79161234567"),
        ],
    )
    await start_worker()
    await until(lambda: all_final(engine))
    listed = assert_ok(await api.get(f"/mailing/{mailing_id}/messages"), 200)
    assert listed["total"] == 3
    by_address = {item["address"]: item for item in listed["items"]}
    ok = by_address["ok@example.ru"]
    # The claim (queued → sending) has no event of its own: the send's outcome says "sending".
    assert path(ok["history"]) == [(None, "queued"), ("sending", "sent")]
    assert ok["history"][-1]["peer_message_id"] == ok["peer_message_id"]
    # The creation as queued is not stored: read from the message, it has no event id.
    created = ok["history"][0]
    assert created["id"] is None
    assert (created["reason"], created["peer_message_id"]) == (None, None)
    assert created["created_at"] == ok["created_at"]
    assert isinstance(ok["history"][1]["id"], int)
    later = by_address["later@example.ru"]
    assert path(later["history"]) == [
        (None, "queued"),
        ("sending", "queued"),
        ("sending", "queued"),
        ("sending", "failed"),
    ]
    assert later["history"][-1]["reason"].startswith("Попытки исчерпаны (3)")
    skipped = by_address[None]
    assert path(skipped["history"]) == [(None, "skipped")]
    assert skipped["history"][0]["reason"] == "У клиента нет email"
    assert isinstance(skipped["history"][0]["id"], int), "a skip's creation is stored"
    async with engine.connect() as connection:
        events = (await connection.execute(select(MessageEvent).order_by(MessageEvent.id))).all()
    # Stored: the sends' outcomes (1 + 3) and the skip; not the creations as queued.
    assert len(events) == 1 + 3 + 1
    assert all(event.old_status is not None for event in events if event.status == "queued")
    assert {event.client_guid for event in events} == {"c1", "c2", "c3"}
    times = [event.created_at for event in events]
    assert times == sorted(times), "ids grow with time"


async def test_messages_are_filtered_by_status_and_channel(
    api: httpx.AsyncClient, engine: AsyncEngine, smtp: SmtpPeer, start_worker: StartWorker
) -> None:
    mailing_id = await arrange(
        api, [client(1, "ok@example.ru"), client(2, "never@example.ru")], channels=[1]
    )
    await start_worker()
    await until(lambda: all_final(engine))
    failed = assert_ok(await api.get(f"/mailing/{mailing_id}/messages?status=failed"), 200)
    assert [item["address"] for item in failed["items"]] == ["never@example.ru"]
    assert failed["items"][0]["reply"] == "550 5.1.1 No such user here"
    assert assert_ok(await api.get(f"/mailing/{mailing_id}/messages?channel=2"), 200)["total"] == 0
    assert (
        assert_ok(await api.get(f"/mailing/{mailing_id}/messages?channel=sms"), 200)["total"] == 0
    )
    by_name = assert_ok(await api.get(f"/mailing/{mailing_id}/messages?channel=email"), 200)
    assert by_name["total"] == 2
    for wrong in ("fax", "3", "email,sms"):
        details = assert_error(
            await api.get(f"/mailing/{mailing_id}/messages?channel={wrong}"),
            400,
            "Ошибка валидации",
        )
        assert [detail["field"] for detail in details] == ["channel"]
    assert_error(
        await api.get(f"/mailing/{mailing_id}/messages?status=lost"), 400, "Ошибка валидации"
    )
    assert_error(await api.get("/mailing/999999/messages"), 404, "Страница не найдена")


async def test_a_cancelled_mailings_messages_record_their_expiry(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    mailing_id = await arrange(api, [client(1, "a@example.ru")])
    await Scheduler(create_sessionmaker(engine)).tick()
    assert_ok(await api.post(f"/mailing/{mailing_id}/cancel"), 200)
    [item] = assert_ok(await api.get(f"/mailing/{mailing_id}/messages"), 200)["items"]
    assert path(item["history"]) == [(None, "queued"), ("queued", "expired")]
    assert item["history"][-1]["reason"] == "Рассылка отменена"


async def test_stats_and_retrying_what_failed(
    api: httpx.AsyncClient, engine: AsyncEngine, smtp: SmtpPeer, start_worker: StartWorker
) -> None:
    mailing_id = await arrange(
        api,
        [client(1, "ok1@example.ru"), client(2, "ok2@example.ru"), client(3, "never@example.ru")],
    )
    await start_worker()

    async def status_is(expected: int) -> bool:
        data = (await api.get(f"/mailing/{mailing_id}")).json()["data"]
        return bool(data["status"] == expected)

    await until(lambda: status_is(3))
    stats = assert_ok(await api.get(f"/mailing/{mailing_id}/stats"), 200)
    total = stats["total"]
    assert total["messages"] == 3
    assert total["by_status"] == {"sent": 2, "failed": 1}
    assert total["by_channel"] == {"email": {"sent": 2, "failed": 1}}
    assert total["accepted_rate"] == round(2 / 3, 4)
    assert total["delivery_rate"] is None, "no receipts yet"
    assert total["sms_parts"] == 0
    assert total["first_sent_at"] is not None
    assert total["last_sent_at"] >= total["first_sent_at"]
    [run] = stats["runs"]
    assert run["by_status"] == total["by_status"]
    assert stats["send_rate"] == round(2 / 60, 3)

    retried = assert_ok(await api.post(f"/mailing/{mailing_id}/retry-failed"), 200)
    assert retried["requeued"] == 1
    assert retried["runs"] == [run["run_id"]]
    await until(lambda: status_is(3))
    assert smtp.rcpt_attempts["never@example.ru"] == 2
    assert smtp.rcpt_attempts["ok1@example.ru"] == 1, "only what failed is sent again"
    listed = assert_ok(await api.get(f"/mailing/{mailing_id}/messages?status=failed"), 200)
    [never] = listed["items"]
    assert path(never["history"]) == [
        (None, "queued"),
        ("sending", "failed"),
        ("failed", "queued"),
        ("sending", "failed"),
    ]
    assert never["attempts"] == 1


async def test_retrying_a_draft_is_409_and_a_clients_messages_are_listed(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    mailing_id = await arrange(api, [client(1, "a@example.ru"), client(2, "b@example.ru")])
    await Scheduler(create_sessionmaker(engine)).tick()
    clients = assert_ok(await api.get("/client/list?project=010"), 200)["items"]
    first = next(item for item in clients if item["guid"] == "c1")
    mine = assert_ok(await api.get(f"/client/{first['id']}/messages"), 200)
    assert [item["address"] for item in mine["items"]] == ["a@example.ru"]
    assert path(mine["items"][0]["history"]) == [(None, "queued")]
    assert_error(await api.get("/client/999999/messages"), 404, "Страница не найдена")
    assert_ok(await api.post(f"/mailing/{mailing_id}/cancel"), 200)
    assert_error(
        await api.post(f"/mailing/{mailing_id}/retry-failed"),
        409,
        "Недопустимая смена статуса рассылки",
    )


async def test_deleting_a_mailing_or_a_project_deletes_their_events(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """Events carry no foreign keys (a check per event costs too much at a million messages):
    the deletes remove them explicitly, and nothing else's."""
    # The client without an email gets a skipped message, with its stored creation event, in
    # each mailing (a message made queued has none).
    first = await arrange(
        api,
        [
            client(1, "a@example.ru"),
            client(2, "b@example.ru"),
            client(3, None, phone="+79161234567"),
        ],
    )
    project_id = assert_ok(await api.get(f"/mailing/{first}"), 200)["project_id"]
    template = assert_ok(await api.get(f"/mailing/{first}"), 200)["template_id"]
    second = assert_ok(
        await api.post(
            "/mailing/create",
            json={
                "name": "Ещё",
                "project_id": project_id,
                "template_id": template,
                "status": 1,
                "channels": [1],
                "event": "2020-01-01",
            },
        )
    )["id"]
    await Scheduler(create_sessionmaker(engine)).tick()

    async def events_of(mailing_id: int) -> int:
        async with engine.connect() as connection:
            return int(
                await connection.scalar(
                    select(func.count()).where(MessageEvent.mailing_id == mailing_id)
                )
                or 0
            )

    assert await events_of(first) == 1
    assert await events_of(second) == 1
    assert_ok(await api.delete(f"/mailing/{first}"), 200)
    assert await events_of(first) == 0
    assert await events_of(second) == 1
    assert_ok(await api.delete(f"/project/{project_id}"), 200)
    assert await events_of(second) == 0


async def test_a_deleted_clients_messages_stay_in_the_history(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    mailing_id = await arrange(api, [client(1, "a@example.ru"), client(2, "b@example.ru")])
    await Scheduler(create_sessionmaker(engine)).tick()
    clients = assert_ok(await api.get("/client/list?project=010"), 200)["items"]
    gone = next(item["id"] for item in clients if item["guid"] == "c1")
    assert_ok(await api.delete(f"/client/{gone}"), 200)
    listed = assert_ok(await api.get(f"/mailing/{mailing_id}/messages"), 200)["items"]
    by_address = {item["address"]: item for item in listed}
    assert by_address["a@example.ru"]["client_id"] is None
    assert by_address["b@example.ru"]["client_id"] is not None
    assert len(by_address["a@example.ru"]["history"]) == 1


async def test_a_stored_creation_event_of_an_older_message_is_shown_once(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """Messages made by earlier versions have their ``None → queued`` stored: their history shows
    that one, with its id, not a second one read from the row."""
    mailing_id = await arrange(api, [client(1, "old@example.ru"), client(2, "new@example.ru")])
    await Scheduler(create_sessionmaker(engine)).tick()
    async with create_sessionmaker(engine)() as session, session.begin():
        old = await session.scalar(select(Message.id).where(Message.address == "old@example.ru"))
        assert old is not None
        # What materialising wrote for every message until then.
        await queue.log_events(session, ids=[old], old_status=None, now=utcnow())
    assert_ok(await api.post(f"/mailing/{mailing_id}/cancel"), 200)
    listed = assert_ok(await api.get(f"/mailing/{mailing_id}/messages"), 200)["items"]
    by_address = {item["address"]: item for item in listed}
    for address in ("old@example.ru", "new@example.ru"):
        history = by_address[address]["history"]
        assert path(history) == [(None, "queued"), ("queued", "expired")], address
        assert isinstance(history[1]["id"], int)
    assert isinstance(by_address["old@example.ru"]["history"][0]["id"], int)
    assert by_address["new@example.ru"]["history"][0]["id"] is None
