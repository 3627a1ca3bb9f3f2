"""Domain errors and the manual's error envelope, used for every error the server produces.

    AppError                 (500) «Внутренняя ошибка сервера»
    ├── ValidationFailed     (400) «Ошибка валидации», with per-field details
    ├── Forbidden            (403) «Доступ запрещен»
    ├── NotFound             (404) «Страница не найдена»
    ├── Conflict             (409) «Конфликт: запись уже существует»
    ├── PayloadTooLarge      (413) «Слишком большой запрос»
    └── TooManyRequests      (429) «Слишком много запросов»

Envelope: ``{"code": N, "error": {"message": "...", "status": N, "details": [...]}}``;
``details`` (a list of ``{"field", "message"}``) is present only when there is something to say.

A database that cannot be reached (down, restarting, every pooled connection busy) is 503
«Сервис недоступен» with ``Retry-After``, whatever the endpoint (``database_unavailable``).
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import exc as sqlalchemy_errors
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

MESSAGES: dict[int, str] = {
    400: "Ошибка валидации",
    401: "Доступ запрещен",
    403: "Доступ запрещен",
    404: "Страница не найдена",
    405: "Метод не поддерживается",
    409: "Конфликт: запись уже существует",
    413: "Слишком большой запрос",
    415: "Неподдерживаемый тип содержимого",
    429: "Слишком много запросов",
    500: "Внутренняя ошибка сервера",
    503: "Сервис недоступен",
}


class FieldError(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    message: str
    status: int
    details: list[FieldError] | None = None


class ErrorEnvelope(BaseModel):
    """The manual's error response (§3.1.3–3.1.6)."""

    code: int
    error: ErrorBody


class AppError(Exception):
    status_code = 500

    def __init__(self, details: Iterable[FieldError] | None = None, *, message: str | None = None):
        self.details = list(details) if details else []
        self.message = message or MESSAGES.get(self.status_code, MESSAGES[500])
        super().__init__(self.message, self.details)

    @classmethod
    def on(cls, field: str, message: str) -> AppError:
        return cls([FieldError(field=field, message=message)])


class ValidationFailed(AppError):
    status_code = 400


class Forbidden(AppError):
    status_code = 403


class NotFound(AppError):
    status_code = 404


class Conflict(AppError):
    status_code = 409


class PayloadTooLarge(AppError):
    status_code = 413


class TooManyRequests(AppError):
    status_code = 429


def envelope(status: int, details: Sequence[FieldError] = (), message: str | None = None) -> Any:
    error: dict[str, Any] = {"message": message or MESSAGES.get(status, MESSAGES[500])}
    error["status"] = status
    if details:
        error["details"] = [detail.model_dump() for detail in details]
    return {"code": status, "error": error}


def error_response(
    status: int,
    details: Sequence[FieldError] = (),
    *,
    message: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(envelope(status, details, message), status_code=status, headers=headers)


# -- pydantic's errors, said in the manual's language ------------------------------------------

_PLAIN: dict[str, str] = {
    "missing": "Обязательное поле",
    "extra_forbidden": "Неизвестное поле",
    "string_type": "Ожидается строка",
    "int_type": "Ожидается целое число",
    "int_parsing": "Ожидается целое число",
    "int_from_float": "Ожидается целое число",
    "float_type": "Ожидается число",
    "float_parsing": "Ожидается число",
    "bool_type": "Ожидается true или false",
    "bool_parsing": "Ожидается true или false",
    "list_type": "Ожидается список",
    "dict_type": "Ожидается объект JSON",
    "model_type": "Ожидается объект JSON",
    "model_attributes_type": "Ожидается объект JSON",
    "date_type": "Ожидается дата ГГГГ-ММ-ДД",
    "date_parsing": "Ожидается дата ГГГГ-ММ-ДД",
    "date_from_datetime_parsing": "Ожидается дата ГГГГ-ММ-ДД или дата-время ISO 8601",
    "datetime_type": "Ожидается дата-время ISO 8601",
    "datetime_parsing": "Ожидается дата-время ISO 8601",
    "datetime_from_date_parsing": "Ожидается дата-время ISO 8601",
    "time_parsing": "Ожидается время ЧЧ:ММ",
    "time_type": "Ожидается время ЧЧ:ММ",
    "string_pattern_mismatch": "Значение не соответствует формату",
    "union_tag_invalid": "Недопустимое значение",
    "url_parsing": "Ожидается URL",
    "url_scheme": "Ожидается URL со схемой http или https",
}


def _russian(error: Mapping[str, Any]) -> str:
    kind = error.get("type", "")
    ctx = error.get("ctx") or {}
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])
    if kind == "assertion_error" and "error" in ctx:
        return str(ctx["error"])
    if kind == "json_invalid":
        return f"Некорректный JSON: {ctx.get('error', 'ошибка разбора')}"
    if kind == "string_too_short":
        if ctx.get("min_length") == 1:
            return "Значение не может быть пустым"
        return f"Не короче {ctx.get('min_length')} символов"
    if kind == "string_too_long":
        return f"Не длиннее {ctx.get('max_length')} символов"
    if kind == "too_short":
        return f"Не меньше {ctx.get('min_length')} элементов"
    if kind == "too_long":
        return f"Не больше {ctx.get('max_length')} элементов"
    if kind in {"greater_than_equal", "greater_than", "less_than_equal", "less_than"}:
        sign = {"greater_than_equal": "≥", "greater_than": ">", "less_than_equal": "≤"}.get(
            kind, "<"
        )
        limit = next(iter(ctx.values()), "")
        return f"Значение должно быть {sign} {limit}"
    if kind in {"enum", "literal_error"}:
        return f"Допустимые значения: {ctx.get('expected', '')}"
    return _PLAIN.get(kind, str(error.get("msg", "Недопустимое значение")))


