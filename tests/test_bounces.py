"""Email bounces end to end on both databases: a mailing goes through a real worker to a real
SMTP server with VERP envelope senders; RFC 3464 reports, built as an MTA builds them, come
back over SMTP to the bounce listener (in-process, and ``rassylka bounces`` as a process) and
through ``POST /webhook/bounce``; hard bounces settle as ``bounced`` and suppress the address,
soft ones leave a note. Also the parser, the signature and the settings on their own."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from conftest import FAST_RETRY, StartServer
from helpers import assert_error, assert_ok, missing_peer
from postfix_peer import PostfixPeer
from postfix_peer import available as postfix_available
from rassylka.app import create_app
from rassylka.bounces import dsn
from rassylka.bounces.listener import BounceListener
from rassylka.bounces.verp import Verp
from rassylka.channels.smtp import SmtpChannel, SmtpConfig
from rassylka.config import Settings
from rassylka.db import create_sessionmaker
from rassylka.engine.dispatcher import DispatchConfig
from rassylka.engine.worker import Worker, run_until_stopped
from rassylka.messages.models import Message, MessageEvent
from smtp_peer import SmtpPeer
from test_dispatcher import all_final, arrange, client, statuses, until

DOMAIN = "bounces.example.com"
SECRET = "test-secret-key-0123456789"
VERP = Verp(DOMAIN, SECRET.encode())
BOUNCE_SETTINGS: dict[str, Any] = {"bounce_domain": DOMAIN, "secret_key": SECRET}
RASSYLKA = Path(sys.executable).with_name("rassylka")


# -- what an MTA sends back --------------------------------------------------------------------


def make_dsn(
    original: EmailMessage,
    *,
    to: str,
    action: str = "failed",
    status: str = "5.1.1",
    diagnostic: str = "smtp; 550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown",
    envelope_id: str | None = None,
) -> bytes:
    """A delivery status notification as Postfix writes one: multipart/report with a
    human-readable part, message/delivery-status and the original's headers."""
    rcpt = str(original["To"])
    per_message = (
        "Reporting-MTA: dns; mx.example.ru\r\nArrival-Date: Fri, 27 Nov 2026 10:00:00 +0300\r\n"
    )
    if envelope_id:
        per_message = f"Original-Envelope-Id: {envelope_id}\r\n" + per_message
    # The original's header section as it went over the wire (RFC 2047 encoded).
    headers = original.as_string(policy=policy.SMTP).split("\r\n\r\n", 1)[0] + "\r\n"
    text = f"""From: MAILER-DAEMON@mx.example.ru (Mail Delivery System)
To: {to}
Subject: Undelivered Mail Returned to Sender
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="B0UND.1234/mx.example.ru"

This is a MIME-encapsulated message.

--B0UND.1234/mx.example.ru
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

--B0UND.1234/mx.example.ru
Content-Description: Delivery report
Content-Type: message/delivery-status

{per_message}
Final-Recipient: rfc822; {rcpt}
Original-Recipient: rfc822;{rcpt}
Action: {action}
Status: {status}
Remote-MTA: dns; mx2.example.ru
Diagnostic-Code: {diagnostic.format(rcpt=rcpt)}

--B0UND.1234/mx.example.ru
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

{headers}
--B0UND.1234/mx.example.ru--
"""
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode()


