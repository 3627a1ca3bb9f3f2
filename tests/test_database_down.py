"""The API when its database cannot be reached: 503 in the manual's envelope, never a 500 or
a hang. The server is real (uvicorn on 127.0.0.1); the database is a PostgreSQL address where
nothing listens (a port bound and closed by the test), as a stopped cluster looks, or where a
TCP server accepts and never answers, as a stuck one does. A restart of a real cluster under a
running API is the chaos suite's (issue 7)."""

from __future__ import annotations

import asyncio
import errno

import asyncpg
import httpx
import pytest
from sqlalchemy import exc as sqlalchemy_errors

from conftest import LiveServer, serve
from helpers import assert_error
from rassylka.config import Settings
from rassylka.db import CONNECT_TIMEOUT, connect_timeout
from rassylka.errors import database_unavailable

CLIENT = {
    "project": "010",
    "guid": "g",
    "first_name": "И",
    "last_name": "И",
    "phone": "+79161234567",
}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/project/list", None),
        ("POST", "/project/create", {"name": "OCM", "code": "010"}),
        # served by FastCreate and its own asyncpg pool, not the routers
        (
            "POST",
            "/client/create",
            {
                "project": "010",
                "guid": "g",
                "first_name": "И",
                "last_name": "И",
                "phone": "+79161234567",
            },
        ),
        ("GET", "/mailing/1/stats", None),
        ("GET", "/health", None),
    ],
)
async def test_every_request_is_503_in_the_envelope_at_once(
    nowhere: LiveServer, method: str, path: str, body: object, caplog: pytest.LogCaptureFixture
) -> None:
    async with httpx.AsyncClient(base_url=nowhere.url, timeout=10) as api:
        async with asyncio.timeout(5):  # not a hang
            response = await api.request(method, path, json=body)
    assert_error(response, 503, "Сервис недоступен")
    if path != "/health":
        assert response.headers["retry-after"] == "1"
        # one line for the operator, no traceback (the server's "Exception in ASGI application")
        said = [(record.levelname, record.getMessage()) for record in caplog.records]
        assert any(message.startswith("database unavailable: ") for _, message in said), said
        assert not [record for record in caplog.records if record.exc_info], said


async def test_a_server_that_never_answers_costs_the_connect_timeout_then_503() -> None:
    held: list[asyncio.StreamWriter] = []

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accepted, never answered: the startup packet waits for ever

    listener = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{port}/x?timeout=1"
    server = await serve(Settings(database_url=url))
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as api:
            for method, path, body in (
                ("GET", "/project/list", None),
                ("POST", "/client/create", CLIENT),
            ):
                started = asyncio.get_running_loop().time()
                response = await api.request(method, path, json=body)
                waited = asyncio.get_running_loop().time() - started
                assert_error(response, 503, "Сервис недоступен")
                assert 0.9 <= waited < 5, f"{path} answered after {waited:.1f} s"
    finally:
        await server.stop()
        for writer in held:
            writer.close()
        listener.close()
        await listener.wait_closed()


def test_the_connect_timeout_is_the_urls_else_five_seconds() -> None:
    assert CONNECT_TIMEOUT == 5.0
    assert connect_timeout("postgresql+asyncpg://postgres@127.0.0.1/x") == 5.0
    assert connect_timeout("postgresql+asyncpg://postgres@127.0.0.1/x?timeout=2.5") == 2.5


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
        OSError(errno.EHOSTUNREACH, "No route to host"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        sqlalchemy_errors.TimeoutError("QueuePool limit of size 5 overflow 10 reached"),
        sqlalchemy_errors.DBAPIError(
            "SELECT 1", None, Exception("closed"), connection_invalidated=True
        ),
    ],
)
def test_what_says_the_server_is_away(error: Exception) -> None:
    assert database_unavailable(error)
    wrapper = RuntimeError("while listing projects")  # and wrapped, as raised ``from`` it
    wrapper.__cause__ = error
    assert database_unavailable(wrapper)


@pytest.mark.parametrize(
    "error",
    [
        ValueError("a bug"),
        FileNotFoundError(errno.ENOENT, "No such file or directory"),
        sqlalchemy_errors.DBAPIError("SELECT nope", None, Exception("syntax error")),
        asyncpg.QueryCanceledError("canceling statement due to statement timeout"),
    ],
)
def test_what_does_not(error: Exception) -> None:
    assert not database_unavailable(error)
