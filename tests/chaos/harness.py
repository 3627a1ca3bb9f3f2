"""What the chaos suite's tests share: a counting SMTP sink whose answers can be changed while
it runs, the service's processes (``rassylka worker|api|serve``) started and killed for real,
a mailing made through the API, and the figures each test prints."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SmtpServer
from aiosmtpd.smtp import Envelope, Session
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from helpers import assert_ok, make_project, make_template
from rassylka.messages.models import Message

RASSYLKA = Path(sys.executable).with_name("rassylka")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _Handler:
    def __init__(self, sink: CountingSink) -> None:
        self.sink = sink

    async def handle_MAIL(
        self, server: SmtpServer, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if self.sink.refusal is not None:
            self.sink.refused += 1
            return self.sink.refusal
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(
        self, server: SmtpServer, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if address.startswith("never"):
            return "550 5.1.1 <" + address + ">: Recipient address rejected: no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SmtpServer, session: Session, envelope: Envelope) -> str:
        if self.sink.delay:
            await asyncio.sleep(self.sink.delay)
        with self.sink.lock:
            self.sink.received.update(envelope.rcpt_tos)
        return "250 2.0.0 Ok: queued"


@dataclass
class CountingSink:
    """An SMTP server (aiosmtpd, in a thread) that counts each recipient of each message it
    accepted — a recipient counted twice was sent twice. ``refusal`` (e.g. ``"451 4.3.0 …"``),
    when set, answers every MAIL FROM; recipients starting with ``never`` get 550."""

    port: int = 0
    delay: float = 0.0
    refusal: str | None = None
    refused: int = 0
    received: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    controller: Controller | None = None

    def start(self) -> CountingSink:
        self.port = self.port or free_port()
        self.controller = Controller(
            _Handler(self), hostname="127.0.0.1", port=self.port, server_hostname="localhost"
        )
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def count(self) -> int:
        with self.lock:
            return sum(self.received.values())

    def duplicates(self) -> int:
        with self.lock:
            return sum(n - 1 for n in self.received.values() if n > 1)


def service_env(database_url: str, **settings: object) -> dict[str, str]:
    """The environment of a service process: this machine's, no RASSYLKA_* of the caller's,
    and ``settings`` as RASSYLKA_<NAME>."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RASSYLKA_")}
    env["RASSYLKA_DATABASE_URL"] = database_url
    env["PYTHONUNBUFFERED"] = "1"
    for name, value in settings.items():
        env[f"RASSYLKA_{name.upper()}"] = str(value)
    return env


@dataclass
class Service:
    """One ``rassylka`` process, its output in a log file."""

    args: tuple[str, ...]
    env: dict[str, str]
    log: Path
    process: asyncio.subprocess.Process | None = None
    starts: int = 0

    async def start(self) -> Service:
        self.starts += 1
        with self.log.open("a") as output:
            output.write(f"---- start {self.starts}\n")
            output.flush()
            self.process = await asyncio.create_subprocess_exec(
                str(RASSYLKA),
                *self.args,
                cwd=self.log.parent,
                env=self.env,
                stdout=output,
                stderr=output,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def terminate(self, within: float = 40.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(within):
            return await self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def since_start(self) -> str:
        """What the latest start of the process wrote."""
        return self.text().rpartition(f"---- start {self.starts}\n")[2]

    async def ready(self, line: str = "sending through", seconds: float = 60) -> None:
        """Until the latest start has written ``line`` (a worker: its channels are open)."""
        deadline = time.monotonic() + seconds
        while line not in self.since_start():
            assert self.process is not None
            if self.process.returncode is not None:
                raise AssertionError(f"{self.args} exited: {self.since_start()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.args} not ready in {seconds} s")
            await asyncio.sleep(0.05)


async def wait_for_http(url: str, service: Service, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=2) as client:
        while True:
            assert service.process is not None
            if service.process.returncode is not None:
                raise AssertionError(f"{service.args} exited: {service.text()[-3000:]}")
            try:
                await client.get(f"{url}/health")
                return
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.2)


async def until(check: Callable[[], Awaitable[bool]], *, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached in {seconds} s")
        await asyncio.sleep(0.1)


def email_address(n: int) -> str:
    return f"user{n}@example.ru"


async def make_mailing(
    api: httpx.AsyncClient,
    count: int,
    *,
    channel: int = 1,
    address: Callable[[int], str] = email_address,
    status: int = 1,
) -> int:
    """A project, a template and ``count`` clients (each its own address), imported in one
    request, and a mailing to them all (active unless ``status`` says otherwise: it starts at
    a worker's next look)."""
    project_id = await make_project(api)
    template_id = await make_template(api, project_id)
    clients = []
    for n in range(count):
        client: dict[str, Any] = {"guid": f"c{n}", "first_name": f"Имя{n}", "last_name": "Петров"}
        client["email" if channel == 1 else "phone"] = address(n)
        clients.append(client)
    data = assert_ok(await api.post("/client/import", json={"project": "010", "clients": clients}))
    assert data["created"] == count
    body = {
        "name": "Хаос",
        "project_id": project_id,
        "template_id": template_id,
        "status": status,
        "channels": [channel],
        "event": "2020-08-02",
    }
    return int(assert_ok(await api.post("/mailing/create", json=body))["id"])


async def counts(engine: AsyncEngine) -> Counter[str]:
    """Messages by status, in one snapshot."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(Message.status, func.count()).group_by(Message.status)
        )
        return Counter({status: n for status, n in rows})


async def sending(engine: AsyncEngine) -> set[int]:
    """The ids of the messages claimed and not recorded yet."""
    async with engine.connect() as connection:
        return set(await connection.scalars(select(Message.id).where(Message.status == "sending")))


async def all_final(engine: AsyncEngine, total: int) -> bool:
    found = await counts(engine)
    return sum(found.values()) == total and not (found["queued"] or found["sending"])


def report(capsys: pytest.CaptureFixture[str], title: str, **figures: object) -> None:
    """Print the figures a chaos test measured, on the terminal even without ``-s``."""
    line = ", ".join(f"{name}={value}" for name, value in figures.items())
    with capsys.disabled():
        print(f"\n[chaos] {title}: {line}")
