"""Rendering a dashboard page: Jinja2 (autoescaped) with what every page needs — the CSRF
token of the double-submit (``session``), whether a key is in use, and the one project a
project-scoped key sees."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.templating import Jinja2Templates

from rassylka.access import scope
from rassylka.dashboard import session
from rassylka.errors import MESSAGES, AppError, FieldError, details_from_pydantic

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "html")


def page(request: Request, name: str, *, status: int = 200, **context: Any) -> Response:
    """The page ``name`` (a file in html/) rendered with ``context``; a browser's first page
    also sets its CSRF cookie."""
    given = request.cookies.get(session.CSRF_COOKIE)
    token = given or session.new_csrf_token()
    response = templates.TemplateResponse(
        request,
        name,
        {
            "csrf_token": token,
            "csrf_field": session.CSRF_FIELD,
            "signed_in": request.cookies.get(session.KEY_COOKIE) is not None,
            "project_scope": scope.project_scope(request),
            **context,
        },
        status_code=status,
    )
    if not given:
        set_cookie(request, response, session.CSRF_COOKIE, token)
    return response


def set_cookie(request: Request, response: Response, name: str, value: str) -> None:
    """A cookie only our pages' requests carry, that no script reads, and over HTTPS only
    when the page was served over HTTPS."""
    response.set_cookie(
        name,
        value,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )


def error_page(request: Request, status: int, details: list[FieldError], message: str) -> Response:
    return page(
        request, "error.html", status=status, error_status=status, message=message, details=details
    )


class PageRoute(APIRoute):
    """A dashboard route: its errors are a page in the dashboard's frame, not the API's JSON
    envelope (same status, same messages)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except AppError as error:
                return error_page(request, error.status_code, error.details, error.message)
            except RequestValidationError as error:
                errors = error.errors()
                if errors and all(item.get("loc", ("",))[0] == "path" for item in errors):
                    return error_page(request, 404, [], MESSAGES[404])
                return error_page(request, 400, details_from_pydantic(errors), MESSAGES[400])

        return answer
