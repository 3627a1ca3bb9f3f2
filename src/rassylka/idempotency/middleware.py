"""``IdempotencyMiddleware``: a POST or PUT with an ``Idempotency-Key`` is answered once.

The same key with the same request again gets the first answer byte for byte (with
``Idempotent-Replayed: true``) and makes nothing; with another request, 409. See docs/api.md,
"Idempotency-Key", for the rules a CRM relies on.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rassylka.db import utcnow
from rassylka.errors import FieldError, error_response, unexpected
from rassylka.http import replay_body
from rassylka.idempotency import repository
from rassylka.idempotency.repository import Answered, Claimed, InProgress, OtherRequest

logger = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
METHODS = frozenset({"POST", "PUT"})
TAKEOVER_AFTER = 60.0
"""Seconds after which a key still in progress is taken over by a retry: the process that
claimed it died before answering (a live one answers any request here well within that)."""

# Answers that say "not now" rather than "this request gives this": a retry should run again.
_TRANSIENT = frozenset({408, 425, 429})

INVALID_KEY = "Ключ идемпотентности: от 1 до 255 печатных символов ASCII"
OTHER_REQUEST = "Ключ идемпотентности уже использован с другим запросом"
IN_PROGRESS = "Запрос с этим ключом идемпотентности ещё выполняется, повторите позже"
REPLAYED = [(b"idempotent-replayed", b"true")]


class IdempotencyMiddleware:
    """Applies to every POST and PUT that carries the header (every create, update, import,
    mailing action): each of them is a request a CRM may retry after a lost answer. Without
    the header nothing changes and the database is not touched.

    Placed inside the authentication (the caller's key space: ``scope["state"]["caller_id"]``
    when it names an API key, else one space for all) and the body limit, outside
    ``FastCreate``, which answers ``POST /client/create`` before the routes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in METHODS:
            await self.app(scope, receive, send)
            return
        raw_key = _header(scope["headers"], b"idempotency-key")
        if raw_key is None:
            await self.app(scope, receive, send)
            return
        key = raw_key.decode("latin-1")
        if not _valid_key(key):
            detail = FieldError(field=HEADER, message=INVALID_KEY)
            await error_response(400, [detail])(scope, receive, send)
            return
        try:
            body = await _read_body(receive)
        except HTTPException as error:  # the body limit's 413, raised from its receive
            await error_response(error.status_code)(scope, receive, send)
            return
        if body is None:
            return  # the client went away: no one to answer
        engine = scope["app"].state.engine
        settings = scope["app"].state.settings
        try:
            outcome = await repository.claim(
                engine,
                scope=_key_space(scope),
                key=key,
                method=scope["method"],
                path=scope["path"],
                request_hash=fingerprint(scope, body),
                now=utcnow(),
                ttl=settings.idempotency_ttl,
                takeover_after=TAKEOVER_AFTER,
            )
        except Exception as error:  # the database away: 503, as the app's handlers say it
            await unexpected(error)(scope, receive, send)
            return
        if isinstance(outcome, Answered):
            await _send_json(send, outcome.status_code, outcome.body, REPLAYED)
        elif isinstance(outcome, OtherRequest):
            await error_response(409, message=OTHER_REQUEST)(scope, receive, send)
        elif isinstance(outcome, InProgress):
            answer = error_response(409, message=IN_PROGRESS, headers={"Retry-After": "1"})
            await answer(scope, receive, send)
        else:
            await _answer(self.app, scope, replay_body(body, receive), send, outcome)


