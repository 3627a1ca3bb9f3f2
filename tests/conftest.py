"""Fixtures: a real database per test (SQLite and PostgreSQL), a real HTTP server, a client.

Every test that asks for ``api`` runs twice, once per backend. Each test gets its own database,
cloned from one migrated template (a file copy for SQLite, ``CREATE DATABASE … TEMPLATE`` for
PostgreSQL), and its own uvicorn server on 127.0.0.1 on a free port.

PostgreSQL comes from ``RASSYLKA_TEST_POSTGRES_URL`` (default: postgres@127.0.0.1:5432). If it
cannot be reached its tests are skipped with the reason, unless ``RASSYLKA_TEST_REQUIRE_POSTGRES``
is set (CI sets it), in which case they fail.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from rassylka import migrate
from rassylka.app import create_app
from rassylka.channels.smtp import SmtpChannel, SmtpConfig
from rassylka.config import Settings
from rassylka.db import create_engine
from rassylka.engine.dispatcher import DispatchConfig
from rassylka.engine.retry import RetryPolicy
from rassylka.engine.worker import Worker, run_until_stopped
from smtp_peer import SmtpPeer

POSTGRES_URL = os.environ.get(
    "RASSYLKA_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
REQUIRE_POSTGRES = bool(os.environ.get("RASSYLKA_TEST_REQUIRE_POSTGRES"))
BACKENDS = ["sqlite", "postgresql"]
# For a test of something only PostgreSQL has (its backends, the create's batching writer): the
# ``backend`` fixture takes that one value, so no SQLite variant is made (and skipped).
POSTGRESQL_ONLY = pytest.mark.parametrize("backend", ["postgresql"])


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _migrate(url: str) -> None:
    engine = create_engine(url)
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()


@dataclass
class PostgresServer:
    url: str
    template: str | None = None
    problem: str | None = None
    # Dropping a database waits for a checkpoint (~0.5 s here); done off the tests' path.
    dropper: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1))

    def drop_later(self, name: str) -> None:
        sql = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
        self.dropper.submit(asyncio.run, self.execute(sql))

    def database_url(self, name: str) -> str:
        return make_url(self.url).set(database=name).render_as_string(hide_password=False)

    async def execute(self, sql: str) -> None:
        connection = await asyncpg.connect(_dsn(self.url), timeout=5)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer(POSTGRES_URL)
    template = f"rassylka_template_{os.getpid()}"
    try:
        asyncio.run(server.execute(f'DROP DATABASE IF EXISTS "{template}"'))
        asyncio.run(server.execute(f'CREATE DATABASE "{template}"'))
    except (TimeoutError, OSError, asyncpg.PostgresError) as error:
        server.problem = f"PostgreSQL at {make_url(POSTGRES_URL).host} unreachable: {error!r}"
        yield server
        return
    asyncio.run(_migrate(server.database_url(template)))
    server.template = template
    yield server
    server.dropper.shutdown(wait=True)
    asyncio.run(server.execute(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)'))


def require_postgres(postgres: PostgresServer) -> None:
    """Skip a test that needs PostgreSQL when it cannot be reached, with the reason; fail
    instead when ``RASSYLKA_TEST_REQUIRE_POSTGRES`` is set (CI)."""
    if postgres.template is None:
        if REQUIRE_POSTGRES:
            pytest.fail(postgres.problem or "PostgreSQL required")
        pytest.skip(postgres.problem or "PostgreSQL unavailable")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    asyncio.run(_migrate(f"sqlite+aiosqlite:///{path}"))
    return path


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(
    backend: str, tmp_path: Path, sqlite_template: Path, postgres: PostgresServer
) -> Iterator[str]:
    """A fresh, migrated database of ``backend`` for this test alone."""
    if backend == "sqlite":
        path = tmp_path / "rassylka.db"
        shutil.copyfile(sqlite_template, path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    require_postgres(postgres)
    name = f"rassylka_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(postgres.execute(f'CREATE DATABASE "{name}" TEMPLATE "{postgres.template}"'))
    yield postgres.database_url(name)
    postgres.drop_later(name)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """Direct access to the test's database, for arranging and checking what the API can't."""
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


class LiveServer:
    """The app served by uvicorn on 127.0.0.1, in this test's event loop; with ``worker``, the
    scheduler and dispatcher in it too (``rassylka serve``)."""

    def __init__(self, settings: Settings, *, worker: bool = False) -> None:
        self.app = create_app(settings, worker=worker)
        # IPPROTO_TCP spelt out: asyncio sets TCP_NODELAY only on sockets that say so, and
        # without it every response waits ~40 ms for a delayed ACK.
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.server.serve(sockets=[self.socket]), name="uvicorn")
        while not self.server.started:
            if self.task.done():
                self.task.result()
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            await self.task
        self.socket.close()


async def serve(settings: Settings, *, worker: bool = False) -> LiveServer:
    server = LiveServer(settings, worker=worker)
    await server.start()
    return server


@pytest.fixture
async def live_server(settings: Settings) -> AsyncIterator[LiveServer]:
    server = await serve(settings)
    yield server
    await server.stop()


StartServer = Callable[..., Awaitable[LiveServer]]


@pytest.fixture
async def start_server(database_url: str) -> AsyncIterator[StartServer]:
    """Start servers on this test's database with other settings: ``start(api_keys=[...])``."""
    servers: list[LiveServer] = []

    async def start(**overrides: Any) -> LiveServer:
        server = await serve(Settings(database_url=database_url, **overrides))
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def nowhere() -> AsyncIterator[LiveServer]:
    """The API served with a PostgreSQL URL whose port has no listener."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    server = await serve(Settings(database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{port}/x"))
    yield server
    await server.stop()


@pytest.fixture
async def api(live_server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=60) as client:
        yield client


# -- the engine against a real SMTP server ----------------------------------------------------

FAST_RETRY = RetryPolicy(max_attempts=3, base_delay=0.05, max_delay=0.1, max_age=60)


@pytest.fixture
def smtp() -> Iterator[SmtpPeer]:
    """An aiosmtpd server on 127.0.0.1 with verdicts by recipient (see smtp_peer.py)."""
    peer = SmtpPeer().start()
    yield peer
    peer.stop()


StartWorker = Callable[..., Awaitable[Worker]]


@pytest.fixture
async def start_worker(engine: AsyncEngine, smtp: SmtpPeer) -> AsyncIterator[StartWorker]:
    """Start workers sending email to ``smtp``; all are stopped gracefully at the end."""
    running: list[tuple[Worker, asyncio.Task[None]]] = []

    async def start(*, schedule: bool = True, **options: Any) -> Worker:
        config = DispatchConfig(
            **{"poll_interval": 0.05, "retry": FAST_RETRY, "error_rate_window": 1000, **options}
        )
        channel = SmtpChannel(SmtpConfig(host="127.0.0.1", port=smtp.port, pool_size=4))
        worker = Worker(engine, {1: channel}, config, schedule=schedule)
        task = asyncio.create_task(run_until_stopped(worker, grace=10))
        running.append((worker, task))
        return worker

    yield start
    for worker, _ in running:
        worker.stop()
    for _, task in running:
        await task


@pytest.fixture
async def keyed_api(start_server: StartServer) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a server that takes the API keys ``first-key`` and ``second-key``."""
    server = await start_server(api_keys=["first-key", "second-key"])
    async with httpx.AsyncClient(base_url=server.url) as client:
        yield client
