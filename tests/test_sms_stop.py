"""SMS senders per project and STOP replies, end to end: a worker opened from the settings
(``Worker.open``) sends through the real SMSC (``tests/peers/smsc.js``), which then sends
mobile-originated texts back; on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from conftest import StartServer
from helpers import assert_error, assert_ok, make_template
from rassylka.channels.base import ChannelKind, OutboundMessage
from rassylka.channels.smpp import InboundSms
from rassylka.channels.sms_text import decode_payload
from rassylka.clients.models import Client
from rassylka.config import Settings
from rassylka.db import create_sessionmaker
from rassylka.engine.inbound import (
    InboundTexts,
    StopWords,
    phone_of,
    projects_written_to,
    sender_key,
)
from rassylka.engine.scheduler import Scheduler
from rassylka.engine.worker import Worker, run_until_stopped
from rassylka.messages.models import Message, MessageEvent
from rassylka.messages.repository import OPTED_OUT_OF
from rassylka.projects.models import Project
from rassylka.suppressions.models import Suppression
from smsc_peer import PASSWORD, SYSTEM_ID, Smsc, start_smsc
from test_dispatcher import until

PHONE = "+79161234500"
# Each project's sender (None: the configured one), and the text its template sends.
PROJECTS: dict[str, tuple[str | None, str]] = {
    "shop": ("SHOP", "Магазин: скидки"),
    "bank": ("+79001112233", "Bank: your card"),
    "plain": (None, "Plain news"),
    "plain2": (None, "Plain two"),
}


@pytest.fixture
async def smsc() -> AsyncIterator[Smsc]:
    peer = await start_smsc()
    yield peer
    await peer.stop()


async def arrange(api: httpx.AsyncClient, codes: list[str] | None = None) -> dict[str, int]:
    """The projects, each with a client at ``PHONE`` and an active SMS mailing; code → id."""
    ids = {}
    for code in codes or list(PROJECTS):
        sender, text = PROJECTS[code]
        body = {"name": code, "code": code, "sms_sender": sender}
        project_id = int(assert_ok(await api.post("/project/create", json=body))["id"])
        await add_mailing(api, project_id, text)
        client = {"project": code, "guid": "c1", "first_name": "Иван", "last_name": "Петров"}
        client["phone"] = PHONE
        assert_ok(await api.post("/client/create", json=client))
        ids[code] = project_id
    return ids


async def add_mailing(api: httpx.AsyncClient, project_id: int, text: str) -> int:
    template_id = await make_template(api, project_id, sms_text=text)
    body = {
        "name": "m",
        "project_id": project_id,
        "template_id": template_id,
        "status": 1,
        "channels": [2],
        "event": "2020-08-02",
    }
    return int(assert_ok(await api.post("/mailing/create", json=body))["id"])


def settings_for(smsc: Smsc, **options: Any) -> Settings:
    return Settings(
        **{
            "smpp_host": "127.0.0.1",
            "smpp_port": smsc.port,
            "smpp_system_id": SYSTEM_ID,
            "smpp_password": PASSWORD,
            "smpp_source_addr": "Rassylka",
            "dispatch_poll_interval": 0.05,
            **options,
        }
    )


async def sms_rows(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(Message.id, Message.status, Message.reason, Project.code)
            .join(Client, Client.id == Message.client_id)
            .join(Project, Project.id == Client.project_id)
            .order_by(Message.id)
        )
        return [dict(row) for row in rows.mappings()]


async def none_open(engine: AsyncEngine) -> bool:
    rows = await sms_rows(engine)
    return bool(rows) and all(row["status"] not in ("queued", "sending") for row in rows)


async def opted_out(engine: AsyncEngine) -> dict[str, tuple[bool, str, str | None]]:
    """project code → (sms_opted_out, sms_consent, sms_consent_source) of its client."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(
                Project.code,
                Client.sms_opted_out,
                Client.sms_consent,
                Client.sms_consent_source,
            ).join(Project, Project.id == Client.project_id)
        )
        return {row[0]: (row[1], row[2], row[3]) for row in rows}


