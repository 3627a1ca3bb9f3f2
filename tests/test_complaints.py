"""Spam complaints end to end on both databases: mail sent through a real worker to a real SMTP
server; feedback-loop reports (ARF, RFC 5965), built as a mailbox provider builds them, come
back over SMTP to the bounce listener's ``fbl@`` address and through ``POST /webhook/bounce``
(as ARF or as JSON ``type: complaint``). A complaint opts the address out of the project's
email: suppressed, consent denied, an ``unsubscribed`` event; the message keeps its status."""

from __future__ import annotations

import asyncio
from email import policy
from email.message import EmailMessage
from typing import Any

import aiosmtplib
import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from conftest import FAST_RETRY, StartServer, StartWorker
from helpers import assert_error, assert_ok
from rassylka.bounces import arf
from rassylka.bounces.listener import BounceListener
from rassylka.channels.email_message import MessageIds
from rassylka.channels.smtp import SmtpChannel, SmtpConfig
from rassylka.clients.models import Client
from rassylka.db import create_sessionmaker
from rassylka.engine.dispatcher import DispatchConfig
from rassylka.engine.worker import Worker, run_until_stopped
from rassylka.messages.models import MessageEvent
from smtp_peer import SmtpPeer
from test_bounces import BOUNCE_SETTINGS, DOMAIN, SECRET, VERP, mail_to, statuses_all
from test_dispatcher import all_final, arrange, client, statuses, until

MESSAGE_IDS = MessageIds.keyed(SECRET)


def make_arf(
    original: EmailMessage,
    *,
    mail_from: str | None,
    feedback_type: str = "abuse",
    headers_only: bool = True,
    return_path: bool = False,
) -> bytes:
    """A feedback report as Yahoo's and Mail.ru's loops write one (RFC 5965 §2): a human part,
    message/feedback-report, and the original (its headers, or whole)."""
    wire = original.as_string(policy=policy.SMTP)
    if return_path and mail_from:
        wire = f"Return-Path: <{mail_from}>\r\n" + wire
    head = wire.split("\r\n\r\n", 1)[0] + "\r\n"
    original_part = (
        f"Content-Type: text/rfc822-headers\r\n\r\n{head}"
        if headers_only
        else f"Content-Type: message/rfc822\r\n\r\n{wire}"
    )
    fields = f"Feedback-Type: {feedback_type}\r\nUser-Agent: SomeGenerator/1.0\r\nVersion: 1\r\n"
    if mail_from and not return_path:
        fields += f"Original-Mail-From: <{mail_from}>\r\n"
    fields += f"Original-Rcpt-To: <{original['To']}>\r\nReported-Domain: example.ru\r\n"
    text = f"""From: <feedback@mail.example.ru>
To: <fbl@{DOMAIN}>
Subject: FW: {original["Subject"]}
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report;
\tboundary="part1_13d.2e68ed54_boundary"

--part1_13d.2e68ed54_boundary
Content-Type: text/plain; charset="US-ASCII"

This is an email abuse report for an email message received from IP
192.0.2.1 on Thu, 26 Nov 2026 14:00:00 +0300.

--part1_13d.2e68ed54_boundary
Content-Type: message/feedback-report

{fields}
--part1_13d.2e68ed54_boundary
{original_part}
--part1_13d.2e68ed54_boundary--
"""
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode()


async def sent_mail(
    api: httpx.AsyncClient, engine: AsyncEngine, smtp: SmtpPeer, addresses: list[str]
) -> tuple[dict[str, dict[str, Any]], dict[str, EmailMessage]]:
    """A mailing to ``addresses`` sent with VERP and Message-IDs keyed like the server's."""
    await arrange(api, [client(n, address) for n, address in enumerate(addresses)])
    channel = SmtpChannel(
        SmtpConfig(host="127.0.0.1", port=smtp.port, verp=VERP, message_ids=MESSAGE_IDS)
    )
    config = DispatchConfig(
        poll_interval=0.05, retry=FAST_RETRY, error_rate_window=1000, secret_key=SECRET
    )
    worker = Worker(engine, {1: channel}, config)
    task = asyncio.create_task(run_until_stopped(worker, grace=10))

    async def done() -> bool:
        return len(await statuses_all(engine)) >= len(addresses) and await all_final(engine)

    try:
        await until(done)
    finally:
        worker.stop()
        await task
    return await statuses(engine), {str(mail["To"]): mail for mail in smtp.received}


