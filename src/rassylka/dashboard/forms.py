"""A dashboard form: read, its CSRF token checked, and turned into the API's own request
schema, so a form and the JSON API accept and refuse exactly the same input (with the same
Russian messages, shown beside the fields)."""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from rassylka.dashboard import session
from rassylka.errors import AppError, FieldError, Forbidden, details_from_pydantic

Model = TypeVar("Model", bound=BaseModel)


async def read(request: Request) -> dict[str, Any]:
    """The form's fields (a field given several times: the list of its values; the empty
    ones left out, as a JSON body would leave them out), once its ``csrf_token`` matches the
    browser's cookie; else ``Forbidden``."""
    form = await request.form()
    given = form.get(session.CSRF_FIELD)
    header = request.headers.get("x-csrf-token")
    token = given if isinstance(given, str) else header
    if not session.tokens_match(token, request.cookies.get(session.CSRF_COOKIE)):
        raise Forbidden.on(session.CSRF_FIELD, "Форма устарела: обновите страницу и повторите")
    fields: dict[str, Any] = {}
    for name in form:
        if name == session.CSRF_FIELD:
            continue
        values = [value for value in form.getlist(name) if value != ""]
        if not values:
            continue
        fields[name] = values if len(form.getlist(name)) > 1 or name.endswith("[]") else values[0]
    return {name.removesuffix("[]"): value for name, value in fields.items()}


def validate(schema: type[Model], data: dict[str, Any]) -> tuple[Model | None, list[FieldError]]:
    """``data`` as ``schema``, or the errors to show."""
    try:
        return schema.model_validate(data), []
    except ValidationError as error:
        return None, details_from_pydantic(
            {**item, "loc": ("body", *item.get("loc", ()))} for item in error.errors()
        )


def refused(error: AppError) -> list[FieldError]:
    """An operation's refusal (a duplicate code, a project not found…) as the form's errors."""
    return error.details or [FieldError(field="", message=error.message)]


def by_field(errors: list[FieldError]) -> dict[str, str]:
    """The first message for each field, for the template."""
    shown: dict[str, str] = {}
    for error in errors:
        shown.setdefault(error.field, error.message)
    return shown
