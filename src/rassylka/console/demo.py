"""``rassylka demo``: the whole service on one machine in one process, for a first look.

A local SMTP server (aiosmtpd) and the demo SMSC (``demo_smsc``) on free 127.0.0.1 ports, the
embedded service (API, scheduler, sending) on a temporary SQLite database pointing at them, and
through its API a sample project, clients, template and a mailing on email and SMS, shown being
delivered with the ``mailing watch`` table. Nothing is written outside a temporary directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from aiosmtpd.smtp import SMTP as SmtpServer
from aiosmtpd.smtp import Envelope, Session
from rich.console import Console

from rassylka import migrate
from rassylka.app import create_app
from rassylka.config import Settings
from rassylka.console import watching
from rassylka.console.api import EXIT_FAILED, Api, CliFailure
from rassylka.console.demo_smsc import DemoSmsc
from rassylka.db import create_engine

DELIVERY_TIMEOUT = 60.0
CLIENTS = [
    ("demo-1", "Анна", "Смирнова", "anna@example.ru", "+79161234501"),
    ("demo-2", "Борис", "Кузнецов", "boris@example.ru", "+79161234502"),
    ("demo-3", "Вера", "Попова", "vera@example.ru", "+79161234503"),
    ("demo-4", "Глеб", "Соколов", "gleb@example.ru", "+79161234504"),
]
TEMPLATE = {
    "name": "Приветствие",
    "email_subject": "Здравствуйте, {{ first_name }}!",
    "email_text": "{{ first_name }} {{ last_name }}, это письмо из демо Rassylka.",
    "sms_text": "{{ first_name }}, привет из демо Rassylka",
}


@dataclass
class DemoMailbox:
    """The aiosmtpd handler: takes every message, counts them."""

    received: list[tuple[str, list[str]]] = field(default_factory=list)

    async def handle_DATA(self, server: SmtpServer, session: Session, envelope: Envelope) -> str:
        self.received.append((str(envelope.mail_from), list(envelope.rcpt_tos)))
        return f"250 OK: queued as demo-{len(self.received)}"


def _listener(port: int = 0) -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    return listener


def demo_settings(directory: Path, *, smtp_port: int, smpp_port: int) -> Settings:
    """The service's settings for the demo: its own database and peers, whatever the
    environment says about a real deployment (keys, bounces, an HTTP SMS provider)."""
    return Settings(
        database_url=f"sqlite+aiosqlite:///{directory / 'demo.db'}",
        api_keys=[],
        bounce_domain=None,
        outbox_dir=str(directory / "outbox"),
        smtp_host="127.0.0.1",
        smtp_port=smtp_port,
        smtp_username=None,
        smtp_password=None,
        smtp_tls="none",
        smpp_host="127.0.0.1",
        smpp_port=smpp_port,
        smpp_system_id="demo",
        smpp_password="demo",
        sms_http_url=None,
        dispatch_poll_interval=0.2,
        email_rate_limit=0.0,
        sms_rate_limit=0.0,
        api_rate_limit=0.0,
    )


async def arrange(api: Api) -> int:
    """The sample project, clients, template and mailing; the mailing's id."""
    project = await api.post("/project/create", json={"name": "Демо", "code": "demo"})
    template = await api.post("/template/create", json={"project_id": project["id"], **TEMPLATE})
    clients = [
        {"guid": guid, "first_name": first, "last_name": last, "email": email, "phone": phone}
        for guid, first, last, email, phone in CLIENTS
    ]
    await api.post("/client/import", json={"project": "demo", "clients": clients})
    mailing = await api.post(
        "/mailing/create",
        json={
            "name": "Знакомство",
            "project_id": project["id"],
            "template_id": template["id"],
            "status": 1,
            "channels": ["email", "sms"],
        },
    )
    return int(mailing["id"])


def delivered(tally: watching.Tally) -> bool:
    """The mailing is done and every SMS has its receipt (email ends at "sent": no receipts)."""
    return tally.finished and tally.of("sms", "sent") == 0 and tally.of("sms", "queued") == 0


async def run_demo(
    directory: Path, *, out: Console, port: int = 0, once: bool = False
) -> watching.Tally | None:
    """Run the demo with its database in ``directory``; the final counts (None if stopped
    before the mailing was delivered)."""
    loop = asyncio.get_running_loop()
    mailbox = DemoMailbox()
    smtp = await loop.create_server(
        lambda: SmtpServer(mailbox, hostname="demo.localhost"), sock=_listener()
    )
    smsc = await DemoSmsc().start()
    smtp_port = smtp.sockets[0].getsockname()[1]
    settings = demo_settings(directory, smtp_port=smtp_port, smpp_port=smsc.port)
    engine = create_engine(settings.database_url)
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    listener = _listener(port)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, worker=True), log_level="warning", lifespan="on")
    )
    serving = asyncio.create_task(server.serve(sockets=[listener]), name="demo-uvicorn")
    try:
        while not server.started:
            if serving.done():
                serving.result()
            await asyncio.sleep(0.01)
        out.print(
            f"Демо: SMTP 127.0.0.1:{smtp_port}, SMSC 127.0.0.1:{smsc.port}, "
            f"база {directory / 'demo.db'}"
        )
        async with Api(url, None) as api:
            mailing_id = await arrange(api)
            out.print(f"Создана рассылка {mailing_id}: {len(CLIENTS)} клиента, email и SMS.")
            watcher = asyncio.create_task(
                watching.watch(api, mailing_id, console=out, done=delivered), name="demo-watch"
            )
            await asyncio.wait(
                {watcher, serving}, timeout=DELIVERY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
            )
            if not watcher.done():  # stopped (Ctrl-C), or not delivered in time
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
                if serving.done():
                    return None
                raise CliFailure(
                    f"Рассылка не доставлена за {DELIVERY_TIMEOUT:.0f} с: см. таблицу выше",
                    EXIT_FAILED,
                )
            tally = watcher.result()
        out.print(
            f"Писем принял SMTP-сервер: {len(mailbox.received)}, SMS принял SMSC: {smsc.submitted}."
        )
        out.print(f"Панель: {url}/   Документация API: {url}/docs")
        out.print(f"Из другого окна: rassylka mailing watch {mailing_id} --url {url}")
        if not once:
            out.print("Сервис работает; Ctrl-C — остановить.")
            await serving
        return tally
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await serving
        listener.close()
        await smsc.stop()
        smtp.close()
        await smtp.wait_closed()
