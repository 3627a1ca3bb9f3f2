"""``POST /client/create`` answered ahead of FastAPI's routing: ``FastCreate``, an ASGI
middleware that gives the endpoint's answers at a fraction of its CPU."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from rassylka.access.scope import own_reference
from rassylka.clients import service
from rassylka.clients.router import CREATE_PATH, created
from rassylka.clients.schemas import ClientCreate
from rassylka.errors import AppError, error_response, unexpected
from rassylka.http import replay_body


class FastCreate:
    """A CRM creates its clients one request at a time, so this is the API's busiest endpoint,
    and py-spy put FastAPI's and Starlette's layers on it (route matching, dependency solving,
    exit stacks, exception wrappers, the Request object) at about a third of its CPU.

    This takes the creates it can answer exactly as the endpoint would: a JSON body of
    declared length that is a valid ``ClientCreate`` (the API key, if one is required, was
    checked by ``AuthMiddleware`` outside this). It holds a project-scoped key to its project
    as the endpoint does (``access.scope.own_reference``, no query), runs the same
    ``service.create`` and writes the same bytes (``router.created``); a domain error (unknown
    project, no contact, guid taken, another project's key) gets the envelope the app's
    handler gives it. Anything else (a body that does not validate, bad JSON, another content
    type, a chunked body) goes on to the app with the body already read, so every other
    answer still comes from the one place that makes it.

    Added innermost of our middlewares: inside the body limit (so a declared length is within
    it) and the settings one (``get_settings()`` answers this app's settings)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != CREATE_PATH
            or scope["method"] != "POST"
            or not _ours(scope["headers"])
        ):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away: no one to answer
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        data = _valid(body)
        if data is None:
            await self.app(scope, replay_body(body, receive), send)
            return
        state = scope["app"].state
        try:
            data.project = own_reference(scope.get("state", {}), data.project)  # type: ignore[assignment]
            row = await service.create(state.new_clients, state.sessionmaker, data=data)
        except AppError as error:
            answer = error_response(error.status_code, error.details, message=error.message)
            await answer(scope, receive, send)
            return
        except Exception as error:  # answered here, as the app's handlers would (503 or 500)
            await unexpected(error)(scope, receive, send)
            return
        content = created(row)
        await send(
            {
                "type": "http.response.start",
                "status": 201,
                "headers": [
                    (b"content-length", str(len(content)).encode()),
                    (b"content-type", b"application/json"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": content})


def _ours(headers: list[tuple[bytes, bytes]]) -> bool:
    """A JSON body of declared length (a header given twice counts once, its first, as
    Starlette reads it)."""
    first: dict[bytes, bytes] = {}
    for name, value in headers:
        first.setdefault(name, value)
    content_type = first.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
    return (
        content_type == b"application/json"
        and b"content-length" in first
        and b"transfer-encoding" not in first
    )


def _valid(body: bytes) -> ClientCreate | None:
    """The body as FastAPI would read it (``json.loads``, then the model), or None."""
    try:
        parsed: Any = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError too; [[[…]]] nested too deep
        return None
    if not isinstance(parsed, dict):
        return None
    try:
        return ClientCreate.model_validate(parsed)
    except ValidationError:
        return None
