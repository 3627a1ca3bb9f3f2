"""Who a mailing goes to: the project's clients, narrowed by tags and attribute values.

The materialiser turns an audience into SQL (``messages.repository``); this is its request
shape. Empty or absent filters narrow nothing, so ``{}`` (or no audience) means every client.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BeforeValidator, ConfigDict, Field

from rassylka.clients.schemas import Tags
from rassylka.schemas import RequestModel

MAX_ATTRIBUTES = 100
MAX_ATTRIBUTE_NAME = 255


def _scalar(value: Any) -> Any:
    """A string, a number or a boolean: an attribute is compared by equality, as JSON."""
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("Число должно быть конечным")
        return value
    raise ValueError("Значение атрибута — строка, число или true/false")


AttributeValue = Annotated[str | int | float | bool, BeforeValidator(_scalar)]


def _check_names(attributes: Any) -> Any:
    """Non-empty names (trimmed afterwards, as a client's are), and not too many of them."""
    if not isinstance(attributes, dict):
        return attributes  # None, or what the dict validation then refuses
    if len(attributes) > MAX_ATTRIBUTES:
        raise ValueError(f"Не больше {MAX_ATTRIBUTES} атрибутов")
    for name in attributes:
        if not isinstance(name, str) or not name.strip():
            raise ValueError("Имя атрибута не может быть пустым")
        if len(name) > MAX_ATTRIBUTE_NAME:
            raise ValueError(f"Имя атрибута не длиннее {MAX_ATTRIBUTE_NAME} символов")
    return attributes


class Audience(RequestModel):
    """Clients who carry any of ``tags_any``, all of ``tags_all`` and every attribute value
    of ``attributes`` (all three must hold)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "tags_any": ["vip", "new"],
                    "tags_all": ["moscow"],
                    "attributes": {"city": "Москва", "orders": 3, "subscribed": True},
                }
            ]
        }
    )

    tags_any: Tags | None = Field(
        default=None, description="Клиенты хотя бы с одним из тегов; пусто — без ограничения"
    )
    tags_all: Tags | None = Field(
        default=None, description="Клиенты со всеми тегами; пусто — без ограничения"
    )
    attributes: Annotated[dict[str, AttributeValue] | None, BeforeValidator(_check_names)] = Field(
        default=None,
        description=(
            "Атрибуты клиента, равные заданным значениям. Тип сравнивается как в JSON:"
            ' 3 совпадает с 3 и 3.0, но не со строкой "3"; true — только с true'
        ),
    )
