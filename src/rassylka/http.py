"""Cross-cutting HTTP pieces: the request body limit and the optional API key check."""

from __future__ import annotations

import hmac

from fastapi import Request
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rassylka.config import Settings, current_settings
from rassylka.errors import Forbidden, ValidationFailed, error_response
from rassylka.schemas import NUL_MESSAGE


class BodyLimitMiddleware:
    """Refuses request bodies over the limit with the manual's envelope and 413.

    A declared Content-Length is refused before the body is read; a chunked body is counted
    as it arrives. Some paths (the bulk import) get their own, larger limit.
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
                    # FastAPI re-raises an HTTPException met while reading the body.
                    raise HTTPException(status_code=413)
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


async def require_api_key(request: Request) -> None:
    """With ``RASSYLKA_API_KEYS`` set, every API call carries one: ``X-API-Key`` or Bearer."""
    keys: list[str] = request.app.state.settings.api_keys
    if keys and not key_accepted(
        keys, request.headers.get("x-api-key"), request.headers.get("authorization", "")
    ):
        raise Forbidden()


def key_accepted(keys: list[str], x_api_key: str | None, authorization: str) -> bool:
    """Whether the request's ``X-API-Key`` (else its ``Authorization: Bearer``) is one of
    ``keys``."""
    given = x_api_key
    if given is None:
        scheme, _, credentials = authorization.partition(" ")
        given = credentials.strip() if scheme.lower() == "bearer" else None
    return given is not None and any(
        hmac.compare_digest(given.encode(), key.encode()) for key in keys
    )


async def refuse_nul_in_query(request: Request) -> None:
    """A query string with NUL (``%00``) is a 400 naming the parameter: PostgreSQL cannot
    compare text holding it (and would answer 500), SQLite would answer something else."""
    for name, value in request.query_params.multi_items():
        if "\x00" in name or "\x00" in value:
            raise ValidationFailed.on(name.replace("\x00", ""), NUL_MESSAGE)