async def opted_out(engine: AsyncEngine, email: str) -> tuple[bool, str, str | None]:
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                select(Client.email_opted_out, Client.email_consent, Client.email_consent_source)
                .where(Client.email == email)
                .limit(1)
            )
        ).one()
    return row[0], row[1], row[2]


async def notes(engine: AsyncEngine) -> list[tuple[int, str | None]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(MessageEvent.message_id, MessageEvent.reason)
            .where(MessageEvent.status == "unsubscribed")
            .order_by(MessageEvent.id)
        )
        return [(row[0], row[1]) for row in rows]


@pytest.fixture
async def listener(engine: AsyncEngine) -> Any:
    listener = BounceListener(create_sessionmaker(engine), VERP, port=0, message_ids=MESSAGE_IDS)
    await listener.start()
    yield listener
    await listener.stop()


async def test_a_complaint_to_the_feedback_address_opts_the_address_out(
    api: httpx.AsyncClient, engine: AsyncEngine, smtp: SmtpPeer, listener: BounceListener
) -> None:
    rows, mails = await sent_mail(
        api, engine, smtp, ["anna@example.ru", "boris@example.ru", "vera@example.ru"]
    )
    anna, boris = rows["anna@example.ru"], rows["boris@example.ru"]
    # By the VERP envelope sender the report quotes.
    report = make_arf(mails["anna@example.ru"], mail_from=VERP.address(anna["id"]))
    assert await mail_to(listener.port, f"FBL@{DOMAIN}", report) == "250 2.0.0 OK"
    # By the original's Message-ID only (a loop that strips the envelope sender), whole.
    report = make_arf(mails["boris@example.ru"], mail_from=None, headers_only=False)
    assert await mail_to(listener.port, f"fbl@{DOMAIN}", report) == "250 2.0.0 OK"
    assert listener.handler.counts["complaint"] == 2

    out, consent, source = await opted_out(engine, "anna@example.ru")
    assert out
    assert consent == "denied"
    assert source == "жалоба на спам (abuse, SomeGenerator/1.0)"
    assert (await opted_out(engine, "boris@example.ru"))[0]
    assert not (await opted_out(engine, "vera@example.ru"))[0]
    assert [note[0] for note in await notes(engine)] == [anna["id"], boris["id"]]
    suppressed = assert_ok(await api.get("/suppression/list"), 200)["items"]
    assert {(s["address"], s["reason"]) for s in suppressed} == {
        ("anna@example.ru", "жалоба на спам (abuse, SomeGenerator/1.0)"),
        ("boris@example.ru", "жалоба на спам (abuse, SomeGenerator/1.0)"),
    }
    # The messages keep their status: they were delivered.
    assert {row["status"] for row in (await statuses(engine)).values()} == {"sent"}

    # The same report again changes nothing; not-spam, a report naming nothing of ours and
    # other local parts of the domain are not complaints.
    report = make_arf(mails["anna@example.ru"], mail_from=VERP.address(anna["id"]))
    assert await mail_to(listener.port, f"fbl@{DOMAIN}", report) == "250 2.0.0 OK"
    not_spam = make_arf(
        mails["vera@example.ru"], mail_from=VERP.address(anna["id"]), feedback_type="not-spam"
    )
    foreign = make_arf(mails["vera@example.ru"], mail_from="bounce@other.example")
    foreign = foreign.replace(str(mails["vera@example.ru"]["Message-ID"]).encode(), b"<1.x@y>")
    for content in (not_spam, foreign):
        assert await mail_to(listener.port, f"fbl@{DOMAIN}", content) == "250 2.0.0 OK"
    assert listener.handler.counts["ignored"] == 2
    assert len(await notes(engine)) == 2
    assert not (await opted_out(engine, "vera@example.ru"))[0]
    with pytest.raises(aiosmtplib.SMTPRecipientRefused):
        await mail_to(listener.port, f"abuse@{DOMAIN}", report)


