"""What the benchmarks share: Postfix's smtp-sink as a counting peer, and the message they send
(a realistic Russian newsletter: Cyrillic subject, text and HTML, with ``{{ first_name }}``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
COUNTERS = re.compile(rb"sess=(\d+) quit=(\d+) mesg=(\d+)\r")
START_TIMEOUT = 5.0

SUBJECT = "{{ first_name }}, весенние новости и скидки до 30% — только до конца месяца"
TEXT = """Здравствуйте, {{ first_name }}!

Весна пришла, и мы подготовили для вас подборку новинок сезона: лёгкие куртки, удобную обувь
для прогулок и товары для дачи. До конца месяца на всё действует скидка до 30%, а доставка
по Москве и Санкт-Петербургу бесплатная при заказе от 3 000 ₽.

Ваш персональный промокод: ВЕСНА-{{ first_name | upper }}. Введите его при оформлении заказа.

Если у вас есть вопросы, ответьте на это письмо или позвоните нам: 8 800 555-35-35.

С уважением,
команда магазина «Пример»

Вы получили это письмо, потому что подписаны на новости магазина.
"""
HTML = """<!DOCTYPE html>
<html lang="ru"><head><meta charset="utf-8"><title>Весенние новости</title></head>
<body style="font-family: Arial, sans-serif; color: #222;">
<table width="600" align="center" cellpadding="0" cellspacing="0">
<tr><td><h1 style="color: #2a7;">Здравствуйте, {{ first_name }}!</h1></td></tr>
<tr><td><p>Весна пришла, и мы подготовили для вас подборку новинок сезона: лёгкие куртки,
удобную обувь для прогулок и товары для дачи.</p>
<p>До конца месяца на всё действует скидка <b>до 30%</b>, а доставка по Москве и
Санкт-Петербургу бесплатная при заказе от 3&nbsp;000&nbsp;₽.</p>
<p>Ваш персональный промокод: <b>ВЕСНА-{{ first_name | upper }}</b>.</p>
<p><a href="https://example.ru/sale?utm_source=email">Смотреть новинки</a></p></td></tr>
<tr><td><p style="font-size: 12px; color: #888;">Вы получили это письмо, потому что подписаны
на новости магазина «Пример». <a href="https://example.ru/unsubscribe">Отписаться</a></p>
</td></tr>
</table>
</body></html>
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _listening(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a socket listening on 127.0.0.1:``port`` (read from /proc,
    not probed: smtp-sink would count a probe as a session)."""
    try:
        sockets = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    except FileNotFoundError:
        return False
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if (
                fields[3] == "0A"  # LISTEN
                and fields[1] == f"0100007F:{port:04X}"
                and f"socket:[{fields[9]}]" in sockets
            ):
                return True
    return False


class Sink:
    """Postfix's smtp-sink on 127.0.0.1, counting sessions and messages (``-c``), keeping none."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.counter_file = workdir / f"smtp-sink-{self.port}.out"
        self.error_file = workdir / f"smtp-sink-{self.port}.err"
        run_as = ["-u", "nobody"] if os.geteuid() == 0 else []  # it refuses to run as root
        command = [SMTP_SINK, *run_as, "-c", f"127.0.0.1:{self.port}", "1000"]
        with self.counter_file.open("wb") as out, self.error_file.open("wb") as err:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=err
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not _listening(self.process.pid, self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"smtp-sink did not start: {self.errors()}")
            time.sleep(0.005)

    def messages(self) -> int:
        """Messages received so far (smtp-sink prints its counters at every "."). Only the
        file's tail is read: reading all of it (2 MB after 100,000 messages) 200 times a
        second took a tenth of a CPU from the run being measured."""
        with self.counter_file.open("rb") as counters:
            counters.seek(max(0, counters.seek(0, os.SEEK_END) - 4096))
            found = COUNTERS.findall(counters.read())
        return int(found[-1][2]) if found else 0

    def errors(self) -> str:
        return self.error_file.read_text(errors="replace").strip()[-2000:]

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers; always reaped."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def dsn(url: str) -> str:
    """A SQLAlchemy URL (``postgresql+asyncpg://…``) as asyncpg takes it."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def postgres(url: str, *statements: str) -> str:
    """Run ``statements`` on the server at ``url``; its version."""
    connection = await asyncpg.connect(dsn(url), timeout=5)
    try:
        for statement in statements:
            await connection.execute(statement)
        return str(await connection.fetchval("SHOW server_version")).split()[0]
    finally:
        await connection.close()


def call(base: str, method: str, path: str, body: Any = None, *, key: str | None = None) -> Any:
    """One request to the API at ``base`` (with the API key ``key``); its answer's ``data``."""
    request = urllib.request.Request(
        base + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"}
        | ({"Authorization": f"Bearer {key}"} if key else {}),
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())["data"]


@contextmanager
def scratch_database(server_url: str) -> Iterator[str]:
    """A database of its own on the server at ``server_url``, dropped on the way out."""
    name = f"rassylka_bench_{uuid.uuid4().hex[:10]}"
    asyncio.run(postgres(server_url, f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(postgres(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


IMPORT_CHUNK = 50_000
"""Clients per ``POST /client/import`` request."""


def project_with_template(base: str, name: str, **texts: str) -> tuple[str, int, int]:
    """A project with a fresh code and a template of ``texts`` (``email_subject``, ``sms_text``,
    ...), through the API: the project's code, its id and the template's id."""
    code = f"b{uuid.uuid4().hex[:8]}"
    project = call(base, "POST", "/project/create", {"name": name, "code": code})
    template = call(
        base, "POST", "/template/create", {"project_id": project["id"], "name": name, **texts}
    )
    return code, int(project["id"]), int(template["id"])


def import_clients(
    base: str, code: str, count: int, client: Callable[[int], dict[str, Any]]
) -> None:
    """``count`` clients, the i-th ``client(i)``, into project ``code`` through the API, in
    requests of ``IMPORT_CHUNK``; each must be created."""
    for start in range(0, count, IMPORT_CHUNK):
        clients = [client(i) for i in range(start, min(count, start + IMPORT_CHUNK))]
        result = call(base, "POST", "/client/import", {"project": code, "clients": clients})
        assert result["created"] == len(clients), result


# -- CPU per message ---------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def database_backends(database_url: str) -> list[int]:
    """The PostgreSQL server processes serving the database of ``database_url`` (on this
    machine: their titles name it)."""
    name = make_url(database_url).database
    listing = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [
        int(pid)
        for pid, _, title in (line.strip().partition(" ") for line in listing.splitlines())
        if title.startswith("postgres: ") and f" {name} " in title
    ]


def cpu_by_process(pids: dict[str, int], database_url: str) -> dict[str, float]:
    """CPU seconds so far of each of ``pids`` and of each backend of the database (named
    ``postgres PID``: one that ended since the last look is missed, one new since counts from
    its start)."""
    seconds = {}
    for name, pid in [
        *pids.items(),
        *((f"postgres {pid}", pid) for pid in database_backends(database_url)),
    ]:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            seconds[name] = cpu_seconds(pid)
    return seconds


def cpu_per_message(
    before: dict[str, float], after: dict[str, float], count: int
) -> dict[str, float]:
    """µs of CPU per message of each process between two looks, the backends summed."""
    spent: dict[str, float] = {}
    for name, seconds in after.items():
        key = "PostgreSQL" if name.startswith("postgres ") else name
        spent[key] = spent.get(key, 0.0) + seconds - before.get(name, 0.0)
    return {name: value / count * 1e6 for name, value in spent.items()}