def _field(location: Sequence[Any]) -> str:
    parts = [str(part) for part in location]
    if parts and parts[0] in {"body", "query", "path", "header", "form"}:
        parts = parts[1:]
    if parts and parts[0].startswith("function-"):  # a before-validator's wrapper name
        parts = parts[1:]
    return ".".join(parts) or "body"


def details_from_pydantic(errors: Iterable[Any]) -> list[FieldError]:
    seen: set[tuple[str, str]] = set()
    details: list[FieldError] = []
    for error in errors:
        location = list(error.get("loc", ()))
        if error.get("type") == "json_invalid":
            location = ["body"]
        elif error.get("type") == "nul_character":  # schemas.RequestModel: the path is in ctx
            location += str((error.get("ctx") or {}).get("field", "")).split(".")
        field = _field(location)
        message = _russian(error)
        if (field, message) not in seen:
            seen.add((field, message))
            details.append(FieldError(field=field, message=message))
    return details


# -- handlers --------------------------------------------------------------------------------


async def _app_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return error_response(exc.status_code, exc.details, message=exc.message)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if errors and all(error.get("loc", ("",))[0] == "path" for error in errors):
        return error_response(404)  # /project/abc names no page, it is not a bad request
    return error_response(400, details_from_pydantic(errors))


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    if status == 422:  # never FastAPI's 422: validation is 400 here
        status = 400
    details: list[FieldError] = []
    if status == 400 and isinstance(exc.detail, str) and exc.detail not in MESSAGES.values():
        details.append(FieldError(field="body", message=_body_detail(exc.detail)))
    return error_response(status, details, headers=getattr(exc, "headers", None))


def _body_detail(detail: str) -> str:
    if "parsing the body" in detail:
        return "Не удалось прочитать тело запроса"
    return detail


async def _unhandled(_request: Request, exc: Exception) -> JSONResponse:
    return unexpected(exc)


def unexpected(exc: BaseException) -> JSONResponse:
    """The answer to an error no handler knows: 503 if the database is away, else 500."""
    if database_unavailable(exc):
        # Not a fault of the request nor of the code: the CRM retries, the operator sees one
        # line per request (not a traceback) while the database is down or restarting.
        logger.warning("database unavailable: %s", _first_line(exc))
        return error_response(503, headers={"Retry-After": "1"})
    if (refused := _refused_value(exc)) is not None:
        # A value the schemas let through but the database refuses (PostgreSQL: NUL in a
        # query parameter, a number out of range): the request's fault, never a 500.
        logger.warning("value refused by the database: %s", _first_line(refused))
        return error_response(
            400, [FieldError(field="body", message="Недопустимое значение для базы данных")]
        )
    # Logged with its traceback for the operator; the client sees only the envelope.
    logger.error("unhandled error", exc_info=exc)
    return error_response(500)


# Network errors of a connection to the database server (refused while it is down, reset when
# it restarts, no route): the server is away, not the request wrong.
_NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ETIMEDOUT,
    }
)
_SERVER_AWAY = (
    ConnectionError,
    TimeoutError,
    socket.gaierror,
    sqlalchemy_errors.TimeoutError,  # every pooled connection busy for pool_timeout
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08: connection failure, lost
    asyncpg.CannotConnectNowError,  # starting up or shutting down
    asyncpg.AdminShutdownError,  # stopped or restarted under us
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
)


_DATABASE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    sqlalchemy_errors.SQLAlchemyError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) says the database server cannot be reached now: 503,
    try again, rather than 500."""
    for current in _chain(exc):
        if isinstance(current, _SERVER_AWAY):
            return True
        if isinstance(current, OSError) and current.errno in _NETWORK_ERRNOS:
            return True
        if isinstance(current, sqlalchemy_errors.DBAPIError) and current.connection_invalidated:
            return True
    return False


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps: a driver's error under SQLAlchemy's (``.orig``), else the
    cause or context, each once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        wrapped = getattr(current, "orig", None)
        current = (
            wrapped
            if isinstance(wrapped, BaseException)
            else (current.__cause__ or current.__context__)
        )


def _refused_value(exc: BaseException) -> BaseException | None:
    """The database's "data exception" (SQLSTATE class 22) in ``exc``'s chain, if any."""
    for current in _chain(exc):
        if isinstance(current, sqlalchemy_errors.DataError | asyncpg.DataError):
            return current
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    # The errors of a database that went away, by class, so that they are answered inside the
    # app: Starlette answers the catch-all (Exception) in its outermost middleware and then
    # raises the error again, and the server logs its traceback — for every request while
    # the database is down. (Other errors of these classes are a 500, logged once.)
    for database_error in _DATABASE_ERRORS:
        app.add_exception_handler(database_error, _unhandled)
    app.add_exception_handler(Exception, _unhandled)


def openapi_error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of an operation: each error code with the envelope schema."""
    return {
        code: {"model": ErrorEnvelope, "description": MESSAGES.get(code, MESSAGES[500])}
        for code in codes
    }
