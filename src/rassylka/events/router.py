"""HTTP endpoints of the live status stream (Server-Sent Events): a mailing's events, a
project's, or everyone's."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Path, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession
from sse_starlette import EventSourceResponse
from starlette.types import Receive, Scope, Send

from rassylka.access import scope
from rassylka.config import Settings
from rassylka.errors import NotFound, TooManyRequests, ValidationFailed, openapi_error_responses
from rassylka.events import repository
from rassylka.events.bus import EventHub
from rassylka.events.schemas import StatusEvent
from rassylka.events.stream import StreamFilter, status_events
from rassylka.mailings import service as mailing_service
from rassylka.messages.models import UNSUBSCRIBED
from rassylka.projects import service as project_service
from rassylka.schemas import MAX_ID

router = APIRouter(tags=["Mailing"])
# Seconds a stream gets, once the server is stopping, to send its goodbye before it is cut.
SHUTDOWN_GRACE = 2.0
# A client that reads nothing for this long (its socket buffers full) is dropped.
SEND_TIMEOUT = 30.0

DESCRIPTION = """Server-Sent Events: каждое изменение статуса сообщения —
`id: <номер события>`, `event: status`, `data: <JSON события>`. Отписка получателя по ссылке,
в один клик или письмом — `event: unsubscribed` с тем же JSON (`"status": "unsubscribed"`,
`old_status` — статус сообщения, который не меняется).

Откуда начинать: заголовок `Last-Event-ID` (его шлёт EventSource при переподключении), иначе
`last_event_id` в строке запроса, иначе `since` (например, `since=0` — вся история); без них —
только новые события. Отдаются события с номером больше указанного, по порядку, без повторов.
Раз в `RASSYLKA_SSE_PING` секунд — комментарий-пинг; через `RASSYLKA_SSE_MAX_LIFETIME` секунд
(и при остановке сервера) поток завершается событием `reconnect`, после которого клиент
переподключается с `Last-Event-ID`."""

# One message of the stream, as OpenAPI 3.1 tools read a text/event-stream schema (each event,
# not the whole body): its fields, and ``data`` as the JSON it carries.
RECONNECT_DATA: dict[str, Any] = {
    "type": "object",
    "title": "Reconnect",
    "required": ["reason", "last_event_id"],
    "properties": {
        "reason": {"type": "string", "enum": ["lifetime", "shutdown"]},
        "last_event_id": {"type": "integer", "minimum": 0},
    },
}
STREAM_EVENT: dict[str, Any] = {
    "type": "object",
    "description": "Событие потока: status — изменение статуса сообщения; unsubscribed —"
    " получатель отписался от канала по этому сообщению; reconnect — последнее, после него"
    " клиент переподключается с Last-Event-ID",
    "properties": {
        "event": {"type": "string", "enum": ["status", UNSUBSCRIBED, "reconnect"]},
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"anyOf": [StatusEvent.model_json_schema(), RECONNECT_DATA]},
        },
        "retry": {"type": "integer", "minimum": 0},
    },
}
STREAM_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Поток событий (text/event-stream)",
        "content": {"text/event-stream": {"schema": STREAM_EVENT}},
    },
    **openapi_error_responses(400, 403, 404, 429, 500),
}
LastEventIdHeader = Annotated[
    str | None,
    Header(
        alias="Last-Event-ID",
        description="Номер последнего полученного события (шлёт EventSource при переподключении)",
    ),
]
LastEventIdQuery = Annotated[
    int | None,
    Query(ge=0, le=MAX_ID, description="То же, что Last-Event-ID, для клиентов без заголовков"),
]
Since = Annotated[
    int | None,
    Query(ge=0, le=MAX_ID, description="Начать после этого номера события (0 — с начала)"),
]


@router.get(
    "/mailing/{id:int}/events",
    summary="Поток статусов сообщений рассылки (SSE)",
    description=DESCRIPTION,
    response_class=EventSourceResponse,
    responses=STREAM_RESPONSES,
)
async def mailing_events(
    request: Request,
    id: Annotated[int, Path(ge=1, le=MAX_ID, description="Идентификатор рассылки")],
    last_event_id_header: LastEventIdHeader = None,
    last_event_id: LastEventIdQuery = None,
    since: Since = None,
) -> EventSourceResponse:
    hub: EventHub = request.app.state.event_hub
    async with hub.sessionmaker() as session:
        mailing = await mailing_service.get(session, mailing_id=id)
        if scope.project_scope(request) not in (None, mailing.project_id):
            raise NotFound.on("id", mailing_service.NOT_FOUND.format(id))
        cursor = await _cursor(session, last_event_id_header, last_event_id, since)
    return _stream(request, hub, cursor, StreamFilter(mailing_id=id))


@router.get(
    "/events",
    summary="Поток статусов сообщений проекта или всех проектов (SSE)",
    description=DESCRIPTION,
    response_class=EventSourceResponse,
    responses=STREAM_RESPONSES,
)
async def project_events(
    request: Request,
    project_id: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="Только события этого проекта")
    ] = None,
    last_event_id_header: LastEventIdHeader = None,
    last_event_id: LastEventIdQuery = None,
    since: Since = None,
) -> EventSourceResponse:
    hub: EventHub = request.app.state.event_hub
    project_id = scope.scoped_reference(request, project_id)  # type: ignore[assignment]
    async with hub.sessionmaker() as session:
        if project_id is not None:
            await project_service.get(session, project_id=project_id)
        cursor = await _cursor(session, last_event_id_header, last_event_id, since)
    return _stream(request, hub, cursor, StreamFilter(project_id=project_id))


async def _cursor(
    session: AsyncSession, header: str | None, query: int | None, since: int | None
) -> int:
    """Where the stream starts: the header an EventSource resends wins over the URL's
    parameters (which stay the same on every reconnect); with none, from now on."""
    if header is not None and header.strip():
        value = header.strip()
        if not (value.isascii() and value.isdigit()) or int(value) > MAX_ID:
            raise ValidationFailed.on(
                "Last-Event-ID", "Должен быть номером события: целое число от 0"
            )
        return int(value)
    if query is not None:
        return query
    if since is not None:
        return since
    return await repository.last_id(session)


def caller_of(request: Request) -> str:
    """Who holds a stream: the API key's caller the auth middleware names, else the
    client's address."""
    caller = request.scope.get("state", {}).get("caller_id")
    if caller:
        return str(caller)
    return f"addr:{request.client.host if request.client else ''}"