async def mail_to(port: int, recipient: str, content: bytes) -> str:
    """Deliver ``content`` to the listener from the null sender (``MAIL FROM:<>``), as
    bounces come; the reply to DATA."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=60)
    await client.connect()
    try:
        await client.mail("")
        await client.rcpt(recipient)
        response = await client.data(content)
    finally:
        await client.quit()
    return f"{response.code} {response.message}"


# -- arrangement -------------------------------------------------------------------------------


@pytest.fixture
async def listener(engine: AsyncEngine) -> AsyncIterator[BounceListener]:
    listener = BounceListener(create_sessionmaker(engine), VERP, port=0)
    await listener.start()
    yield listener
    await listener.stop()


async def send_with_verp(engine: AsyncEngine, port: int, *, messages: int) -> None:
    """Run a worker whose SMTP transport (to 127.0.0.1:``port``) uses VERP until
    ``messages`` messages exist and every one is final."""
    channel = SmtpChannel(SmtpConfig(host="127.0.0.1", port=port, verp=VERP))
    config = DispatchConfig(poll_interval=0.05, retry=FAST_RETRY, error_rate_window=1000)
    worker = Worker(engine, {1: channel}, config)
    task = asyncio.create_task(run_until_stopped(worker, grace=10))

    async def done() -> bool:
        return len(await statuses_all(engine)) >= messages and await all_final(engine)

    try:
        await until(done)
    finally:
        worker.stop()
        await task


async def statuses_all(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        return list(await connection.scalars(select(Message.status)))


async def sent_mail(
    api: httpx.AsyncClient, engine: AsyncEngine, smtp: SmtpPeer, addresses: list[str]
) -> tuple[int, dict[str, dict[str, Any]], dict[str, EmailMessage]]:
    """A mailing to ``addresses`` sent with VERP: its id, the message rows and the mails the
    SMTP server received, by address."""
    mailing_id = await arrange(api, [client(n, address) for n, address in enumerate(addresses)])
    await send_with_verp(engine, smtp.port, messages=len(addresses))
    rows = await statuses(engine)
    mails = {str(mail["To"]): mail for mail in smtp.received}
    return mailing_id, rows, mails


async def history(api: httpx.AsyncClient, mailing_id: int, address: str) -> list[dict[str, Any]]:
    listed = assert_ok(await api.get(f"/mailing/{mailing_id}/messages"), 200)
    found: list[dict[str, Any]] = next(
        item["history"] for item in listed["items"] if item["address"] == address
    )
    return found


async def event_count(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(select(func.count()).select_from(MessageEvent)) or 0)


# -- over SMTP ---------------------------------------------------------------------------------


async def test_a_hard_bounce_bounces_the_message_and_suppresses_the_address_a_soft_one_notes(
    api: httpx.AsyncClient, engine: AsyncEngine, smtp: SmtpPeer, listener: BounceListener
) -> None:
    mailing_id, rows, mails = await sent_mail(
        api, engine, smtp, ["anna@example.ru", "boris@example.ru"]
    )
    anna, boris = rows["anna@example.ru"], rows["boris@example.ru"]
    assert {anna["status"], boris["status"]} == {"sent"}
    # The envelope sender names each message; the From header stays the configured one.
    assert sorted(smtp.senders) == sorted([VERP.address(anna["id"]), VERP.address(boris["id"])])
    assert all(sender.startswith("bounce+") for sender in smtp.senders)
    assert str(mails["anna@example.ru"]["From"]) == "Rassylka <rassylka@localhost>"

    await mail_to(
        listener.port,
        VERP.address(anna["id"]),
        make_dsn(mails["anna@example.ru"], to=VERP.address(anna["id"])),
    )
    await mail_to(
        listener.port,
        VERP.address(boris["id"]),
        make_dsn(
            mails["boris@example.ru"],
            to=VERP.address(boris["id"]),
            action="delayed",
            status="4.2.2",
            diagnostic="smtp; 452 4.2.2 Mailbox full",
        ),
    )
    rows = await statuses(engine)
    assert rows["anna@example.ru"]["status"] == "bounced"
    assert rows["anna@example.ru"]["reason"] == (
        "5.1.1 550 5.1.1 <anna@example.ru>: Recipient address rejected: User unknown"
    )
    assert rows["boris@example.ru"]["status"] == "sent"
    assert rows["boris@example.ru"]["reason"] == "soft bounce 4.2.2 452 4.2.2 Mailbox full"
    assert listener.handler.counts == {"hard": 1, "soft": 1}

    anna_history = await history(api, mailing_id, "anna@example.ru")
    assert anna_history[-1]["old_status"] == "sent"
    assert anna_history[-1]["status"] == "bounced"
    assert anna_history[-1]["reason"].startswith("5.1.1 550")
    boris_history = await history(api, mailing_id, "boris@example.ru")
    assert (boris_history[-1]["old_status"], boris_history[-1]["status"]) == ("sent", "sent")
    assert boris_history[-1]["reason"].startswith("soft bounce 4.2.2")

    suppressed = assert_ok(await api.get("/suppression/list", params={"project": "010"}), 200)
    assert [item["address"] for item in suppressed["items"]] == ["anna@example.ru"]
    assert suppressed["items"][0]["reason"].startswith("bounced: 5.1.1 550 5.1.1")

    # The same report again (MTAs retry) changes nothing.
    before = await event_count(engine)
    await mail_to(
        listener.port,
        VERP.address(anna["id"]),
        make_dsn(mails["anna@example.ru"], to=VERP.address(anna["id"])),
    )
    assert await event_count(engine) == before
    assert (await statuses(engine))["anna@example.ru"]["status"] == "bounced"

    # A later mailing of the project skips the suppressed address and sends the other.
    mailing = assert_ok(await api.get(f"/mailing/{mailing_id}"), 200)
    body = {
        "name": "Снова",
        "project_id": mailing["project_id"],
        "template_id": mailing["template_id"],
        "status": 1,
        "channels": [1],
        "event": "2020-08-02",
    }
    second = int(assert_ok(await api.post("/mailing/create", json=body))["id"])
    smtp.received.clear()
    await send_with_verp(engine, smtp.port, messages=4)
    listed = assert_ok(await api.get(f"/mailing/{second}/messages"), 200)
    by_address = {item["address"]: item for item in listed["items"]}
    assert by_address["anna@example.ru"]["status"] == "skipped"
    assert "bounced: 5.1.1" in by_address["anna@example.ru"]["reason"]
    assert by_address["boris@example.ru"]["status"] == "sent"
    assert [str(mail["To"]) for mail in smtp.received] == ["boris@example.ru"]


async def test_forged_addresses_are_refused_and_what_is_no_report_is_ignored(
    api: httpx.AsyncClient, engine: AsyncEngine, smtp: SmtpPeer, listener: BounceListener
) -> None:
    _, rows, mails = await sent_mail(api, engine, smtp, ["anna@example.ru"])
    anna = rows["anna@example.ru"]
    report = make_dsn(mails["anna@example.ru"], to=VERP.address(anna["id"]))
    before = await event_count(engine)
    forged = [
        f"bounce+{anna['id']}-0123456789@{DOMAIN}",  # a signature not ours
        VERP.address(anna["id"]).replace(DOMAIN, "other.example.com"),  # another domain
        Verp(DOMAIN, b"another secret key!").address(anna["id"]),
        f"postmaster@{DOMAIN}",
    ]
    for address in forged:
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
            await mail_to(listener.port, address, report)
        assert refused.value.code == 550
    assert listener.handler.counts["rejected"] == len(forged)

    # To a valid address: an auto-reply, junk bytes and a report with nothing to say are
    # taken (so no one retries them) and ignored.
    auto_reply = (
        b"From: anna@example.ru\r\nTo: x\r\nSubject: Out of office\r\n"
        b"Auto-Submitted: auto-replied\r\n\r\nI am away until Monday.\r\n"
    )
    junk = b"\x00\xff\xfe garbage\r\n\r\n--\r\nContent-Type: multipart/report\r\n\r\n\x80"
    relayed = make_dsn(mails["anna@example.ru"], to="x", action="relayed", status="2.0.0")
    for content in (auto_reply, junk, relayed):
        reply = await mail_to(listener.port, VERP.address(anna["id"]), content)
        assert reply == "250 2.0.0 OK"
    assert listener.handler.counts["ignored"] == 3
    assert await event_count(engine) == before
    assert (await statuses(engine))["anna@example.ru"]["status"] == "sent"
    assert assert_ok(await api.get("/suppression/list"), 200)["total"] == 0

    # A valid token of a message that is gone: taken, counted, nothing else.
    gone = VERP.address(anna["id"] + 1000)
    await mail_to(listener.port, gone, make_dsn(mails["anna@example.ru"], to=gone))
    assert listener.handler.counts["unknown"] == 1
    assert await event_count(engine) == before


async def test_a_report_over_the_size_limit_is_refused(engine: AsyncEngine) -> None:
    listener = BounceListener(create_sessionmaker(engine), VERP, port=0, max_size=2048)
    await listener.start()
    try:
        big = b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 60
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await mail_to(listener.port, VERP.address(1), big)
        assert refused.value.code == 552
        # The listener still serves the next mail.
        assert await mail_to(listener.port, VERP.address(1), b"Subject: small\r\n\r\nhi") == (
            "250 2.0.0 OK"
        )
        assert listener.handler.counts == {"ignored": 1}
    finally:
        await listener.stop()


async def test_the_listener_runs_inside_serve_when_a_bounce_domain_is_set(
    database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    settings = Settings(
        database_url=database_url, outbox_dir=str(tmp_path), bounce_port=port, **BOUNCE_SETTINGS
    )
    app = create_app(settings, worker=True)
    async with app.router.lifespan_context(app):
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port)
        await smtp.connect()
        code, _ = await smtp.ehlo()
        assert code == 250
        code, _message = await smtp.mail("")
        assert code == 250
        with pytest.raises(aiosmtplib.SMTPRecipientRefused):
            await smtp.rcpt(f"nobody@{DOMAIN}")
        await smtp.quit()
    assert not await listening(port)


@pytest.fixture
def postfix(smtp: SmtpPeer) -> Iterator[PostfixPeer]:
    """A private Postfix relaying example.ru and the bounce domain to the ``smtp`` peer."""
    problem = postfix_available()
    if problem is not None:
        missing_peer(problem)
    # Not tmp_path: the postfix user must reach it, and pytest's folders are private.
    root = Path(tempfile.mkdtemp(prefix="rassylka-postfix-"))
    root.chmod(0o755)
    peer = PostfixPeer(root / "postfix", {"example.ru": smtp.port, DOMAIN: smtp.port})
    try:
        yield peer.start()
    finally:
        peer.stop()
        shutil.rmtree(root, ignore_errors=True)


async def test_a_bounce_written_by_postfix_is_understood(
    api: httpx.AsyncClient,
    engine: AsyncEngine,
    smtp: SmtpPeer,
    postfix: PostfixPeer,
    listener: BounceListener,
) -> None:
    """Rassylka → Postfix (accepts: ``sent``) → the final server refuses never@ with 550 →
    Postfix mails its own DSN to the VERP address → the listener takes it."""
    await arrange(api, [client(1, "never@example.ru"), client(2, "ok@example.ru")])
    await send_with_verp(engine, postfix.port, messages=2)
    rows = await statuses(engine)
    never = rows["never@example.ru"]
    assert never["status"] == rows["ok@example.ru"]["status"] == "sent"

    def bounced_back() -> list[EmailMessage]:
        return [mail for mail in smtp.received if str(mail["To"]).startswith("bounce+")]

    await until(lambda: asyncio.sleep(0, bool(bounced_back())), seconds=60)
    report = bounced_back()[0]
    assert str(report["To"]) == VERP.address(never["id"])
    assert report.get_content_type() == "multipart/report"
    parts = {part.get_content_type(): part for part in report.iter_parts()}
    # Postfix offered DSN, so the token went as ENVID and only headers came back (RET=HDRS).
    assert "text/rfc822-headers" in parts
    assert "message/delivery-status" in parts
    assert f"Original-Envelope-Id: {VERP.token(never['id'])}" in report.as_string()

    reply = await mail_to(listener.port, VERP.address(never["id"]), report.as_bytes())
    assert reply == "250 2.0.0 OK"
    rows = await statuses(engine)
    assert rows["never@example.ru"]["status"] == "bounced"
    assert rows["never@example.ru"]["reason"].startswith("5.1.1 ")
    assert "No such user here" in rows["never@example.ru"]["reason"]
    assert rows["ok@example.ru"]["status"] == "sent"
    suppressed = assert_ok(await api.get("/suppression/list"), 200)
    assert [item["address"] for item in suppressed["items"]] == ["never@example.ru"]


# -- over HTTP ---------------------------------------------------------------------------------


async def test_webhook_hard_soft_unknown_and_invalid(
    api: httpx.AsyncClient, engine: AsyncEngine, smtp: SmtpPeer, start_server: StartServer
) -> None:
    mailing_id, rows, mails = await sent_mail(
        api, engine, smtp, ["anna@example.ru", "boris@example.ru", "vera@example.ru"]
    )
    server = await start_server(**BOUNCE_SETTINGS)
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as hooks:
        anna, boris, vera = (rows[f"{name}@example.ru"] for name in ("anna", "boris", "vera"))
        data = assert_ok(
            await hooks.post(
                "/webhook/bounce",
                json={
                    "message_id": anna["id"],
                    "type": "hard",
                    "status": "5.1.1",
                    "diagnostic": "550 No such user",
                },
            ),
            200,
        )
        assert data == {
            "message_id": anna["id"],
            "status": "bounced",
            "changed": True,
            "suppressed": "anna@example.ru",
        }
        data = assert_ok(
            await hooks.post(
                "/webhook/bounce",
                json={"token": VERP.address(boris["id"]), "type": "soft", "status": "4.2.2"},
            ),
            200,
        )
        assert data == {
            "message_id": boris["id"],
            "status": "sent",
            "changed": True,
            "suppressed": None,
        }
        # By project and address; the raw report too, found by its ENVID.
        data = assert_ok(
            await hooks.post(
                "/webhook/bounce",
                json={"project": "010", "email": "Boris@Example.ru", "type": "hard"},
            ),
            200,
        )
        assert (data["message_id"], data["status"]) == (boris["id"], "bounced")
        raw = make_dsn(
            mails["vera@example.ru"], to="postmaster@relay", envelope_id=VERP.token(vera["id"])
        )
        data = assert_ok(
            await hooks.post(
                "/webhook/bounce", content=raw, headers={"content-type": "message/rfc822"}
            ),
            200,
        )
        assert (data["message_id"], data["status"]) == (vera["id"], "bounced")
        # Again: nothing changes.
        data = assert_ok(
            await hooks.post("/webhook/bounce", json={"message_id": anna["id"], "type": "hard"}),
            200,
        )
        assert (data["status"], data["changed"], data["suppressed"]) == ("bounced", False, None)

        for body in (
            {"message_id": 999_999, "type": "hard"},
            {"token": f"{anna['id']}-0000000000", "type": "hard"},
            {"project": "010", "email": "nobody@example.ru", "type": "soft"},
        ):
            assert_error(await hooks.post("/webhook/bounce", json=body), 404, "Страница не найдена")
        invalid: list[Any] = [
            {"type": "hard"},
            {"message_id": anna["id"], "token": "1-abc", "type": "hard"},
            {"message_id": anna["id"], "type": "bounced"},
            {"message_id": anna["id"], "type": "hard", "status": "4.2.2"},
            {"message_id": anna["id"], "type": "hard", "status": "five"},
            {"project": "010", "type": "hard"},
            {"project": "nope", "email": "anna@example.ru", "type": "hard"},
            {"message_id": "x", "type": "hard"},
            [1, 2],
        ]
        for body in invalid:
            assert_error(await hooks.post("/webhook/bounce", json=body), 400, "Ошибка валидации")
        assert_error(
            await hooks.post("/webhook/bounce", content=b"{not json"), 400, "Ошибка валидации"
        )
        assert_error(
            await hooks.post(
                "/webhook/bounce",
                content=b"Subject: hi\r\n\r\nnot a report",
                headers={"content-type": "message/rfc822"},
            ),
            400,
            "Ошибка валидации",
        )
    rows = await statuses(engine)
    assert [rows[f"{n}@example.ru"]["status"] for n in ("anna", "boris", "vera")] == ["bounced"] * 3
    boris_history = await history(api, mailing_id, "boris@example.ru")
    assert [(e["old_status"], e["status"]) for e in boris_history[-2:]] == [
        ("sent", "sent"),
        ("sent", "bounced"),
    ]
    suppressed = assert_ok(await api.get("/suppression/list"), 200)
    assert {item["address"] for item in suppressed["items"]} == {
        "anna@example.ru",
        "boris@example.ru",
        "vera@example.ru",
    }
    # A server without a bounce domain cannot check tokens: the request is refused, not 500.
    assert_error(
        await api.post("/webhook/bounce", json={"token": VERP.token(anna["id"]), "type": "hard"}),
        400,
        "Ошибка валидации",
    )


# -- the command -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_rassylka_bounces_takes_a_report_and_stops_on_sigterm(
    api: httpx.AsyncClient, engine: AsyncEngine, database_url: str, smtp: SmtpPeer, tmp_path: Path
) -> None:
    _, rows, mails = await sent_mail(api, engine, smtp, ["anna@example.ru"])
    anna = rows["anna@example.ru"]
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("RASSYLKA_")}
    env.update(
        RASSYLKA_DATABASE_URL=database_url,
        RASSYLKA_BOUNCE_DOMAIN=DOMAIN,
        RASSYLKA_SECRET_KEY=SECRET,
        RASSYLKA_BOUNCE_PORT=str(port),
        PYTHONUNBUFFERED="1",
    )
    log = tmp_path / "bounces.log"
    with log.open("w") as output:
        process = await asyncio.create_subprocess_exec(
            str(RASSYLKA), "bounces", cwd=tmp_path, env=env, stdout=output, stderr=output
        )
        try:
            await until(lambda: listening(port), seconds=30)
            address = VERP.address(anna["id"])
            reply = await mail_to(port, address, make_dsn(mails["anna@example.ru"], to=address))
            assert reply == "250 2.0.0 OK"
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert process.returncode == 0, log.read_text()
    assert (await statuses(engine))["anna@example.ru"]["status"] == "bounced"
    assert "bounce of message" in log.read_text()


async def listening(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


def test_the_command_refuses_to_start_without_a_domain_or_a_key(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("RASSYLKA_")}
    result = subprocess.run(
        [str(RASSYLKA), "bounces"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "RASSYLKA_BOUNCE_DOMAIN" in result.stderr
    env["RASSYLKA_BOUNCE_DOMAIN"] = DOMAIN
    result = subprocess.run(
        [str(RASSYLKA), "bounces"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "RASSYLKA_SECRET_KEY" in result.stdout + result.stderr


# -- the parts on their own --------------------------------------------------------------------


def test_tokens_are_signed_and_checked() -> None:
    token = VERP.token(42)
    assert token.startswith("42-")
    assert len(token) == len("42-") + 10
    assert VERP.address(42) == f"bounce+{token}@{DOMAIN}"
    assert VERP.message_id(token) == 42
    assert VERP.message_id(token.upper()) == 42  # MTAs may change the case
    assert VERP.message_id_of(f"<BOUNCE+{token}@{DOMAIN.upper()}>") == 42
    assert VERP.message_id(f"43-{token[3:]}") is None
    assert VERP.message_id("42") is None
    assert VERP.message_id(f"{2**64}-{token[3:]}") is None
    assert VERP.message_id_of(f"bounce+{token}@other.example.com") is None
    assert VERP.message_id_of_any(f"bounce+{token}@other.example.com") == 42
    assert Verp(DOMAIN, b"another secret key!").message_id(token) is None


def test_settings_need_a_key_with_a_bounce_domain() -> None:
    with pytest.raises(ValueError, match="RASSYLKA_SECRET_KEY"):
        Settings(bounce_domain=DOMAIN)
    with pytest.raises(ValueError, match="RASSYLKA_SECRET_KEY"):
        Settings(bounce_domain=DOMAIN, secret_key="short")
    with pytest.raises(ValueError, match="invalid bounce domain"):
        Settings(bounce_domain="not a domain", secret_key=SECRET)
    settings = Settings(bounce_domain="Почта.Пример.рф.", secret_key=SECRET)
    assert settings.bounce_domain == "xn--80a1acny.xn--e1afmkfd.xn--p1ai"
    assert Settings().bounce_domain is None


def _original() -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = "Rassylka <rassylka@localhost>"
    mail["To"] = "ivan@example.ru"
    mail["Subject"] = "Новости"
    mail["Message-ID"] = "<abc@localhost>"
    return mail


def test_the_parser_reads_each_kind_of_report() -> None:
    cases = {
        ("failed", "5.1.1"): (dsn.Kind.HARD, "5.1.1"),
        ("failed", "4.4.7"): (dsn.Kind.FAILED, "4.4.7"),
        ("delayed", "4.2.2"): (dsn.Kind.SOFT, "4.2.2"),
        ("delivered", "2.0.0"): (dsn.Kind.DELIVERED, "2.0.0"),
        ("Failed", "5.7.1 (spam)"): (dsn.Kind.HARD, "5.7.1"),
    }
    for (action, status), (kind, code) in cases.items():
        report = dsn.parse(make_dsn(_original(), to="x@y", action=action, status=status))
        assert report is not None
        verdict = report.verdict()
        assert verdict is not None
        assert (verdict.kind, verdict.status, verdict.recipient) == (kind, code, "ivan@example.ru")
        assert verdict.diagnostic == (
            "550 5.1.1 <ivan@example.ru>: Recipient address rejected: User unknown"
        )
    report = dsn.parse(make_dsn(_original(), to="b@x", envelope_id="7-0123456789"))
    assert report is not None
    assert report.envelope_id == "7-0123456789"
    assert report.addressed_to == ("b@x",)
    relayed = dsn.parse(make_dsn(_original(), to="x@y", action="relayed", status="2.0.0"))
    assert relayed is not None
    assert relayed.verdict() is None
    # RFC 6533's global report (UTF-8), parsed by the same rules.
    global_report = make_dsn(_original(), to="x@y").replace(
        b"message/delivery-status", b"message/global-delivery-status"
    )
    parsed = dsn.parse(global_report)
    assert parsed is not None
    verdict = parsed.verdict()
    assert verdict is not None
    assert verdict.kind is dsn.Kind.HARD


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\xff\xfe",
        b"Subject: hi\r\n\r\nplain text",
        b"Content-Type: multipart/report; boundary=x\r\n\r\n--x\r\n\r\n--x--",
        b"Content-Type: multipart/report; boundary=x\r\n\r\n--x\r\n"
        b"Content-Type: message/delivery-status\r\n\r\n\r\n\r\n--x--",
        b"Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n\r\n"
        b"Action: \xff\xfe\r\nStatus: x.y.z\r\n",
        b"Content-Type: message/delivery-status; charset=\xff\r\nContent-Transfer-Encoding: "
        b"base64\r\n\r\n!!!!",
    ],
)
def test_the_parser_never_raises_on_junk(raw: bytes) -> None:
    report = dsn.parse(raw)
    assert report is None or report.verdict() is None
