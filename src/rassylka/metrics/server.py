"""The standalone worker's metrics (``RASSYLKA_METRICS_PORT``): ``GET /metrics`` on 127.0.0.1.

``rassylka worker`` has no HTTP server, and pulling in one for a single page is more than it
needs: this answers one request per connection with asyncio's own streams, on the worker's
loop (so the queue depth is counted with its sessions). Loopback only and without a key: what
can reach it runs on this machine; a Prometheus elsewhere scrapes it through whatever exposes
the machine's other local services.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from rassylka.metrics import depth

logger = logging.getLogger(__name__)

# How long a client may take to send its request, and how much of it is read.
READ_TIMEOUT = 5.0
MAX_HEAD = 16 * 1024
# How long an answer may take, the queue's count (``depth.TIMEOUT``) and the write included.
ANSWER_TIMEOUT = 10.0


class MetricsServer:
    """Serves ``GET /metrics`` on ``host:port`` (port 0: any free one, then see ``port``)."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        port: int,
        host: str = "127.0.0.1",
    ) -> None:
        self._sessionmaker = sessionmaker
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._answer, self.host, self.port, limit=MAX_HEAD
        )
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info("metrics on http://%s:%s/metrics", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A client that sends no whole request, or reads no answer, in time (or goes away) gets
        # its connection closed and nothing more.
        quiet = (
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
        )
        try:
            with contextlib.suppress(*quiet):
                async with asyncio.timeout(READ_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
                async with asyncio.timeout(ANSWER_TIMEOUT):
                    await self._reply_to(head, writer)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def _reply_to(self, head: bytes, writer: asyncio.StreamWriter) -> None:
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, *_ = [*request_line.split(" "), "", ""]
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in header_lines if line)
        }
        if method != "GET":
            await _reply(writer, 405, b"method not allowed\n", "text/plain; charset=utf-8")
        elif target.partition("?")[0] != "/metrics":
            await _reply(writer, 404, b"not found: see /metrics\n", "text/plain; charset=utf-8")
        else:
            await depth.refresh(self._sessionmaker)
            encode, content_type = choose_encoder(headers.get("accept", ""))
            body = encode(REGISTRY)
            await _reply(writer, 200, body, content_type)


_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}


async def _reply(writer: asyncio.StreamWriter, status: int, body: bytes, content_type: str) -> None:
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    writer.write(head.encode("latin-1") + body)
    await writer.drain()
