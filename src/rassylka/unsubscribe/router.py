"""``/unsubscribe/{token}``: the link every message carries (docs/deliverability.md).

Open without an API key (recipients have none) and without a CSRF token (RFC 8058's one-click
POST comes from the recipient's mail provider, cross-site by design; the signed token is what
authorises it). ``GET`` only shows a page with a button — mail scanners open links, and must
not unsubscribe anyone; ``POST`` unsubscribes: the one-click body
``List-Unsubscribe=One-Click`` gets a short text answer, the page's form a page. A token that
is not ours is 404: a page for a browser, the API's envelope for anything else. Not in the
API's OpenAPI schema: recipients call it, not the CRM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, PlainTextResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.exceptions import HTTPException

from rassylka.config import get_settings
from rassylka.errors import error_response
from rassylka.mailings.models import Channel
from rassylka.unsubscribe import service
from rassylka.unsubscribe.tokens import PATH, unsubscribe_of

router = APIRouter(include_in_schema=False)
_pages = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "html"),
    autoescape=select_autoescape(default=True),
)
CHANNEL_NAMES = {Channel.EMAIL: "электронная почта", Channel.SMS: "SMS"}
ONE_CLICK = "One-Click"
DONE = "Вы отписаны"
# Pages that hold a token are not kept by caches nor sent on as a Referer.
_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


@router.get(PATH + "{token}")
async def confirmation_page(token: str, request: Request) -> Response:
    """The page with the button; changes nothing."""
    sessionmaker = _sessionmaker(request)
    message_id = (await unsubscribe_of(get_settings(), sessionmaker)).message_id(token)
    target = None
    if message_id is not None:
        async with sessionmaker() as session:
            target = await service.target_of(session, message_id)
    if target is None:
        return _not_found(request)
    return _page(
        "confirm",
        "Отписка от рассылки",
        target,
        action=f"{PATH}{token.strip()}",
    )


@router.post(PATH + "{token}")
async def unsubscribe(token: str, request: Request) -> Response:
    """Unsubscribes (idempotent: a repeat answers the same and changes nothing)."""
    sessionmaker = _sessionmaker(request)
    message_id = (await unsubscribe_of(get_settings(), sessionmaker)).message_id(token)
    one_click = await _one_click(request)
    done = None
    if message_id is not None:
        source = service.SOURCE_ONE_CLICK if one_click else service.SOURCE_PAGE
        done = await service.unsubscribe(sessionmaker, message_id=message_id, source=source)
    if done is None:
        return _not_found(request)
    if one_click:
        return PlainTextResponse(DONE, headers=_HEADERS)
    return _page("done", DONE, done[0])


async def _one_click(request: Request) -> bool:
    """Whether the body is RFC 8058's ``List-Unsubscribe=One-Click`` (urlencoded or
    multipart); anything else is the page's form, or a person's client."""
    try:
        form = await request.form()
    except HTTPException as error:  # a broken multipart body: not one-click
        if error.status_code != 400:
            raise  # 413 from the body limit, for one
        return False
    return str(form.get("List-Unsubscribe", "")).strip().lower() == ONE_CLICK.lower()


def _sessionmaker(request: Request) -> async_sessionmaker[AsyncSession]:
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    return sessionmaker


def _page(
    state: str,
    title: str,
    target: service.Target | None,
    *,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    shown = {}
    if target is not None:
        shown = {
            "project": target.project_name,
            "channel": CHANNEL_NAMES[target.channel],
            "address": service.masked(target.address),
        }
    html = _pages.get_template("page.html").render(state=state, title=title, **shown, **context)
    return HTMLResponse(html, status_code=status, headers=_HEADERS)


def _not_found(request: Request) -> Response:
    if "text/html" in request.headers.get("accept", ""):
        return _page("unknown", "Ссылка недействительна", None, status=404)
    return error_response(404)
