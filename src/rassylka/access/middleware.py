"""The API's doors: ``AuthMiddleware`` (who calls, with which key) and
``RateLimitMiddleware`` (how often a caller may call). Both are plain ASGI: they sit in front
of ``POST /client/create`` at thousands of requests a second, and cost a header scan, a hash
and a dict lookup there."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from urllib.parse import parse_qsl

from starlette.responses import RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from rassylka.access.keyring import Caller, KeyRing
from rassylka.dashboard import session as dashboard_session
from rassylka.errors import error_response, unexpected

OPEN_PATHS = frozenset(
    {
        "/health",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/openapi.json",
        # The SMS provider's status and inbound callbacks: a provider can't send our Bearer
        # keys, so the endpoints check its own token (RASSYLKA_SMS_HTTP_CALLBACK_TOKEN,
        # ``?token=``).
        "/webhook/sms/status",
        "/webhook/sms/inbound",
    }
)
"""Paths answered without an API key (and outside the per-caller rate limit)."""
UNSUBSCRIBE_PREFIX = "/unsubscribe/"
"""Recipients' unsubscribe links: without an API key (the signed token in the path is the
credential), but within the per-address rate limit like the rest of the API."""


def _open(path: str) -> bool:
    return (
        path in OPEN_PATHS
        or path.startswith(UNSUBSCRIBE_PREFIX)
        or dashboard_session.open_path(path)
    )


def _stream_path(path: str) -> bool:
    """An event stream (``/events``, ``/mailing/{id}/events``): EventSource can't set
    headers, so these also take the key as ``?access_token=``."""
    return path == "/events" or (path.startswith("/mailing/") and path.endswith("/events"))


def _given_key(scope: Scope) -> tuple[str | None, bool]:
    """The key a request carries: ``Authorization: Bearer``, else ``X-API-Key``, else (a GET
    of an event stream) ``?access_token=``, else the dashboard's session cookie; and whether it
    came from the cookie (such a request is one a browser may send on another site's behalf,
    so a change must prove it comes from our page: ``dashboard.session``). A header given
    twice counts once, its first."""
    bearer: str | None = None
    header_key: str | None = None
    cookie: str | None = None
    for name, value in scope["headers"]:
        if name == b"authorization" and bearer is None:
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            bearer = credentials.strip() if scheme.lower() == "bearer" else ""
        elif name == b"x-api-key" and header_key is None:
            header_key = value.decode("latin-1").strip()
        elif name == b"cookie" and cookie is None:
            cookie = dashboard_session.cookie_value(value, dashboard_session.KEY_COOKIE)
    if bearer:
        return bearer, False
    if header_key:
        return header_key, False
    if scope.get("method") == "GET" and _stream_path(scope["path"]):
        for name, value in parse_qsl(scope.get("query_string", b"").decode("latin-1")):
            if name == "access_token" and value:
                return str(value), False
    if cookie:
        return cookie, True
    return None, False


def _by_address(scope: Scope) -> Caller:
    client = scope.get("client")
    return Caller(f"addr:{client[0] if client else 'unknown'}")


class AuthMiddleware:
    """With any API key in force (stored and not revoked, or in ``RASSYLKA_API_KEYS``), every
    request but those of ``OPEN_PATHS`` and the unsubscribe links carries one, else 403 in the
    manual's envelope. Puts the caller into the scope's state (``caller_id``,
    ``project_scope``, ``project_code``) for the rate limit, the idempotency records and the
    routers' project checks."""

    def __init__(self, app: ASGIApp, *, keyring: KeyRing) -> None:
        self.app = app
        self.keyring = keyring

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        caller: Caller | None
        path = scope["path"]
        if _open(path):
            caller = _by_address(scope)
        else:
            try:
                snapshot = await self.keyring.current()
            except Exception as error:  # no snapshot yet and the database away: 503
                await unexpected(error)(scope, receive, send)
                return
            if not snapshot.required:
                caller = _by_address(scope)
            else:
                given, from_cookie = _given_key(scope)
                caller = None if given is None else snapshot.find(given)
                if caller is None:
                    await _refuse(scope, receive, send)
                    return
                if from_cookie and not dashboard_session.same_site(scope):
                    await error_response(403)(scope, receive, send)
                    return
        state = scope.setdefault("state", {})
        state["caller_id"] = caller.caller_id
        state["project_scope"] = caller.project_id
        state["project_code"] = caller.project_code
        await self.app(scope, receive, send)


async def _refuse(scope: Scope, receive: Receive, send: Send) -> None:
    """403 in the manual's envelope, alone: what was sent is never echoed. (A WebSocket, which
    the API has none of today, is closed with 1008, policy violation.) A person reading a
    dashboard page is sent to its login instead."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    if scope.get("method") == "GET" and dashboard_session.page_path(scope["path"]):
        await RedirectResponse(dashboard_session.login_url(scope), 303)(scope, receive, send)
        return
    await error_response(403)(scope, receive, send)


class TokenBuckets:
    """A token bucket per caller: ``rate`` tokens a second, holding at most ``burst``. In one
    process: with N API processes a caller gets up to N times the rate."""

    # Buckets kept at most; past it, full ones (callers quiet for a while) are dropped.
    MAX_BUCKETS = 10_000

    def __init__(
        self, rate: float, burst: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, caller_id: str) -> float:
        """Take a token: 0 if there was one, else the seconds until there is."""
        now = self._clock()
        tokens, since = self._buckets.get(caller_id, (self.burst, now))
        tokens = min(self.burst, tokens + (now - since) * self.rate)
        if tokens < 1.0:
            self._buckets[caller_id] = (tokens, now)
            return (1.0 - tokens) / self.rate
        if len(self._buckets) >= self.MAX_BUCKETS and caller_id not in self._buckets:
            self._forget_full(now)
        self._buckets[caller_id] = (tokens - 1.0, now)
        return 0.0

    def _forget_full(self, now: float) -> None:
        for caller_id, (tokens, since) in list(self._buckets.items()):
            if tokens + (now - since) * self.rate >= self.burst:
                del self._buckets[caller_id]


class RateLimitMiddleware:
    """At most ``rate`` requests a second per caller (``caller_id`` set by ``AuthMiddleware``:
    each key, or each address when no key is needed), bursts up to ``burst``; over it, 429 with
    ``Retry-After``. ``rate`` 0: no limit (the middleware steps aside entirely)."""

    def __init__(self, app: ASGIApp, *, rate: float, burst: float) -> None:
        self.app = app
        self.buckets = TokenBuckets(rate, burst or rate) if rate > 0 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.buckets is None or scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        caller_id = scope.get("state", {}).get("caller_id") or _by_address(scope).caller_id
        wait = self.buckets.take(caller_id)
        if wait > 0:
            answer = error_response(429, headers={"Retry-After": str(max(1, math.ceil(wait)))})
            await answer(scope, receive, send)
            return
        await self.app(scope, receive, send)
