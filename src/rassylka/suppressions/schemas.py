"""Request and response bodies of the suppression endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field, StringConstraints

from rassylka.clients.schemas import normalize_email, normalize_phone
from rassylka.schemas import EntityId, ReadModel, RequestModel

MAX_REASON = 1000


def normalize_address(value: str) -> str:
    """An email (with ``@``) or a phone, in the form clients' contacts are stored in, so the
    materialiser can match them by equality."""
    if "@" in value:
        # Lower-cased whole: mailboxes differ by case in theory only, and a do-not-send list
        # must not miss Ivan@ because it holds ivan@ (matched against lower(email)).
        return normalize_email(value).lower()
    try:
        return normalize_phone(value)
    except ValueError:
        raise ValueError(
            f"Некорректный адрес «{value}»: ожидается email или номер телефона"
        ) from None


def _empty_is_none(value: object) -> object:
    if isinstance(value, str) and not value.strip():
        return None
    return value


Address = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=320),
    AfterValidator(normalize_address),
]
ReasonText = Annotated[str, StringConstraints(strip_whitespace=True, max_length=MAX_REASON)]
Reason = Annotated[ReasonText | None, BeforeValidator(_empty_is_none)]


class SuppressionCreate(RequestModel):
    project: str | EntityId = Field(
        description="Код проекта (или его числовой id)", examples=["ОСМ"]
    )
    address: Address = Field(
        description="Email или телефон; приводится к виду, в котором хранятся контакты клиентов",
        examples=["ivan@example.com", "+79161234567"],
    )
    reason: Reason = Field(
        default=None,
        description="Почему адрес в списке: попадает в причину пропущенных сообщений",
        examples=["Жалоба на спам"],
    )


class SuppressionRead(ReadModel):
    id: int
    project_id: int
    address: str
    reason: str | None
    created_at: datetime
