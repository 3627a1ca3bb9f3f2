"""A test SMS provider's HTTP API: a real HTTP server (uvicorn + Starlette) on 127.0.0.1.

It answers by destination (``answers``), by default 200 with
``{"status": "ok", "result": {"id": "prov-<n>"}}``, and records every request it gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

API_KEY = "key-that-must-not-leak"


@dataclass
class Answer:
    status: int = 200
    body: Any = None
    """JSON-able, or a ``str`` sent as text/plain."""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Seen:
    content_type: str
    raw: bytes
    fields: dict[str, Any]
    headers: dict[str, str]
    query: str
    client_port: int


class Provider:
    """An SMS provider's HTTP API on 127.0.0.1, in the test's event loop."""

    def __init__(self) -> None:
        self.answers: dict[str, Answer] = {}
        self.requests: list[Seen] = []
        self.delay = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self.release = asyncio.Event()  # ends every delay at teardown
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}/api/send?key={API_KEY}"
        app = Starlette(routes=[Route("/api/send", self.handle, methods=["POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.server.serve(sockets=[self.socket]))
        while not self.server.started:
            if self.task.done():
                self.task.result()
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        self.release.set()
        self.server.should_exit = True
        if self.task is not None:
            await self.task
        self.socket.close()

    async def handle(self, request: Request) -> Response:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            raw = await request.body()
            content_type = request.headers.get("content-type", "")
            if content_type.startswith("application/json"):
                fields = json.loads(raw)
            else:
                fields = dict(parse_qsl(raw.decode("ascii"), keep_blank_values=True))
            assert request.client is not None
            self.requests.append(
                Seen(
                    content_type=content_type,
                    raw=raw,
                    fields=fields,
                    headers=dict(request.headers),
                    query=request.url.query,
                    client_port=request.client.port,
                )
            )
            destination = fields.get("to") or fields.get("phones")
            answer = self.answers.get(destination) or Answer(
                body={"status": "ok", "result": {"id": f"prov-{len(self.requests)}"}}
            )
            delay = answer.delay or self.delay
            if delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.release.wait(), delay)
            if isinstance(answer.body, str):
                return PlainTextResponse(answer.body, answer.status, answer.headers)
            return JSONResponse(answer.body, answer.status, answer.headers)
        finally:
            self.in_flight -= 1

    @property
    def connections(self) -> set[int]:
        return {seen.client_port for seen in self.requests}
