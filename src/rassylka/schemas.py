"""Shapes shared by every domain: the success envelope, list pages, and common field checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import Depends, Query
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

from rassylka.errors import ValidationFailed

T = TypeVar("T")
MAX_ID = 2**63 - 1
EntityId = Annotated[int, Field(ge=1, le=MAX_ID)]


class Envelope(BaseModel, Generic[T]):
    """The manual's success response ``{"status": 201, "message": "Ok"}``, plus ``data``."""

    status: int = 201
    message: str = "Ok"
    data: T


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


NUL_MESSAGE = "Текст не может содержать символ NUL (\\u0000)"


def holds_nul(value: Any) -> bool:
    """Whether a string anywhere in ``value`` (a JSON value) holds NUL, which PostgreSQL can
    store in neither text nor jsonb: refused at the door on every database alike."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(holds_nul(key) or holds_nul(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return any(holds_nul(item) for item in value)
    return False


class RequestModel(BaseModel):
    """Base of request bodies: unknown fields are an error, so a typo never passes silently;
    no text holds NUL."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, coerce_numbers_to_str=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        if holds_nul(value):
            raise ValueError(NUL_MESSAGE)
        return value


class UpdateModel(RequestModel):
    """Base of ``/{entity}/{id}/update`` bodies: the manual's ``"primary key"``, if given, is
    the id of the path."""

    primary_key: EntityId | None = Field(
        default=None,
        alias="primary key",
        description="Первичный ключ; если указан, должен совпадать с {id} в пути",
        examples=[74892489],
    )

    def check_path_id(self, path_id: int) -> None:
        if self.primary_key is not None and self.primary_key != path_id:
            raise ValidationFailed.on(
                "primary key", f"Не совпадает с идентификатором в пути ({path_id})"
            )


class ReadModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


def ok(data: Any, status: int = 201) -> dict[str, Any]:
    return {"status": status, "message": "Ok", "data": data}


def _check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"Неизвестный часовой пояс «{value}» (ожидается имя IANA, например Europe/Moscow)"
        ) from None
    return value


Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]
TimeZoneName = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=64), AfterValidator(_check_timezone)
]


@dataclass(frozen=True)
class PageParams:
    limit: int
    offset: int

    def of(self, items: list[T], total: int) -> Page[T]:
        return Page(items=items, total=total, limit=self.limit, offset=self.offset)


def _page_params(
    limit: Annotated[int, Query(ge=1, le=1000, description="Сколько записей вернуть")] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ID, description="Сколько записей пропустить")] = 0,
) -> PageParams:
    return PageParams(limit=limit, offset=offset)


PageDep = Annotated[PageParams, Depends(_page_params)]
