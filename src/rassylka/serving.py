"""uvicorn's HTTP protocol with a response's head and body sent in one write
(``uvicorn.run(..., http=HttpProtocol)``, as ``rassylka api`` and ``serve`` run)."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class OneWriteTransport:
    """A transport that joins the writes of one event-loop iteration.

    uvicorn writes a response's status line and headers at ``http.response.start`` and the
    body at ``http.response.body``: two ``send()`` calls. On this kind of machine a socket
    write is among the largest costs of a small request (py-spy of ``POST /client/create``
    under load: uvicorn's two writes were about a quarter of the API process's CPU). This
    holds the first write of an iteration until the iteration's end; a write that follows in
    the same iteration (a small response's body comes right after its head) goes out with it
    in one call. A write that stays alone (the head of a stream whose first event comes
    later) leaves at the end of the iteration, so nothing waits longer than the rest of one
    turn of the event loop."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._held is None:
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
            return
        held, self._held = self._held, None
        self._transport.write(held + data)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        """Send what is held (called at the end of the iteration, and before closing)."""
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.flush()
        self._transport.set_protocol(protocol)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    """``uvicorn.run(..., http=HttpProtocol)``: uvicorn's httptools protocol on a
    ``OneWriteTransport``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(
            OneWriteTransport(transport, self.loop)  # type: ignore[arg-type]
        )
