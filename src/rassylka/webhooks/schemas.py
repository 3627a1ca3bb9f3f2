"""Request and response bodies of the webhook endpoints, and the body of a delivery."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from rassylka.events.schemas import StatusEvent
from rassylka.messages.models import UNSUBSCRIBED, MessageStatus
from rassylka.schemas import EntityId, ReadModel, RequestModel, UpdateModel
from rassylka.webhooks.models import URL_LENGTH, DeliveryStatus

ALL_EVENTS = "*"
EVENT_TYPE = "message.status"
UNSUBSCRIBED_TYPE = "message.unsubscribed"
"""The type of an ``unsubscribed`` event's delivery: a recipient opted out, no status changed."""
MIN_SECRET = 16
MAX_DESCRIPTION = 1000
# What a webhook may ask for: the statuses in their lifecycle order, then the opt-out.
STATUS_ORDER: list[str] = [*MessageStatus, UNSUBSCRIBED]


def _check_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(
            "Ожидается URL со схемой http или https, например https://crm.example/hook"
        )
    try:
        parts.port  # noqa: B018  (raises on a port that is not a number or out of range)
    except ValueError:
        raise ValueError("Некорректный порт в URL") from None
    if any(char.isspace() for char in value):
        raise ValueError("URL не может содержать пробелы")
    return value


def _check_events(value: list[str]) -> list[str] | None:
    """The statuses in their lifecycle order, each once; None (every event) for ``["*"]``."""
    if ALL_EVENTS in value:
        if len(value) > 1:
            raise ValueError("«*» означает все события и не сочетается с другими")
        return None
    unknown = [status for status in value if status not in STATUS_ORDER]
    if unknown:
        allowed = ", ".join(STATUS_ORDER)
        raise ValueError(f"Неизвестный статус «{unknown[0]}»; допустимые: {allowed} или *")
    return [status for status in STATUS_ORDER if status in set(value)]


def _empty_is_none(value: object) -> object:
    if isinstance(value, str) and not value.strip():
        return None
    return value


Url = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=URL_LENGTH),
    AfterValidator(_check_url),
]
Events = Annotated[
    list[Annotated[str, StringConstraints(strip_whitespace=True)]],
    Field(min_length=1, max_length=len(STATUS_ORDER) + 1),
    AfterValidator(_check_events),
]
Secret = Annotated[str, StringConstraints(min_length=MIN_SECRET, max_length=255)]
Description = Annotated[
    Annotated[str, StringConstraints(strip_whitespace=True, max_length=MAX_DESCRIPTION)] | None,
    BeforeValidator(_empty_is_none),
]
EVENTS_DESCRIPTION = (
    "Статусы сообщений, о которых сообщать (queued, sending, sent, delivered, undelivered,"
    " bounced, failed, expired, skipped) и unsubscribed — отписка получателя (тип"
    ' message.unsubscribed); не указано или ["*"] — обо всех'
)


class WebhookCreate(RequestModel):
    project_id: EntityId | None = Field(
        default=None, description="Идентификатор проекта (или укажите project)", examples=[236]
    )
    project: str | EntityId | None = Field(
        default=None, description="Код проекта (или его числовой id)", examples=["010"]
    )
    url: Url = Field(description="Куда отправлять события (http или https)")
    events: Events | None = Field(default=None, description=EVENTS_DESCRIPTION)
    secret: Secret | None = Field(
        default=None,
        description="Секрет подписи (не короче 16 символов); не указан — создаётся сервером."
        " Возвращается только в ответе на создание",
    )
    description: Description = Field(default=None, description="Заметка для людей")
    active: bool = Field(default=True, description="false — события копятся, но не отправляются")

    @model_validator(mode="after")
    def _one_project(self) -> WebhookCreate:
        if self.project_id is None and self.project is None:
            raise ValueError("Укажите project_id (или project — код проекта)")
        if self.project_id is not None and self.project is not None:
            raise ValueError("Укажите что-то одно: project_id или project")
        return self

    @property
    def project_reference(self) -> str | int:
        reference = self.project_id if self.project_id is not None else self.project
        assert reference is not None  # checked above
        return reference


class WebhookUpdate(UpdateModel):
    url: Url | None = Field(default=None, description="Новый адрес")
    events: Events | None = Field(default=None, description=EVENTS_DESCRIPTION)
    active: bool | None = Field(default=None, description="Включить или приостановить")
    description: Description = Field(default=None, description="Заметка для людей")
    secret: Secret | None = Field(default=None, description="Новый секрет подписи (свой)")
    rotate_secret: bool = Field(
        default=False,
        description="true — сервер создаёт новый секрет и возвращает его в этом ответе",
    )

    @model_validator(mode="after")
    def _something_to_change(self) -> WebhookUpdate:
        if self.secret is not None and self.rotate_secret:
            raise ValueError("Укажите что-то одно: secret или rotate_secret")
        if (
            not (self.model_fields_set - {"primary_key", "rotate_secret"})
            and not self.rotate_secret
        ):
            raise ValueError(
                "Укажите, что изменить: url, events, active, description, secret или rotate_secret"
            )
        return self


class WebhookRead(ReadModel):
    id: int
    project_id: int
    url: str
    events: list[str] = Field(description='Статусы, о которых сообщать; ["*"] — обо всех')
    description: str | None
    active: bool
    last_event_id: int = Field(description="До какого события включительно всё уже в очереди")
    created_at: datetime
    updated_at: datetime

    @field_validator("events", mode="before")
    @classmethod
    def _all_is_star(cls, value: Any) -> Any:
        return value if value else [ALL_EVENTS]


class WebhookWithSecret(WebhookRead):
    secret: str | None = Field(
        description="Секрет подписи: показывается только при создании и при rotate_secret"
    )


class DeliveryRead(ReadModel):
    id: int
    webhook_id: int
    event_id: int
    message_id: int
    status: DeliveryStatus = Field(description="pending, delivered или failed (попытки исчерпаны)")
    attempts: int
    last_http_status: int | None = Field(description="HTTP-статус последнего ответа")
    last_error: str | None = Field(description="Почему последняя попытка не удалась")
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    duration_ms: int | None = Field(description="Длительность последней попытки, мс")
    created_at: datetime
    updated_at: datetime


def delivery_body(event: StatusEvent) -> str:
    """The JSON POSTed for an event: compact, UTF-8, fixed once and sent byte for byte on every
    attempt (the signature covers these exact bytes)."""
    data = event.model_dump(mode="json")
    kind = UNSUBSCRIBED_TYPE if event.status == UNSUBSCRIBED else EVENT_TYPE
    payload = {"id": event.id, "type": kind, "created_at": data["created_at"], "data": data}
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