async def suppressed(engine: AsyncEngine) -> set[tuple[str, str, str | None]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(Project.code, Suppression.address, Suppression.reason).join(
                Project, Project.id == Suppression.project_id
            )
        )
        return {(row[0], row[1], row[2]) for row in rows}


async def unsubscribed(engine: AsyncEngine) -> list[tuple[str, str | None]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(Project.code, MessageEvent.reason)
            .join(Message, Message.id == MessageEvent.message_id)
            .join(Client, Client.id == Message.client_id)
            .join(Project, Project.id == Client.project_id)
            .where(MessageEvent.status == "unsubscribed")
            .order_by(MessageEvent.id)
        )
        return [(row[0], row[1]) for row in rows]


async def running_worker(
    engine: AsyncEngine, settings: Settings
) -> tuple[Worker, asyncio.Task[None], Callable[[], asyncio.Future[Any]]]:
    worker = Worker.open(engine, settings)
    task = asyncio.create_task(run_until_stopped(worker))

    async def stop() -> None:
        worker.stop()
        await task

    return worker, task, lambda: asyncio.ensure_future(stop())


async def test_each_project_sends_as_its_sender_and_a_stop_reply_opts_out_that_project(
    api: httpx.AsyncClient, engine: AsyncEngine, smsc: Smsc
) -> None:
    await arrange(api)
    _, _, stop = await running_worker(engine, settings_for(smsc))
    try:
        await until(lambda: none_open(engine))
        # The per-project sender reached the SMSC as source_addr, with its form's TON/NPI.
        seen = {
            decode_payload(
                bytes.fromhex(submit["short_message"]), data_coding=submit["data_coding"]
            ): (submit["source_addr"], submit["source_addr_ton"], submit["source_addr_npi"])
            for submit in smsc.of("submit_sm")
        }
        assert seen == {
            "Магазин: скидки": ("SHOP", 5, 0),
            "Bank: your card": ("79001112233", 1, 1),
            "Plain news": ("Rassylka", 5, 0),
            "Plain two": ("Rassylka", 5, 0),
        }

        # «СТОП» in UCS-2 to the shop's sender: that project only.
        status = await smsc.send_mobile_originated(
            source="79161234500", destination="SHOP", text="СТОП", coding="ucs2"
        )
        assert status == 0
        # A text that is no stop word: acknowledged, nothing changes.
        for text, coding in (("STOP 123", "gsm7"), ("Привет, спасибо", "ucs2")):
            status = await smsc.send_mobile_originated(
                source="79161234500", destination="79001112233", text=text, coding=coding
            )
            assert status == 0
    finally:
        await stop()

    source = "SMS «СТОП»"
    assert await opted_out(engine) == {
        "shop": (True, "denied", source),
        "bank": (False, "unknown", None),
        "plain": (False, "unknown", None),
        "plain2": (False, "unknown", None),
    }
    assert await suppressed(engine) == {("shop", PHONE, source)}
    assert await unsubscribed(engine) == [("shop", source)]

    # The shop's next mailing skips the SMS with the reason; the bank's still sends.
    await add_mailing(api, (await project_ids(engine))["shop"], "Магазин: снова")
    await add_mailing(api, (await project_ids(engine))["bank"], "Bank: again")
    await Scheduler(create_sessionmaker(engine)).tick()
    rows = await sms_rows(engine)
    newest = {row["code"]: row for row in rows[-2:]}
    assert newest["shop"]["status"] == "skipped"
    assert newest["shop"]["reason"] == OPTED_OUT_OF[2]
    assert newest["bank"]["status"] == "queued"