class _CountedStream(EventSourceResponse):
    """A stream that gives its caller's place back when it ends, however it ends (the
    client went away, the lifetime ran out, the server stops)."""

    def __init__(self, *args: Any, streams: Counter[str], caller: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._streams = streams
        self._caller = caller

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._streams[self._caller] -= 1
            if self._streams[self._caller] <= 0:
                del self._streams[self._caller]


def _stream(
    request: Request, hub: EventHub, cursor: int, only: StreamFilter
) -> EventSourceResponse:
    settings: Settings = request.app.state.settings
    # Open streams per caller, in this process: each holds a connection and a subscription
    # for up to RASSYLKA_SSE_MAX_LIFETIME, so one CRM's reconnect loop could hold them all.
    streams: Counter[str] | None = getattr(request.app.state, "sse_streams", None)
    if streams is None:
        streams = request.app.state.sse_streams = Counter()
    caller = caller_of(request)
    if streams[caller] >= settings.sse_max_per_client:
        raise TooManyRequests.on(
            "events",
            f"Открыто слишком много потоков событий ({settings.sse_max_per_client}):"
            " закройте ненужные",
        )
    streams[caller] += 1
    shutdown = anyio.Event()
    return _CountedStream(
        status_events(
            hub, cursor=cursor, only=only, lifetime=settings.sse_max_lifetime, shutdown=shutdown
        ),
        ping=settings.sse_ping,
        send_timeout=SEND_TIMEOUT,
        shutdown_event=shutdown,
        shutdown_grace_period=SHUTDOWN_GRACE,
        streams=streams,
        caller=caller,
    )