async def _answer(
    app: ASGIApp, scope: Scope, receive: Receive, send: Send, claimed: Claimed
) -> None:
    """Run the request; store its answer before sending it (so a retry made once the answer
    has arrived always finds it), or release the key when the answer is not one to repeat:
    a 5xx, a "not now" (408, 425, 429), anything but JSON, a streamed body, an error."""
    engine = scope["app"].state.engine
    start: Message | None = None
    settled = False
    streaming = False

    async def settle(store: bool, status: int = 0, body: bytes = b"") -> None:
        nonlocal settled
        settled = True
        try:
            if store:
                await repository.store(engine, claimed.record_id, status_code=status, body=body)
            else:
                await repository.release(engine, claimed.record_id)
        except Exception:
            # The request's own work is done and its answer goes out; the key stays in
            # progress and is taken over after TAKEOVER_AFTER.
            logger.warning("idempotency key %s not settled", claimed.record_id, exc_info=True)

    async def capture(message: Message) -> None:
        nonlocal start, streaming
        if message["type"] == "http.response.start":
            start = message
            return
        if message["type"] != "http.response.body" or start is None:
            await send(message)
            return
        if streaming:
            await send(message)
            return
        if message.get("more_body", False):
            streaming = True
            await settle(store=False)
            await send(start)
            await send(message)
            return
        status = int(start["status"])
        body = message.get("body", b"")
        await settle(_repeatable(status, start.get("headers", [])), status, body)
        await send(start)
        await send(message)

    try:
        await app(scope, receive, capture)
    finally:
        if not settled:
            await settle(store=False)


def _repeatable(status: int, headers: Any) -> bool:
    if status >= 500 or status in _TRANSIENT:
        return False
    content_type = _header(headers, b"content-type") or b""
    return content_type.split(b";", 1)[0].strip().lower() == b"application/json"


async def _send_json(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]]
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-length", str(len(body)).encode()),
                (b"content-type", b"application/json"),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _header(headers: Any, name: bytes) -> bytes | None:
    """The first value of header ``name`` (ASGI gives names in lower case), as Starlette
    reads it."""
    for header, value in headers:
        if header == name:
            return bytes(value)
    return None


def _valid_key(key: str) -> bool:
    return 0 < len(key) <= MAX_KEY_LENGTH and all(" " <= char <= "~" for char in key)


def _key_space(scope: Scope) -> str:
    """Whose keys these are: the API key that authenticated the request (``key:<id>``,
    ``env:<n>``), so two keys never share a key space; else one space for all callers."""
    caller = scope.get("state", {}).get("caller_id")
    if isinstance(caller, str) and caller.startswith(("key:", "env:")):
        return caller
    return ""


def fingerprint(scope: Scope, body: bytes) -> str:
    """SHA-256 of the method, path, query string and body, each length-prefixed so that no
    two different requests run together into the same bytes."""
    digest = hashlib.sha256()
    for part in (
        scope["method"].encode(),
        scope["path"].encode(),
        bytes(scope.get("query_string", b"")),
        body,
    ):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


async def _read_body(receive: Receive) -> bytes | None:
    """The whole body (the body limit outside bounds it), or None if the client left."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def document(schema: dict[str, Any]) -> None:
    """Declare the optional header, and its 400 and 409, on every POST and PUT of ``schema``
    (the OpenAPI document): the middleware answers them, not the operations."""
    parameter = {
        "name": HEADER,
        "in": "header",
        "required": False,
        "description": (
            "Повтор запроса с тем же ключом и тем же телом возвращает первый ответ "
            "(заголовок Idempotent-Replayed: true) и ничего не создаёт; с другим телом — 409."
        ),
        "schema": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_KEY_LENGTH,
            # Printable ASCII; no space at either end (HTTP drops it there).
            "pattern": "^[!-~]([ -~]*[!-~])?$",
        },
    }
    envelope = {"$ref": "#/components/schemas/ErrorEnvelope"}
    for path in schema.get("paths", {}).values():
        for method, operation in path.items():
            if method.upper() not in METHODS:
                continue
            operation.setdefault("parameters", []).append(parameter)
            responses = operation.setdefault("responses", {})
            for code, description in (("400", "Ошибка валидации"), ("409", OTHER_REQUEST)):
                responses.setdefault(
                    code,
                    {
                        "description": description,
                        "content": {"application/json": {"schema": envelope}},
                    },
                )
