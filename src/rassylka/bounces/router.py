"""``POST /webhook/bounce``: a bounce reported over HTTP, by a provider or a relay — as JSON
naming the message, or as the DSN itself (``message/rfc822`` or ``multipart/report``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from rassylka.access import scope
from rassylka.bounces import arf, dsn, service
from rassylka.bounces.schemas import BounceRead, BounceReport
from rassylka.bounces.verp import Verp
from rassylka.channels.email_message import MessageIds
from rassylka.config import Settings
from rassylka.errors import NotFound, openapi_error_responses
from rassylka.schemas import Envelope, ok
from rassylka.unsubscribe.tokens import stored_key_of

router = APIRouter(prefix="/webhook", tags=["Bounces"])
DSN_TYPES = {"message/rfc822", "multipart/report"}


async def message_ids_of(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> MessageIds:
    """How this installation's Message-IDs are tagged: by RASSYLKA_SECRET_KEY, else by the key
    stored in the database (as the dispatcher tags them)."""
    if settings.secret_key:
        return MessageIds(settings.secret_key.get_secret_value().encode())
    return MessageIds(await stored_key_of(sessionmaker))


_BINARY: dict[str, Any] = {"schema": {"type": "string", "format": "binary"}}


@router.post(
    "/bounce",
    summary="Возврат письма (bounce)",
    description=(
        "Сообщает о возврате письма: hard — статус bounced и адрес в список подавления проекта"
        " (поставленные в очередь письма на него пропускаются), soft — заметка, статус остаётся"
        " sent. Тело — JSON, либо сам отчёт о доставке RFC 3464 (Content-Type message/rfc822"
        " или multipart/report): сообщение находится по ENVID или адресу bounce+…@."
        " Если сообщение уже не в статусе sent, ничего не меняется (changed: false)."
        " Жалоба на спам (type complaint, или отчёт ARF RFC 5965 multipart/report;"
        " report-type=feedback-report) отписывает адрес от писем проекта."
    ),
    response_model=Envelope[BounceRead],
    responses=openapi_error_responses(400, 403, 404, 405, 413, 500),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": BounceReport.model_json_schema()},
                "message/rfc822": _BINARY,
                "multipart/report": _BINARY,
            },
        }
    },
)
async def report_bounce(request: Request) -> dict[str, object]:
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    settings = request.app.state.settings
    verp = Verp.from_settings(settings)
    content_type = request.headers.get("content-type", "")
    body = await request.body()
    complaint: str | None = None
    if content_type.split(";")[0].strip().lower() in DSN_TYPES:
        # A bare multipart body needs its Content-Type (the boundary) to be read as a mail.
        raw = body
        if not content_type.lower().startswith("message/"):
            raw = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode() + body
        if (feedback := arf.parse(raw)) is not None:
            found = service.find_complained(
                feedback, verp=verp, message_ids=await message_ids_of(settings, sessionmaker)
            )
            if found is None:
                raise NotFound.on(
                    "body", "Жалоба не называет ни одного сообщения Rassylka (адрес или Message-ID)"
                )
            message_id, complaint = found, feedback.describe()
        else:
            message_id, verdict = service.find_in_dsn(dsn.parse(raw), verp=verp)
    else:
        try:
            report = BounceReport.model_validate_json(body)
        except ValidationError as error:
            errors = error.errors(include_url=False)
            # Located in the body, as FastAPI locates the errors of a body it parsed itself.
            raise RequestValidationError(
                [{**detail, "loc": ("body", *detail["loc"])} for detail in errors]
            ) from None
        if report.project is not None:
            report.project = scope.scoped_reference(request, report.project)
        if report.type == service.COMPLAINT:
            complaint = f"жалоба на спам{': ' + report.diagnostic if report.diagnostic else ''}"
        else:
            verdict = service.verdict_of(report)
        async with sessionmaker() as session, session.begin():
            message_id = await service.find(session, report=report, verp=verp)
    if complaint is not None:
        applied = await service.complain(
            sessionmaker,
            message_id=message_id,
            description=complaint,
            project_id=scope.project_scope(request),
        )
    else:
        applied = await service.apply(
            sessionmaker,
            message_id=message_id,
            verdict=verdict,
            project_id=scope.project_scope(request),
        )
    if applied is None:
        raise NotFound.on("message_id", f"Сообщение {message_id} не найдено")
    return ok(
        BounceRead(
            message_id=applied.message_id,
            status=applied.status,
            changed=applied.changed,
            suppressed=applied.suppressed,
        ),
        status=200,
    )
