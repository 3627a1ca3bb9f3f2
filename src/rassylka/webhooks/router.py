"""HTTP endpoints of webhooks: create, list, read, update, delete, and a webhook's deliveries.

Only the paths below are this router's: ``/webhook/bounce`` and ``/webhook/sms/…`` (inbound
receipts) belong to another.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request

from rassylka.access import scope
from rassylka.db import SessionDep
from rassylka.errors import openapi_error_responses
from rassylka.schemas import MAX_ID, EntityId, Envelope, Page, PageDep, ok
from rassylka.webhooks import service
from rassylka.webhooks.models import DeliveryStatus, Webhook
from rassylka.webhooks.schemas import (
    DeliveryRead,
    WebhookCreate,
    WebhookRead,
    WebhookUpdate,
    WebhookWithSecret,
)

router = APIRouter(
    prefix="/webhook",
    tags=["Webhooks"],
    dependencies=[scope.owned(Webhook, service.NOT_FOUND)],
)
WebhookId = Annotated[int, Path(ge=1, le=MAX_ID, description="Идентификатор вебхука")]


def _with_secret(read: WebhookRead, secret: str | None) -> WebhookWithSecret:
    return WebhookWithSecret(**read.model_dump(), secret=secret)


@router.post(
    "/create",
    status_code=201,
    summary="Подписка CRM на статусы сообщений",
    description=(
        "События сообщений проекта (каждая смена статуса) отправляются POST-запросом на url,"
        " с подписью HMAC-SHA256 в заголовке X-Rassylka-Signature. Секрет подписи возвращается"
        " только в этом ответе. Приходят события, случившиеся после создания вебхука."
    ),
    response_model=Envelope[WebhookWithSecret],
    responses=openapi_error_responses(400, 403, 405, 413, 500),
)
async def create_webhook(
    request: Request, session: SessionDep, data: WebhookCreate
) -> dict[str, object]:
    if scope.project_scope(request) is not None:
        named = scope.scoped_reference(request, data.project_reference)
        data.project_id, data.project = named, None  # type: ignore[assignment]
    webhook = await service.create(session, data=data)
    return ok(_with_secret(WebhookRead.model_validate(webhook), webhook.secret))


@router.get(
    "/list",
    summary="Список вебхуков",
    response_model=Envelope[Page[WebhookRead]],
    responses=openapi_error_responses(400, 403, 500),
)
async def list_webhooks(
    request: Request,
    session: SessionDep,
    page: PageDep,
    project_id: Annotated[EntityId | None, Query(description="Идентификатор проекта")] = None,
    project: Annotated[str | None, Query(description="Код или id проекта")] = None,
) -> dict[str, object]:
    if scope.project_scope(request) is not None:
        named = scope.scoped_reference(request, project if project is not None else project_id)
        project_id, project = None, named  # type: ignore[assignment]
    webhooks, total = await service.page(
        session, project_id=project_id, project=project, limit=page.limit, offset=page.offset
    )
    return ok(page.of([WebhookRead.model_validate(w) for w in webhooks], total), status=200)


@router.get(
    "/{id:int}",
    summary="Вебхук",
    response_model=Envelope[WebhookRead],
    responses=openapi_error_responses(403, 404, 500),
)
async def read_webhook(session: SessionDep, id: WebhookId) -> dict[str, object]:
    webhook = await service.get(session, webhook_id=id)
    return ok(WebhookRead.model_validate(webhook), status=200)


@router.put(
    "/{id:int}/update",
    status_code=201,
    summary="Изменение вебхука",
    description=(
        "url, events, active, description; secret — свой новый секрет, rotate_secret: true —"
        " новый секрет от сервера (возвращается в поле secret этого ответа, и только в нём)."
    ),
    response_model=Envelope[WebhookWithSecret],
    responses=openapi_error_responses(400, 403, 404, 405, 413, 500),
)
async def update_webhook(
    session: SessionDep, id: WebhookId, data: WebhookUpdate
) -> dict[str, object]:
    webhook, secret = await service.update(session, webhook_id=id, data=data)
    return ok(_with_secret(WebhookRead.model_validate(webhook), secret))


@router.delete(
    "/{id:int}",
    summary="Удаление вебхука",
    description="Удаляет вебхук вместе с его неотправленными событиями.",
    response_model=Envelope[WebhookRead],
    responses=openapi_error_responses(403, 404, 500),
)
async def delete_webhook(session: SessionDep, id: WebhookId) -> dict[str, object]:
    webhook = WebhookRead.model_validate(await service.get(session, webhook_id=id))
    await service.delete(session, webhook_id=id)
    return ok(webhook, status=200)


@router.get(
    "/{id:int}/deliveries",
    summary="Доставки событий вебхука",
    description="Каждое событие: статус доставки, число попыток, последний ответ или ошибка.",
    response_model=Envelope[Page[DeliveryRead]],
    responses=openapi_error_responses(400, 403, 404, 500),
)
async def list_deliveries(
    session: SessionDep,
    id: WebhookId,
    page: PageDep,
    status: Annotated[
        DeliveryStatus | None, Query(description="pending, delivered или failed")
    ] = None,
) -> dict[str, object]:
    deliveries, total = await service.deliveries(
        session, webhook_id=id, status=status, limit=page.limit, offset=page.offset
    )
    return ok(page.of([DeliveryRead.model_validate(d) for d in deliveries], total), status=200)
