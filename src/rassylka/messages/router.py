"""HTTP endpoints that report on messages from outside: the SMS provider's status callbacks
and the texts its recipients send back (a STOP word opts the number out, docs/sms.md)."""

from __future__ import annotations

import hmac
import json
from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from rassylka.channels.http_sms import CallbackError, StatusCallbackFormat, parse_status_callback
from rassylka.channels.smpp import InboundSms
from rassylka.config import Settings
from rassylka.db import SessionDep, utcnow
from rassylka.engine.inbound import InboundTexts
from rassylka.errors import FieldError, Forbidden, ValidationFailed, openapi_error_responses
from rassylka.messages import receipts
from rassylka.metrics import definitions as metrics
from rassylka.schemas import Envelope, ok

router = APIRouter(prefix="/webhook", tags=["Delivery"])


class CallbackResult(BaseModel):
    received: int
    matched: int
    """Reports that found the message they name; the rest wait for it (a report may come
    before the message is recorded as sent) and are dropped after a day."""
    settled: int
    """Messages whose status changed."""


@router.post(
    "/sms/status",
    status_code=200,
    summary="Статус доставки SMS от HTTP-провайдера",
    description=(
        "Провайдер SMS сообщает, чем кончилось сообщение: JSON-объект, список объектов или "
        "форма, с id сообщения у провайдера, статусом и кодом ошибки (поля задаются "
        "настройками RASSYLKA_SMS_HTTP_STATUS_*). Ключ API не нужен; если задан "
        "RASSYLKA_SMS_HTTP_CALLBACK_TOKEN, он передаётся в ?token=."
    ),
    response_model=Envelope[CallbackResult],
    responses=openapi_error_responses(400, 403, 413, 500),
)
async def sms_status(
    session: SessionDep, request: Request, token: str | None = Query(default=None)
) -> dict[str, object]:
    settings = request.app.state.settings
    _check_token(settings, token)
    try:
        payload = await _payload(request)
        reports = parse_status_callback(payload, StatusCallbackFormat.from_settings(settings))
    except CallbackError as error:
        metrics.receipt("http", metrics.REJECTED)
        raise ValidationFailed([FieldError(field=error.field, message=error.message)]) from None
    except ValidationFailed:
        metrics.receipt("http", metrics.REJECTED)
        raise
    now = utcnow()
    await receipts.store(session, reports=reports, now=now)
    matched = await receipts.match(
        session, now=now, peer_ids=[report.peer_message_id for report in reports]
    )
    result = CallbackResult(
        received=len(reports), matched=matched.receipts, settled=len(matched.settled)
    )
    metrics.receipt_on_commit(session, "http", metrics.MATCHED, matched.receipts)
    metrics.receipt_on_commit(
        session, "http", metrics.WAITING, max(0, len(reports) - matched.receipts)
    )
    return ok(result, status=200)


class InboundResult(BaseModel):
    stop: bool
    """Whether the text is a stop word."""
    projects: list[int]
    """The projects it opted the number out of SMS in (empty when not a stop word)."""
    changed: list[int]
    """Those where that changed something (a repeated STOP changes nothing)."""


@router.post(
    "/sms/inbound",
    status_code=200,
    summary="Входящее SMS от HTTP-провайдера",
    description=(
        "Провайдер SMS передаёт ответ получателя: JSON-объект или форма с номером "
        "отправителя, нашим номером или именем, на который ответили, и текстом (поля задаются "
        "настройками RASSYLKA_SMS_HTTP_INBOUND_*). Стоп-слово (RASSYLKA_SMS_STOP_WORDS) "
        "отписывает номер от SMS проекта. Ключ API не нужен; если задан "
        "RASSYLKA_SMS_HTTP_CALLBACK_TOKEN, он передаётся в ?token=."
    ),
    response_model=Envelope[InboundResult],
    responses=openapi_error_responses(400, 403, 413, 500),
)
async def sms_inbound(
    request: Request, token: str | None = Query(default=None)
) -> dict[str, object]:
    settings = request.app.state.settings
    _check_token(settings, token)
    payload = await _payload(request)
    if not isinstance(payload, dict):
        raise ValidationFailed.on("body", "ожидался JSON-объект или форма")
    source = _text_field(payload, settings.sms_http_inbound_from_field, required=True)
    text = _text_field(payload, settings.sms_http_inbound_text_field, required=True)
    destination = _text_field(payload, settings.sms_http_inbound_to_field, required=False)
    inbound = InboundSms(source=source, source_ton=0, destination=destination, text=text)
    # Not the request's transaction: each project's opt-out commits on its own (their events
    # are the last rows of each transaction).
    handled = await InboundTexts.from_settings(request.app.state.sessionmaker, settings).handle(
        inbound
    )
    result = InboundResult(
        stop=handled.word is not None,
        projects=list(handled.projects),
        changed=list(handled.changed),
    )
    return ok(result, status=200)


def _check_token(settings: Settings, token: str | None) -> None:
    """403 unless the callback carries RASSYLKA_SMS_HTTP_CALLBACK_TOKEN, when one is set."""
    secret = settings.sms_http_callback_token
    expected = secret.get_secret_value() if secret is not None else None
    if expected and not (token and hmac.compare_digest(token.encode(), expected.encode())):
        raise Forbidden()


def _text_field(payload: dict[str, Any], name: str, *, required: bool) -> str:
    value = payload.get(name)
    if value is None:
        if required:
            raise ValidationFailed.on(name, "Обязательное поле")
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValidationFailed.on(name, "ожидалась строка")
    return str(value)


async def _payload(request: Request) -> Any:
    """The callback's body: JSON, or a form (every value as text)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.form()
        return {key: value for key, value in form.items() if isinstance(value, str)}
    body = await request.body()
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValidationFailed.on("body", "ожидался JSON или форма") from None
