"""Shapes shared by every domain: the success envelope, list pages, and common field checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Generic, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import Depends, Query
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)
from pydantic_core import PydanticCustomError

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


NUL_ERROR = "nul_character"
NUL_MESSAGE = "Недопустимый символ NUL (\\u0000)"


def _has_nul(value: Any) -> bool:
    """Whether any string in ``value`` (keys included) holds NUL: the quick look every body
    gets (strings checked in place, a call only per nested container)."""
    if type(value) is dict:
        if any(type(key) is str and "\x00" in key for key in value):
            return True
        inners: Any = value.values()
    elif type(value) is list:
        inners = value
    else:
        return isinstance(value, str) and "\x00" in value
    for inner in inners:
        kind = type(inner)
        if kind is str:
            if "\x00" in inner:
                return True
        elif (kind is dict or kind is list) and _has_nul(inner):
            return True
    return False


def nul_path(value: Any) -> str | None:
    """Where in ``value`` (a parsed JSON body) a string holds NUL, as a dotted path; None if
    nowhere. The path is "" for ``value`` itself."""
    if not _has_nul(value):
        return None
    if isinstance(value, str):
        return ""
    items: Any = value.items() if isinstance(value, dict) else enumerate(value)
    for key, inner in items:
        if isinstance(key, str) and "\x00" in key:
            return str(key).replace("\x00", "\\u0000")
        if (found := nul_path(inner)) is not None:
            return f"{key}.{found}" if found else str(key)
    return None


class RequestModel(BaseModel):
    """Base of request bodies: unknown fields are an error, so a typo never passes silently;
    no text holds NUL."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, coerce_numbers_to_str=True)
    nul_checked_elsewhere: ClassVar[frozenset[str]] = frozenset()
    """Fields whose parts another model checks one by one (an import's rows)."""

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        # PostgreSQL refuses NUL in text (a 500 there), SQLite stores it, mail and SMS peers
        # would cut the text at it: refused alike on both databases, naming the field
        # (errors.details_from_pydantic reads it from the error's context).
        if isinstance(data, dict) and cls.nul_checked_elsewhere:
            data_checked = {k: v for k, v in data.items() if k not in cls.nul_checked_elsewhere}
        else:
            data_checked = data
        if isinstance(data, dict) and (path := nul_path(data_checked)) is not None:
            raise PydanticCustomError(NUL_ERROR, NUL_MESSAGE, {"field": path})
        return data


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