async def project_ids(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as connection:
        rows = await connection.execute(select(Project.code, Project.id))
        return {row[0]: row[1] for row in rows}


async def test_a_stop_reply_skips_what_is_queued_and_finds_projects_by_destination(
    api: httpx.AsyncClient, engine: AsyncEngine, smsc: Smsc
) -> None:
    await arrange(api)
    # Nothing sends (the SMS wait queued, the dispatcher is not started): only the SMSC's
    # texts come in, on a connection this channel opened.
    await Scheduler(create_sessionmaker(engine)).tick()
    settings = settings_for(smsc, sms_stop_words="STOP, Хватит")
    worker = Worker.open(engine, settings)
    channel = worker.channels[2]
    try:
        await channel.send([OutboundMessage(id=0, kind=ChannelKind.SMS, to=PHONE, text="x")])
        # GSM-7, to the bank's number written without "+": the bank only.
        assert (
            await smsc.send_mobile_originated(
                source="79161234500", destination="79001112233", text=" stop! "
            )
            == 0
        )
        # To a sender no project has as its own: every project without a sender of its own.
        assert (
            await smsc.send_mobile_originated(
                source="9161234500",
                source_ton=0,  # a national number: read in the default region
                destination="Rassylka",
                text="ХВАТИТ",
                coding="ucs2",
            )
            == 0
        )
        # «СТОП» is not a stop word in these settings.
        assert (
            await smsc.send_mobile_originated(
                source="79161234500", destination="SHOP", text="СТОП", coding="ucs2"
            )
            == 0
        )
    finally:
        await channel.close()

    states = {row["code"]: (row["status"], row["reason"]) for row in await sms_rows(engine)}
    assert states["shop"] == ("queued", None)
    for code, word in (("bank", "STOP"), ("plain", "Хватит"), ("plain2", "Хватит")):
        status, reason = states[code]
        assert status == "skipped"
        assert f"SMS «{word}»" in (reason or "")
    assert await suppressed(engine) == {
        ("bank", PHONE, "SMS «STOP»"),
        ("plain", PHONE, "SMS «Хватит»"),
        ("plain2", PHONE, "SMS «Хватит»"),
    }
    assert sorted(await unsubscribed(engine)) == [
        ("bank", "SMS «STOP»"),
        ("plain", "SMS «Хватит»"),
        ("plain2", "SMS «Хватит»"),
    ]
    assert {code for code, (out, _, _) in (await opted_out(engine)).items() if out} == {
        "bank",
        "plain",
        "plain2",
    }


async def test_a_repeated_stop_changes_nothing_more_and_a_failure_is_retried(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await arrange(api, ["shop"])
    inbound = InboundTexts(
        create_sessionmaker(engine), stop_words=StopWords.parse("STOP,СТОП"), region="RU"
    )
    stop = InboundSms(source="79161234500", source_ton=1, destination="shop", text="Стоп")
    await inbound.receive(stop)
    await inbound.receive(stop)
    assert await unsubscribed(engine) == []  # no message was ever sent to note it on
    assert await suppressed(engine) == {("shop", PHONE, "SMS «СТОП»")}
    assert (await opted_out(engine))["shop"][0]

    # A database that cannot be reached: the error reaches the SMPP session, which answers
    # ESME_RX_T_APPN (tests/channels/test_smpp_compliance.py), so the SMSC sends it again.
    unreachable = _unreachable(engine)
    broken = InboundTexts(
        create_sessionmaker(unreachable), stop_words=StopWords.parse("СТОП"), region="RU"
    )
    try:
        with pytest.raises((OSError, DBAPIError)):
            await broken.receive(stop)
    finally:
        await unreachable.dispose()


def _unreachable(engine: AsyncEngine) -> AsyncEngine:
    if engine.dialect.name == "postgresql":
        return create_async_engine("postgresql+asyncpg://postgres@127.0.0.1:1/none")
    return create_async_engine("sqlite+aiosqlite:////nonexistent/directory/rassylka.db")


# --------------------------------------------------------------------------------------------
# The HTTP provider's inbound callback


async def test_an_http_providers_stop_reply_opts_out_through_the_callback(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    ids = await arrange(api, ["shop", "bank", "plain"])

    quiet = await api.post(
        "/webhook/sms/inbound", json={"from": "+79161234500", "to": "SHOP", "text": "Спасибо"}
    )
    assert assert_ok(quiet, 200) == {"stop": False, "projects": [], "changed": []}
    assert await suppressed(engine) == set()

    body = {"from": "79161234500", "to": "shop", "text": "Стоп."}
    first = assert_ok(await api.post("/webhook/sms/inbound", json=body), 200)
    assert first == {"stop": True, "projects": [ids["shop"]], "changed": [ids["shop"]]}
    again = assert_ok(await api.post("/webhook/sms/inbound", json=body), 200)
    assert again == {"stop": True, "projects": [ids["shop"]], "changed": []}
    # Without "to": the projects that send as the configured sender.
    form = {"from": "89161234500", "text": "STOP"}
    plain = assert_ok(await api.post("/webhook/sms/inbound", data=form), 200)
    assert plain["projects"] == [ids["plain"]]
    assert await suppressed(engine) == {
        ("shop", PHONE, "SMS «СТОП»"),
        ("plain", PHONE, "SMS «STOP»"),
    }
    assert not (await opted_out(engine))["bank"][0]


async def test_the_inbound_callback_checks_its_token_and_fields(
    start_server: StartServer,
) -> None:
    server = await start_server(
        sms_http_callback_token="t0ken",
        sms_http_inbound_from_field="msisdn",
        sms_http_inbound_to_field="shortcode",
        sms_http_inbound_text_field="message",
        api_keys=["crm-key"],
    )
    async with httpx.AsyncClient(base_url=server.url) as client_:
        body = {"msisdn": "+79161234500", "shortcode": "7900", "message": "stop"}
        assert_error(await client_.post("/webhook/sms/inbound", json=body), 403, "Доступ запрещен")
        taken = await client_.post("/webhook/sms/inbound?token=t0ken", json=body)
        assert assert_ok(taken, 200) == {"stop": True, "projects": [], "changed": []}
        missing = await client_.post(
            "/webhook/sms/inbound?token=t0ken", json={"msisdn": "+79161234500"}
        )
        assert_error(missing, 400, "Ошибка валидации")
        assert missing.json()["error"]["details"] == [
            {"field": "message", "message": "Обязательное поле"}
        ]
        for wrong in ([body], "stop", {"msisdn": ["+7"], "message": "stop"}):
            answer = await client_.post("/webhook/sms/inbound?token=t0ken", json=wrong)
            assert_error(answer, 400, "Ошибка валидации")
        broken = await client_.post(
            "/webhook/sms/inbound?token=t0ken",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
        assert_error(broken, 400, "Ошибка валидации")


# --------------------------------------------------------------------------------------------
# The rules, without a database


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ("STOP", "STOP"),
        (" Stop ", "STOP"),
        ("стоп!", "СТОП"),
        ("С-т-о-п.", "СТОП"),
        ("«Отписка»", "ОТПИСКА"),
        ("ОТПИСКА\n", "ОТПИСКА"),
        ("STOP 123", None),
        ("не стоп", None),
        ("stopp", None),
        ("", None),
        ("!!!", None),
    ],
)
def test_stop_words_match_the_whole_text_without_case_spaces_or_punctuation(
    text: str, word: str | None
) -> None:
    assert StopWords.parse("STOP,СТОП,ОТПИСКА").match(text) == word


def test_stop_words_setting_ignores_blanks_and_keeps_the_first_spelling() -> None:
    words = StopWords.parse(" Stop , ,STOP,Хватит ")
    assert words.words == {"stop": "Stop", "хватит": "Хватит"}
    assert StopWords.parse("").match("stop") is None


def test_senders_compare_by_digits_or_by_name() -> None:
    assert sender_key("+79001112233") == sender_key("79001112233") == "79001112233"
    assert sender_key("SHOP") == sender_key("shop")
    assert sender_key("7900") == "7900"
    senders = [(1, "SHOP"), (2, "+79001112233"), (3, None), (4, ""), (5, "7900")]
    assert projects_written_to(senders, "shop") == [1]
    assert projects_written_to(senders, "79001112233") == [2]
    assert projects_written_to(senders, "7900") == [5]
    assert projects_written_to(senders, "Rassylka") == [3, 4]
    assert projects_written_to([(1, "SHOP")], "OTHER") == []


@pytest.mark.parametrize(
    ("source", "ton", "phone"),
    [
        ("79161234500", 1, "+79161234500"),
        ("89161234500", 0, "+79161234500"),
        ("9161234500", 2, "+79161234500"),
        ("+79161234500", 0, "+79161234500"),
        ("12", 0, "12"),  # no valid number: as given
    ],
)
def test_the_sending_number_becomes_e164(source: str, ton: int, phone: str) -> None:
    inbound = InboundSms(source=source, source_ton=ton, destination="x", text="")
    assert phone_of(inbound, "RU") == phone