async def test_a_complaint_over_http_as_json_or_arf(
    api: httpx.AsyncClient, engine: AsyncEngine, smtp: SmtpPeer, start_server: StartServer
) -> None:
    rows, mails = await sent_mail(api, engine, smtp, ["anna@example.ru", "boris@example.ru"])
    anna, boris = rows["anna@example.ru"], rows["boris@example.ru"]
    server = await start_server(**BOUNCE_SETTINGS)
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as hooks:
        body = {"message_id": anna["id"], "type": "complaint", "diagnostic": "FBL Mail.ru"}
        data = assert_ok(await hooks.post("/webhook/bounce", json=body), 200)
        assert data == {
            "message_id": anna["id"],
            "status": "sent",
            "changed": True,
            "suppressed": "anna@example.ru",
        }
        assert (await opted_out(engine, "anna@example.ru"))[2] == "жалоба на спам: FBL Mail.ru"
        data = assert_ok(await hooks.post("/webhook/bounce", json=body), 200)
        assert data["changed"] is False
        # ARF found by the original's Return-Path, posted as a bare multipart/report body.
        raw = make_arf(
            mails["boris@example.ru"], mail_from=VERP.address(boris["id"]), return_path=True
        )
        _, _, body_bytes = raw.partition(b"\r\n\r\n")
        content_type = "multipart/report; report-type=feedback-report; "
        content_type += 'boundary="part1_13d.2e68ed54_boundary"'
        data = assert_ok(
            await hooks.post(
                "/webhook/bounce", content=body_bytes, headers={"content-type": content_type}
            ),
            200,
        )
        assert (data["message_id"], data["changed"]) == (boris["id"], True)
        # A complaint has no SMTP status; one naming nothing of ours is a 404.
        details = assert_error(
            await hooks.post(
                "/webhook/bounce",
                json={"message_id": anna["id"], "type": "complaint", "status": "5.7.1"},
            ),
            400,
            "Ошибка валидации",
        )
        assert "жалобы" in details[0]["message"]
        foreign = make_arf(mails["boris@example.ru"], mail_from="x@other.example")
        foreign = foreign.replace(str(mails["boris@example.ru"]["Message-ID"]).encode(), b"<1@y>")
        assert_error(
            await hooks.post(
                "/webhook/bounce", content=foreign, headers={"content-type": "message/rfc822"}
            ),
            404,
            "Страница не найдена",
        )
    assert [note[0] for note in await notes(engine)] == [anna["id"], boris["id"]]


def test_the_parser_reads_a_report_and_never_raises_on_junk() -> None:
    original = EmailMessage()
    original["From"] = "a@b.example"
    original["To"] = "c@d.example"
    original["Subject"] = "Привет"
    original["Message-ID"] = "<42.0123456789abcdef0123@b.example>"
    original.set_content("x")
    complaint = arf.parse(make_arf(original, mail_from="bounce+42-abc@b.example"))
    assert complaint is not None
    assert complaint.feedback_type == "abuse"
    assert complaint.envelope_senders == ("bounce+42-abc@b.example",)
    assert complaint.message_ids == ("<42.0123456789abcdef0123@b.example>",)
    assert arf.parse(make_arf(original, mail_from=None, feedback_type="not-spam")) is None
    for junk in (b"", b"\x00\xff", b"Content-Type: multipart/report\r\n\r\n--\r\n\x80"):
        assert arf.parse(junk) is None
    ids = MessageIds(b"k" * 32)
    made = ids.of(42, "shop.example.ru")
    assert ids.message_id_of(made) == 42
    assert ids.message_id_of(made.upper().replace("SHOP", "shop")) == 42
    assert MessageIds(b"other-key" * 4).message_id_of(made) is None
    assert ids.message_id_of("<42.00000000000000000000@shop.example.ru>") is None


async def test_without_a_secret_key_a_complaint_is_found_by_its_message_id(
    api: httpx.AsyncClient, engine: AsyncEngine, smtp: SmtpPeer, start_worker: StartWorker
) -> None:
    """No bounce domain, no key: Message-IDs are tagged with the stored installation key, by
    which ``POST /webhook/bounce`` finds the message of an ARF report."""
    await arrange(api, [client(1, "anna@example.ru")])
    await start_worker()
    await until(lambda: all_final(engine))
    anna = (await statuses(engine))["anna@example.ru"]
    [mail] = smtp.received
    report = make_arf(mail, mail_from=None)
    response = await api.post(
        "/webhook/bounce", content=report, headers={"content-type": "message/rfc822"}
    )
    data = assert_ok(response, 200)
    assert (data["message_id"], data["suppressed"]) == (anna["id"], "anna@example.ru")
    assert (await opted_out(engine, "anna@example.ru"))[0]
