"""The HTTP SMS provider's status callbacks: messages sent through a real provider (an HTTP
server on 127.0.0.1) settle when the provider posts their fate to ``/webhook/sms/status``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from conftest import FAST_RETRY, StartServer
from helpers import assert_error, assert_ok
from http_sms_peer import Provider
from rassylka.channels.http_sms import HttpSmsChannel, HttpSmsConfig
from rassylka.engine.dispatcher import DispatchConfig
from rassylka.engine.worker import Worker, run_until_stopped
from rassylka.messages.models import Receipt
from test_dispatcher import all_final, arrange, client, statuses, until


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    server = Provider()
    await server.start()
    yield server
    await server.stop()


async def send_through(engine: AsyncEngine, provider: Provider) -> None:
    channel = HttpSmsChannel(
        HttpSmsConfig(url=provider.url, success_field="status", id_field="result.id")
    )
    worker = Worker(engine, {2: channel}, DispatchConfig(poll_interval=0.05, retry=FAST_RETRY))
    task = asyncio.create_task(run_until_stopped(worker))
    try:
        await until(lambda: all_final(engine))
    finally:
        worker.stop()
        await task


async def test_provider_callbacks_settle_sent_messages(
    api: httpx.AsyncClient, engine: AsyncEngine, provider: Provider
) -> None:
    await arrange(
        api,
        [client(n, None, phone=f"+7916123450{n}") for n in range(1, 5)],
        channels=[2],
        sms_text="Заказ готов",
    )
    await send_through(engine, provider)
    found = await statuses(engine)
    ids = {phone: row["peer_message_id"] for phone, row in found.items()}
    assert all(ids.values())

    one = await api.post(
        "/webhook/sms/status", json={"id": ids["+79161234501"], "status": "delivered"}
    )
    assert assert_ok(one, 200) == {"received": 1, "matched": 1, "settled": 1}
    batch = await api.post(
        "/webhook/sms/status",
        json=[
            {"id": ids["+79161234502"], "status": "UNDELIVERED", "error": 34},
            {"id": ids["+79161234503"], "status": "enroute"},
        ],
    )
    assert assert_ok(batch, 200) == {"received": 2, "matched": 2, "settled": 1}
    form = await api.post(
        "/webhook/sms/status", data={"id": ids["+79161234504"], "status": "expired"}
    )
    assert assert_ok(form, 200)["settled"] == 1
    # Told again, or too late: nothing changes and the provider still gets 200.
    again = await api.post(
        "/webhook/sms/status", json={"id": ids["+79161234501"], "status": "failed"}
    )
    assert assert_ok(again, 200)["settled"] == 0

    found = await statuses(engine)
    assert found["+79161234501"]["status"] == "delivered"
    assert found["+79161234502"]["status"] == "undelivered"
    assert found["+79161234502"]["reason"] == "UNDELIV err:34"
    assert found["+79161234503"]["status"] == "sent"
    assert found["+79161234504"]["status"] == "expired"


async def test_a_callback_for_an_unknown_id_is_kept_not_refused(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    answer = await api.post("/webhook/sms/status", json={"id": "never-sent", "status": "delivered"})
    assert assert_ok(answer, 200) == {"received": 1, "matched": 0, "settled": 0}
    async with engine.connect() as connection:
        assert await connection.scalar(select(func.count()).select_from(Receipt)) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"status": "delivered"}, "id"),
        ({"id": "x"}, "status"),
        ({"id": "", "status": "delivered"}, "id"),
        ([], "body"),
        ([{"id": "x", "status": "delivered"}, 5], "1.body"),
        ("delivered", "body"),
    ],
)
async def test_an_unreadable_callback_is_a_400_envelope(
    api: httpx.AsyncClient, body: object, field: str
) -> None:
    answer = await api.post("/webhook/sms/status", json=body)
    details = assert_error(answer, 400, "Ошибка валидации")
    assert [detail["field"] for detail in details] == [field]


async def test_malformed_json_is_a_400_envelope(api: httpx.AsyncClient) -> None:
    answer = await api.post(
        "/webhook/sms/status", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert_error(answer, 400, "Ошибка валидации")


async def test_provider_field_names_and_words_and_the_token_come_from_settings(
    start_server: StartServer,
) -> None:
    server = await start_server(
        sms_http_callback_token="t0ken",
        sms_http_status_id_field="msg.uid",
        sms_http_status_field="state",
        sms_http_status_map={"OK": "DELIVRD"},
        api_keys=["crm-key"],
    )
    async with httpx.AsyncClient(base_url=server.url) as client_:
        body = {"msg": {"uid": "p-1"}, "state": "ok"}
        refused = await client_.post("/webhook/sms/status", json=body)
        assert_error(refused, 403, "Доступ запрещен")
        wrong = await client_.post("/webhook/sms/status?token=nope", json=body)
        assert_error(wrong, 403, "Доступ запрещен")
        # The provider carries the callback token, not the CRM's API key.
        taken = await client_.post("/webhook/sms/status?token=t0ken", json=body)
        assert assert_ok(taken, 200)["received"] == 1
