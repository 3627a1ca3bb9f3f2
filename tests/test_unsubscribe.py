"""Unsubscribing (issue 9, point 3): every email carries List-Unsubscribe and RFC 8058's
List-Unsubscribe-Post, signed by DKIM; its link shows a page (GET changes nothing) and opts out
on POST; the mailto opts out through the bounce listener; the event reaches the live stream
and the CRM's webhook; a project's own From and Reply-To are used."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import dkim
import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from conftest import LiveServer, StartServer, StartWorker
from helpers import assert_ok, make_project
from rassylka.bounces.listener import BounceListener
from rassylka.bounces.verp import Verp
from rassylka.channels.base import ChannelKind, OutboundMessage, PermanentChannelError
from rassylka.channels.email_message import MessageIds, compose
from rassylka.clients.models import Client
from rassylka.config import Settings
from rassylka.db import create_engine, create_sessionmaker
from rassylka.messages.models import Message, MessageEvent
from rassylka.suppressions.models import Suppression
from rassylka.unsubscribe.tokens import Unsubscribe, stored_key_of
from smtp_peer import SmtpPeer
from test_dashboard_data import post_form
from test_dispatcher import all_final, arrange, client, statuses, until
from test_dkim import SELECTOR, dkim_fields, dns_stub, key_pair  # noqa: F401
from test_stream import open_stream
from test_webhooks import Receiver, make_webhook, receiver  # noqa: F401

PROJECT_FROM = "Магазин <news@shop.example.ru>"
PROJECT_REPLY_TO = "help@shop.example.ru"
BOUNCE_DOMAIN = "bounces.example.com"
SECRET = "test-secret-key-0123456789"
STRICT = policy.default.clone(raise_on_defect=True)
HTML = {"accept": "text/html,application/xhtml+xml"}
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


def parsed(raw: bytes) -> EmailMessage:
    message = message_from_bytes(raw, policy=STRICT)
    assert isinstance(message, EmailMessage)
    return message


def list_unsubscribe(message: EmailMessage) -> list[str]:
    """The URIs of the List-Unsubscribe header, in order (RFC 2369: ``<uri>, <uri>``)."""
    value = " ".join(str(message["List-Unsubscribe"]).split())
    uris = [part.strip() for part in value.split(",")]
    assert all(uri.startswith("<") and uri.endswith(">") for uri in uris), value
    return [uri[1:-1] for uri in uris]


def weekday_not_today() -> int:
    """An ISO weekday that is not today anywhere on Earth (today ± 1 day is not it)."""
    return (datetime.now(UTC).isoweekday() + 2) % 7 + 1


async def unsubscribed_events(engine: AsyncEngine) -> list[MessageEvent]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(MessageEvent).where(MessageEvent.status == "unsubscribed")
        )
        return list(rows.all())  # type: ignore[arg-type]


async def the_client(engine: AsyncEngine, guid: str) -> Any:
    async with engine.connect() as connection:
        return (await connection.execute(select(Client).where(Client.guid == guid))).one()


async def suppressed(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        return list(await connection.scalars(select(Suppression.address)))


async def messages_of(engine: AsyncEngine, mailing_id: int) -> dict[str, tuple[str, str | None]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(Message.address, Message.status, Message.reason).where(
                Message.mailing_id == mailing_id
            )
        )
        return {str(row.address): (row.status, row.reason) for row in rows}


async def make_mailing(api: httpx.AsyncClient, like: int, **fields: Any) -> int:
    first = assert_ok(await api.get(f"/mailing/{like}"), 200)
    body = {
        "name": "Ещё",
        "project_id": first["project_id"],
        "template_id": first["template_id"],
        "status": 1,
        "channels": [1],
        "event": "2020-08-02",
        **fields,
    }
    return int(assert_ok(await api.post("/mailing/create", json=body))["id"])


async def test_the_link_in_every_email_shows_a_page_and_one_click_opts_out(
    api: httpx.AsyncClient,
    live_server: LiveServer,
    engine: AsyncEngine,
    smtp: SmtpPeer,
    start_worker: StartWorker,
    receiver: Receiver,  # noqa: F811
    key_pair: tuple[Path, bytes],  # noqa: F811
) -> None:
    key, record = key_pair
    first = await arrange(
        api,
        [client(1, "anna@example.ru"), client(2, "boris@example.ru")],
        email_subject="Новости",
        email_text="Здравствуйте!\nОтписаться: {{ unsubscribe_url }}",
        email_html='<p>Здравствуйте!</p><p><a href="{{ unsubscribe_url }}">Отписаться</a></p>',
    )
    project = assert_ok(await api.get("/project/list"), 200)["items"][0]
    senders = {"email_from": PROJECT_FROM, "email_reply_to": PROJECT_REPLY_TO}
    assert_ok(await api.put(f"/project/{project['id']}/update", json=dkim_fields(key) | senders))
    await receiver.start()
    hook = await make_webhook(api, receiver, events=["unsubscribed"])
    assert hook["events"] == ["unsubscribed"]
    worker = await start_worker(public_url=live_server.url)
    await until(lambda: all_final(engine))
    assert {row["status"] for row in (await statuses(engine)).values()} == {"sent"}
    assert len(smtp.raw) == 2

    # The headers: present, parsed strictly, signed.
    links: dict[str, str] = {}
    for raw in smtp.raw:
        message = parsed(raw)
        uris = list_unsubscribe(message)
        assert len(uris) == 1, "no bounce domain: no mailto nobody would read"
        link = uris[0]
        assert link.startswith(f"{live_server.url}/unsubscribe/")
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert message["From"].addresses[0].addr_spec == "news@shop.example.ru"
        assert message["From"].addresses[0].display_name == "Магазин"
        assert message["Reply-To"].addresses[0].addr_spec == PROJECT_REPLY_TO
        assert message["Message-ID"].endswith("@shop.example.ru>"), "its domain follows From"
        text = message.get_body(("plain",))
        assert text is not None
        assert link in text.get_content(), "{{ unsubscribe_url }}"
        signature = dkim.DKIM(raw)
        assert signature.verify(dnsfunc=dns_stub(record)) is True
        signed = set(signature.include_headers)
        assert {b"list-unsubscribe", b"list-unsubscribe-post", b"from", b"reply-to"} <= signed
        forged = raw.replace(b"/unsubscribe/", b"/unsubscribe/9", 1)
        assert not dkim.verify(forged, dnsfunc=dns_stub(record)), "a relay can't redirect it"
        links[str(message["To"])] = link
    assert links["anna@example.ru"] != links["boris@example.ru"]
    link = links["anna@example.ru"]

    # A second mailing whose messages wait (its window is shut today): queued when she leaves.
    waiting = await make_mailing(
        api, first, send_window={"start": "09:00", "end": "21:00", "days": [weekday_not_today()]}
    )
    worker.wake_scheduler()  # the API is another app here: on SQLite nothing else tells it

    async def materialized() -> bool:
        return len(await messages_of(engine, waiting)) == 2

    await until(materialized)
    assert {s for s, _ in (await messages_of(engine, waiting)).values()} == {"queued"}

    # GET: a page, and nothing changes (mail scanners open links).
    async with httpx.AsyncClient(timeout=30) as browser:
        page = await browser.get(link, headers=HTML)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["cache-control"] == "no-store"
        assert "Отписаться" in page.text
        assert project["name"] in page.text
        assert "an***@example.ru" in page.text
        assert "anna@example.ru" not in page.text
        assert "электронная почта" in page.text
        assert f'action="{link.removeprefix(live_server.url)}"' in page.text
        assert not (await the_client(engine, "c1")).email_opted_out
        assert await unsubscribed_events(engine) == []
        assert await suppressed(engine) == []

        # Forged or altered tokens: 404, a page for a browser, the envelope otherwise.
        message_id, _, tag = link.rpartition("/")[2].partition("-")
        other = int(message_id) + 1
        for bad in (
            f"{message_id}-{tag[:-1]}{'a' if tag[-1] != 'a' else 'b'}",
            f"{other}-{tag}",
            f"{message_id}-{tag[:-2]}",
            "0-aaaaaaaaaaaaaaaa",
            "не-токен",
        ):
            for method in ("GET", "POST"):
                answer = await browser.request(
                    method, f"{live_server.url}/unsubscribe/{bad}", headers=HTML, data=ONE_CLICK
                )
                assert answer.status_code == 404, (bad, method)
                assert "Ссылка недействительна" in answer.text
            plain = await browser.post(f"{live_server.url}/unsubscribe/{bad}", data=ONE_CLICK)
            assert plain.status_code == 404
            assert plain.json()["code"] == 404
        assert not (await the_client(engine, "c1")).email_opted_out

        # The live stream of the first mailing is open when she leaves.
        async with open_stream(api, f"/mailing/{first}/events") as stream:
            # One-click, as a mail provider sends it (RFC 8058 §3.2): cross-site, no cookies.
            done = await browser.post(link, data=ONE_CLICK)
            assert done.status_code == 200
            assert done.text == "Вы отписаны"
            message = await stream.next()
            assert message is not None
            assert message.event == "unsubscribed"
            assert message.data is not None
            event = json.loads(message.data)
            assert event["status"] == "unsubscribed"
            assert event["old_status"] == "sent", "the message's own status, unchanged"
            assert event["client_guid"] == "c1"
            assert event["channel"] == "email"

        # The opt-out: the client, the suppression list, the waiting message.
        anna = await the_client(engine, "c1")
        assert anna.email_opted_out
        assert not anna.sms_opted_out
        assert anna.email_consent == "denied"
        assert "один клик" in anna.email_consent_source
        assert not (await the_client(engine, "c2")).email_opted_out
        assert await suppressed(engine) == ["anna@example.ru"]
        after = await messages_of(engine, waiting)
        assert after["anna@example.ru"][0] == "skipped"
        assert "один клик" in (after["anna@example.ru"][1] or "")
        assert after["boris@example.ru"] == ("queued", None)
        assert (await messages_of(engine, first))["anna@example.ru"][0] == "sent", "unchanged"

        # Idempotent: the same answer, no second event; the page's form gets a page.
        again = await browser.post(link, data=ONE_CLICK)
        assert (again.status_code, again.text) == (200, "Вы отписаны")
        form = await browser.post(link, data={"confirm": "1"}, headers=HTML)
        assert form.status_code == 200
        assert "Вы отписаны" in form.text
        assert "an***@example.ru" in form.text
        assert len(await unsubscribed_events(engine)) == 1

    # The CRM's webhook gets it, typed apart from status changes.
    async def delivered() -> bool:
        return bool(receiver.received)

    await until(delivered)
    body = receiver.received[0].body
    assert body["type"] == "message.unsubscribed"
    assert body["data"]["status"] == "unsubscribed"
    assert body["data"]["client_guid"] == "c1"
    assert len(receiver.received) == 1, "the filter let through only the opt-out"

    # The next mailing skips her, with the reason.
    later = await make_mailing(api, first)
    worker.wake_scheduler()

    async def finished() -> bool:
        found = await messages_of(engine, later)
        return len(found) == 2 and all(s not in ("queued", "sending") for s, _ in found.values())

    await until(finished)
    found = await messages_of(engine, later)
    assert found["anna@example.ru"][0] == "skipped"
    assert found["anna@example.ru"][1]
    assert found["boris@example.ru"][0] == "sent"


async def test_the_mailto_opts_out_through_the_bounce_listener(
    api: httpx.AsyncClient, engine: AsyncEngine, smtp: SmtpPeer, start_worker: StartWorker
) -> None:
    await arrange(api, [client(1, "anna@example.ru"), client(2, "boris@example.ru")])
    await start_worker(
        public_url="https://mail.example.ru", secret_key=SECRET, bounce_domain=BOUNCE_DOMAIN
    )
    await until(lambda: all_final(engine))
    mailtos: dict[str, str] = {}
    for raw in smtp.raw:
        message = parsed(raw)
        https, mailto = list_unsubscribe(message)
        assert https.startswith("https://mail.example.ru/unsubscribe/")
        assert mailto.startswith(f"mailto:unsubscribe+{https.rpartition('/')[2]}@{BOUNCE_DOMAIN}")
        assert mailto.endswith("?subject=unsubscribe")
        mailtos[str(message["To"])] = mailto.removeprefix("mailto:").partition("?")[0]
    settings = Settings(bounce_domain=BOUNCE_DOMAIN, secret_key=SECRET)
    listener = BounceListener(
        create_sessionmaker(engine),
        Verp(BOUNCE_DOMAIN, SECRET.encode()),
        port=0,
        unsubscribe=Unsubscribe.of(settings, b""),
    )
    await listener.start()
    try:
        address = mailtos["anna@example.ru"]
        forged = address.replace("unsubscribe+", "unsubscribe+1", 1)
        client_ = aiosmtplib.SMTP(hostname="127.0.0.1", port=listener.port, timeout=30)
        await client_.connect()
        try:
            await client_.mail("anna@example.ru")
            with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
                await client_.rcpt(forged)
            assert refused.value.code == 550
        finally:
            await client_.quit()
        mail = b"From: anna@example.ru\r\nTo: " + address.encode()
        mail += b"\r\nSubject: unsubscribe\r\n\r\nunsubscribe\r\n"
        for _ in range(2):  # a second mail changes nothing
            errors, reply = await aiosmtplib.send(
                mail,
                sender="anna@example.ru",
                recipients=[address.upper()],  # an MTA may change the case: still ours
                hostname="127.0.0.1",
                port=listener.port,
                timeout=30,
            )
            assert not errors
            assert reply.startswith("2"), reply
    finally:
        await listener.stop()
    anna = await the_client(engine, "c1")
    assert anna.email_opted_out
    assert anna.email_consent_source == "отписка письмом (mailto)"
    assert not (await the_client(engine, "c2")).email_opted_out
    assert await suppressed(engine) == ["anna@example.ru"]
    assert len(await unsubscribed_events(engine)) == 1
    assert listener.handler.counts["unsubscribed"] == 2
    assert listener.handler.counts["rejected"] == 1


async def test_the_key_is_made_once_and_shared_by_every_process(database_url: str) -> None:
    engines = [create_engine(database_url), create_engine(database_url)]
    try:
        keys = await asyncio.gather(
            *(stored_key_of(create_sessionmaker(engine)) for engine in engines)
        )
    finally:
        for engine in engines:
            await engine.dispose()
    assert keys[0] == keys[1]
    assert len(keys[0]) == 32
    again = create_engine(database_url)  # "after a restart"
    try:
        assert await stored_key_of(create_sessionmaker(again)) == keys[0]
    finally:
        await again.dispose()
    first = Unsubscribe(keys[0], "https://mail.example.ru")
    token = first.token(42)
    assert first.message_id(token) == 42
    assert first.message_id(token.upper()) == 42
    assert Unsubscribe(b"another installation", "https://x").message_id(token) is None
    assert len(first.url(10**9)) <= 63, "a billion messages on, short enough for an SMS"


def test_tokens_are_signed_checked_and_the_mailto_offered_only_with_a_bounce_domain() -> None:
    signer = Unsubscribe(b"k" * 32, "https://mail.example.ru", BOUNCE_DOMAIN)
    token = signer.token(7)
    assert signer.url(7) == f"https://mail.example.ru/unsubscribe/{token}"
    assert signer.mailto(7) == f"mailto:unsubscribe+{token}@{BOUNCE_DOMAIN}?subject=unsubscribe"
    assert signer.message_id_of(f"unsubscribe+{token}@{BOUNCE_DOMAIN}") == 7
    assert signer.message_id_of(f"unsubscribe+{token}@elsewhere.example") is None
    assert signer.message_id_of(f"bounce+{token}@{BOUNCE_DOMAIN}") is None
    for bad in ("", "7", f"8-{token[2:]}", f"{token}x", f"-{token}", f"07-{token[2:]}"):
        assert signer.message_id(bad) is None, bad
    without = Unsubscribe(b"k" * 32, "https://mail.example.ru")
    assert without.uris(7) == (without.url(7),)
    assert without.message_id_of(f"unsubscribe+{token}@{BOUNCE_DOMAIN}") is None


def test_compose_writes_the_headers_and_refuses_what_would_break_them() -> None:
    message = OutboundMessage(
        id=5,
        kind=ChannelKind.EMAIL,
        to="anna@example.ru",
        subject="S",
        text="t",
        unsubscribe=("https://mail.example.ru/unsubscribe/5-" + "a" * 16, "mailto:u@b.example"),
    )
    head = compose(message, sender="news@shop.example.ru").as_bytes()
    parsed_head = parsed(head)
    assert list_unsubscribe(parsed_head) == list(message.unsubscribe)
    assert parsed_head["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    only_mailto = OutboundMessage(**{**message.__dict__, "unsubscribe": ("mailto:u@b.example",)})
    assert b"List-Unsubscribe-Post" not in compose(only_mailto, sender="a@b.example").as_bytes()
    broken = OutboundMessage(**{**message.__dict__, "unsubscribe": ("https://x/a>, <evil",)})
    with pytest.raises(PermanentChannelError):
        compose(broken, sender="a@b.example")


def test_the_public_url_is_checked() -> None:
    assert Settings(public_url="https://mail.example.ru/").public_base_url == (
        "https://mail.example.ru"
    )
    assert Settings().public_base_url == "http://127.0.0.1:8000"
    for bad in ("mail.example.ru", "ftp://x", "https://a b", "https://x/?q=1"):
        with pytest.raises(ValueError, match="RASSYLKA_PUBLIC_URL"):
            Settings(public_url=bad)


async def test_the_template_preview_shows_a_sample_link(
    api: httpx.AsyncClient, live_server: LiveServer
) -> None:
    project = await make_project(api)
    fields = {
        "email_subject": "S",
        "email_text": "Отписаться: {{ unsubscribe_url }}",
        "sms_text": "STOP: {{ unsubscribe_url }}",
    }
    answer = await post_form(api, "/ui/template/preview", {"project_id": str(project), **fields})
    data = assert_ok(answer, 200)
    sample = (
        f"{live_server.app.state.settings.public_base_url}/unsubscribe/1234567-abcdefghijklmnop"
    )
    assert data["text"] == f"Отписаться: {sample}"
    assert data["sms"] == f"STOP: {sample}"
    assert data["problems"] == {}
    assert (await api.get("/unsubscribe/1234567-abcdefghijklmnop")).status_code == 404


async def test_an_sms_link_opts_out_of_sms_only(
    api: httpx.AsyncClient, live_server: LiveServer, engine: AsyncEngine, tmp_path: Path
) -> None:
    from rassylka.channels.outbox import OutboxChannel
    from rassylka.engine.dispatcher import DispatchConfig
    from rassylka.engine.worker import Worker, run_until_stopped

    await arrange(
        api,
        [client(1, "anna@example.ru", phone="+79161234567")],
        channels=[2],
        sms_text="Скидки! Отписка: {{ unsubscribe_url }}",
    )
    sms = OutboxChannel(ChannelKind.SMS, tmp_path)
    config = DispatchConfig(poll_interval=0.05, public_url=live_server.url)
    worker = Worker(engine, {2: sms}, config)
    task = asyncio.create_task(run_until_stopped(worker, grace=10))
    try:
        await until(lambda: all_final(engine))
    finally:
        worker.stop()
        await task
    lines = (tmp_path / "sms.jsonl").read_text().splitlines()
    text = json.loads(lines[0])["text"]
    link = text.rpartition(" ")[2]
    assert link.startswith(f"{live_server.url}/unsubscribe/")
    answer = await api.post(link.removeprefix(live_server.url), data=ONE_CLICK)
    assert (answer.status_code, answer.text) == (200, "Вы отписаны")
    anna = await the_client(engine, "c1")
    assert anna.sms_opted_out
    assert not anna.email_opted_out
    async with engine.connect() as connection:
        count = await connection.scalar(select(func.count()).select_from(Suppression))
    assert count == 1


def test_serve_without_a_public_url_links_to_its_own_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rassylka import cli
    from rassylka.config import environment_settings

    monkeypatch.delenv("RASSYLKA_PUBLIC_URL", raising=False)
    try:
        cli._default_public_url("0.0.0.0", 9001)
        assert environment_settings().public_base_url == "http://127.0.0.1:9001"
        monkeypatch.setenv("RASSYLKA_PUBLIC_URL", "https://mail.example.ru")
        cli._default_public_url("0.0.0.0", 9001)  # a given one is kept
        environment_settings.cache_clear()
        assert environment_settings().public_base_url == "https://mail.example.ru"
    finally:
        environment_settings.cache_clear()


async def test_a_broken_or_oversized_body_is_no_one_click(
    start_server: StartServer, engine: AsyncEngine, start_worker: StartWorker
) -> None:
    server = await start_server(max_body_bytes=4096)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as api:
        await arrange(api, [client(1, "anna@example.ru")])
        await start_worker()
        await until(lambda: all_final(engine))
        async with engine.connect() as connection:
            message_id = await connection.scalar(select(func.min(Message.id)))
        assert message_id is not None
        key = await stored_key_of(create_sessionmaker(engine))
        path = Unsubscribe(key, server.url).url(message_id).removeprefix(server.url)
        big = await api.post(path, data={"List-Unsubscribe": "One-Click", "x": "y" * 10_000})
        assert big.status_code == 413
        assert big.json()["code"] == 413
        assert not (await the_client(engine, "c1")).email_opted_out
        broken = await api.post(
            path,
            content=b"--b\r\nContent-Disposition: form-data\r\n\r\nOne-Click\r\n",
            headers={"content-type": "multipart/form-data; boundary=b", **HTML},
        )
        assert broken.status_code == 200, "the page's answer: a person's browser, say"
        assert "Вы отписаны" in broken.text
        assert (await the_client(engine, "c1")).email_opted_out


async def test_without_a_secret_key_message_ids_come_from_the_stored_key(
    api: httpx.AsyncClient, engine: AsyncEngine, smtp: SmtpPeer, start_worker: StartWorker
) -> None:
    """The same Message-ID in every worker and after a restart: a retry is the same mail."""
    await arrange(api, [client(1, "anna@example.ru")])
    await start_worker()
    await until(lambda: all_final(engine))
    key = await stored_key_of(create_sessionmaker(engine))
    anna = (await statuses(engine))["anna@example.ru"]
    [raw] = smtp.raw
    mail = parsed(raw)
    domain = str(mail["From"]).rpartition("@")[2].rstrip(">")
    assert mail["Message-ID"] == MessageIds(key).of(anna["id"], domain)
    assert MessageIds(key).message_id_of(str(mail["Message-ID"])) == anna["id"]
