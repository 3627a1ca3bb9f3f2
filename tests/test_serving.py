"""``rassylka api``'s HTTP protocol: a response's head and body in one write, and nothing held
back longer than the rest of an event-loop turn (streams, keep-alive, pipelining, close)."""

from __future__ import annotations

import asyncio
import gc
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn

from helpers import assert_ok, make_project
from rassylka.app import create_app
from rassylka.config import Settings
from rassylka.serving import HttpProtocol, OneWriteTransport


class RecordingTransport:
    """A stand-in for a socket's transport: the test must see each ``write()`` call, which a
    real socket does not show (the served tests below use real sockets)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


async def test_writes_of_one_loop_turn_leave_together() -> None:
    real = RecordingTransport()
    transport = OneWriteTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"head")
    transport.write(b"body")
    assert real.writes == [b"headbody"]
    transport.write(b"alone")
    assert real.writes == [b"headbody"]  # held until the end of this turn
    await asyncio.sleep(0)
    assert real.writes == [b"headbody", b"alone"]
    transport.write(b"last")
    transport.close()  # sent before the close
    assert real.writes[-1] == b"last"
    assert real.closed
    await asyncio.sleep(0)
    assert len(real.writes) == 3
    assert transport.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest is the real one's


@pytest.fixture
async def served(settings: Settings) -> AsyncIterator[str]:
    """The app behind uvicorn with ``HttpProtocol``, as ``rassylka api`` runs it."""
    listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listening.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        create_app(settings), log_level="warning", lifespan="on", http=HttpProtocol
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[listening]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    yield f"127.0.0.1:{listening.getsockname()[1]}"
    server.should_exit = True
    await task
    listening.close()


async def test_the_api_over_the_protocol(served: str) -> None:
    async with httpx.AsyncClient(base_url=f"http://{served}", timeout=10) as api:
        await make_project(api, code="010")
        body = {"project": "010", "guid": "g", "first_name": "И", "last_name": "И"}
        assert assert_ok(await api.post("/client/create", json={**body, "phone": "+79161234567"}))
        for _ in range(3):  # keep-alive
            assert (await api.get("/client/list")).status_code == 200
        # A stream's head comes before its first event.
        async with asyncio.timeout(5), api.stream("GET", "/events") as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")


async def test_pipelined_requests_and_connection_close(served: str) -> None:
    host, port = served.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    request = f"GET /health HTTP/1.1\r\nHost: {served}\r\n\r\n".encode()
    closing = f"GET /health HTTP/1.1\r\nHost: {served}\r\nConnection: close\r\n\r\n".encode()
    writer.write(request + request + closing)
    async with asyncio.timeout(10):
        received = await reader.read()  # until the server closes after the third answer
    writer.close()
    answers = received.split(b"HTTP/1.1 ")[1:]
    assert len(answers) == 3
    for answer in answers:
        head, _, content = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"200 OK")
        assert json.loads(content)["data"] == {"database": "ok"}
    assert b"connection: close" in answers[-1].lower()


async def test_a_served_process_freezes_its_heap_once_started(settings: Settings) -> None:
    """``rassylka api`` and ``serve`` (``freeze_heap``): what the started process holds is out
    of the collector's sight, so a full collection no longer walks it."""
    app = create_app(settings, freeze_heap=True)
    try:
        async with app.router.lifespan_context(app):
            assert gc.get_freeze_count() > 50_000
    finally:
        gc.unfreeze()
    plain = create_app(settings)
    async with plain.router.lifespan_context(plain):
        assert gc.get_freeze_count() == 0
