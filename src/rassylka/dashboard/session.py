"""The dashboard's login and its defence against cross-site requests.

A person logs in with an API key (``rassylka apikey create``); the key is kept in a cookie,
``HttpOnly`` (no script of the page reads it), ``SameSite=Strict`` (a browser sends it only
with requests from our own pages) and ``Secure`` when served over HTTPS. The cookie holds the
key itself, so revoking the key ends every session made with it at once, with nothing more to
store. ``AuthMiddleware`` takes the cookie as it takes ``Authorization: Bearer``.

Every change a browser sends (any method but GET/HEAD/OPTIONS) must also prove it comes from
our page, auth or not (with no keys, anyone on this machine may change things, but another
site in its browser may not): the double-submit token. A random ``rassylka_csrf`` cookie is
set with the first page; each form carries the same value in a hidden ``csrf_token`` field
(checked by the dashboard's routes), and the page's scripts send it as ``X-CSRF-Token`` (checked
by ``same_site`` for the JSON API). Another site can neither read our cookie nor set it, so it
cannot send the matching value. A request whose ``Origin`` is another host is refused as well.
"""

from __future__ import annotations

import hmac
import secrets
from http.cookies import SimpleCookie
from urllib.parse import quote, urlsplit

from starlette.types import Scope

KEY_COOKIE = "rassylka_key"
CSRF_COOKIE = "rassylka_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = b"x-csrf-token"
PREFIX = "/ui"
"""The dashboard's pages live under /ui/ (``/`` redirects there): the API owns the rest."""

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def cookie_value(header: bytes, name: str) -> str | None:
    """One cookie's value from a ``Cookie`` header (None: not there)."""
    try:
        morsel = SimpleCookie(header.decode("latin-1")).get(name)
    except Exception:  # a malformed cookie header: as if absent
        return None
    return morsel.value if morsel is not None and morsel.value else None


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def open_path(path: str) -> bool:
    """Dashboard paths answered without a key: the login page and the static files."""
    return path == f"{PREFIX}/login" or path.startswith(f"{PREFIX}/static/")


def page_path(path: str) -> bool:
    """A path a person opens in the browser: refused, it leads to the login page."""
    return path == "/" or path == PREFIX or path.startswith(f"{PREFIX}/")


def login_url(scope: Scope) -> str:
    """The login page, with the page asked for to come back to."""
    path = scope["path"]
    query = scope.get("query_string", b"").decode("latin-1")
    wanted = path + (f"?{query}" if query else "")
    return f"{PREFIX}/login?next={quote(wanted, safe='')}"


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path of this site only (never ``//other.host``)."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return f"{PREFIX}/"
    if "\\" in target or urlsplit(target).netloc:
        return f"{PREFIX}/"
    return target


def _header(scope: Scope, wanted: bytes) -> bytes | None:
    for name, value in scope["headers"]:
        if name == wanted:
            return bytes(value)
    return None


def foreign_origin(scope: Scope) -> bool:
    """Whether the request says it comes from a page of another host (``Origin``)."""
    origin = _header(scope, b"origin")
    host = _header(scope, b"host")
    if origin is None or host is None:
        return False
    return urlsplit(origin.decode("latin-1")).netloc.lower() != host.decode("latin-1").lower()


def tokens_match(given: str | None, cookie: str | None) -> bool:
    return bool(given) and bool(cookie) and hmac.compare_digest(str(given), str(cookie))


def same_site(scope: Scope) -> bool:
    """For a request authorised by the session cookie: a read, or a change that proves it was
    made by our page. A dashboard route (under /ui/) checks its form's ``csrf_token`` itself;
    any other path (the JSON API called by the page's scripts) needs ``X-CSRF-Token``."""
    if scope.get("method", "GET") in SAFE_METHODS:
        return True
    if foreign_origin(scope):
        return False
    if scope["path"].startswith(f"{PREFIX}/"):
        return True
    cookie_header = _header(scope, b"cookie")
    cookie = None if cookie_header is None else cookie_value(cookie_header, CSRF_COOKIE)
    given = _header(scope, CSRF_HEADER)
    return tokens_match(None if given is None else given.decode("latin-1"), cookie)
