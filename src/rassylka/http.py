"""Cross-cutting HTTP pieces: the request body limit and the settings of the serving app (the
API keys are ``access.middleware``'s)."""

from __future__ import annotations

import time

from fastapi import Request
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rassylka.config import Settings, current_settings
from rassylka.errors import ValidationFailed, error_response
from rassylka.schemas import NUL_MESSAGE

# Before a 413 the rest of the body is read and dropped, up to this much and this long: a
# server that closes a connection with unread data in it makes the kernel reset it, and the
# client (still sending) then loses the answer instead of reading the 413. Bodies larger than
# this are cut short (the client may see a reset rather than the envelope).
DRAIN_BYTES = 16 * 1024 * 1024
DRAIN_SECONDS = 5.0


async def _drain(receive: Receive, left: int) -> None:
    """Reads and drops what remains of the request body, within DRAIN_BYTES/DRAIN_SECONDS."""
    deadline = time.monotonic() + DRAIN_SECONDS
    while left > 0 and time.monotonic() < deadline:
        message = await receive()
        if message["type"] != "http.request":
            return
        left -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class BodyLimitMiddleware:
    """Refuses request bodies over the limit with the manual's envelope and 413.

    A declared Content-Length is refused before the body is passed on; a chunked body is
    counted as it arrives. Either way the rest of the body is read and dropped first (within
    DRAIN_BYTES), so that the client reads the 413. Some paths (the bulk import) get their
    own, larger limit.
    """

    def __init__(self, app: ASGIApp, *, default: int, per_path: dict[str, int]) -> None:
        self.app = app
        self.default = default
        self.per_path = per_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.per_path.get(scope["path"], self.default)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            if declared <= DRAIN_BYTES:
                await _drain(receive, declared)
            response = error_response(413, headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    if message.get("more_body", False):
                        await _drain(receive, DRAIN_BYTES - received)
                    # FastAPI re-raises an HTTPException met while reading the body.
                    raise HTTPException(status_code=413, headers={"Connection": "close"})
            return message

        await self.app(scope, limited_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def replay_body(body: bytes, receive: Receive) -> Receive:
    """The request as the app would have received it, for a middleware that read its body
    first: the body once, then the connection (a disconnect)."""
    pending = True

    async def replayed() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


class SettingsMiddleware:
    """Makes ``get_settings()`` answer this app's settings while it handles a request."""

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = current_settings.set(self.settings)
        try:
            await self.app(scope, receive, send)
        finally:
            current_settings.reset(token)


async def refuse_nul_in_query(request: Request) -> None:
    """A query string with NUL (``%00``) is a 400 naming the parameter: PostgreSQL cannot
    compare text holding it (and would answer 500), SQLite would answer something else."""
    for name, value in request.query_params.multi_items():
        if "\x00" in name or "\x00" in value:
            raise ValidationFailed.on(name.replace("\x00", ""), NUL_MESSAGE)
