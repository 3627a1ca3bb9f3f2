"""The dashboard's login and CSRF defence (dashboard/session.py), over plain HTTP: what a
browser on another site could send, and what it gets."""

from __future__ import annotations

import httpx
import pytest

from conftest import StartServer
from rassylka.dashboard import session

KEY = "dashboard-test-key"


async def _logged_in(client: httpx.AsyncClient) -> str:
    """Log ``client`` in with KEY; its CSRF token."""
    login = await client.get("/ui/login")
    assert login.status_code == 200
    token = client.cookies[session.CSRF_COOKIE]
    answer = await client.post("/ui/login", data={"csrf_token": token, "key": KEY, "next": "/ui/"})
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/ui/"
    assert client.cookies[session.KEY_COOKIE] == KEY
    return token


async def test_pages_lead_to_the_login_and_the_api_stays_json(start_server: StartServer) -> None:
    server = await start_server(api_keys=[KEY])
    async with httpx.AsyncClient(base_url=server.url) as client:
        page = await client.get("/ui/project/3", params={"x": "1"})
        assert page.status_code == 303
        assert page.headers["location"] == "/ui/login?next=%2Fui%2Fproject%2F3%3Fx%3D1"
        assert (await client.get("/")).headers["location"] == "/ui/login?next=%2F"
        assert (await client.get("/ui/static/dashboard.css")).status_code == 200
        api = await client.get("/project/1")
        assert api.status_code == 403
        assert api.json()["error"]["status"] == 403


async def test_a_cookie_alone_changes_nothing(start_server: StartServer) -> None:
    server = await start_server(api_keys=[KEY])
    async with httpx.AsyncClient(base_url=server.url) as client:
        token = await _logged_in(client)
        assert (await client.get("/ui/")).status_code == 200
        body = {"name": "OCM", "code": "010"}
        # The JSON API with the cookie: a read is fine, a change needs the token's header.
        assert (await client.get("/project/list")).status_code in (200, 404)
        assert (await client.post("/project/create", json=body)).status_code == 403
        wrong = await client.post("/project/create", json=body, headers={"X-CSRF-Token": "x"})
        assert wrong.status_code == 403
        foreign = await client.post(
            "/project/create",
            json=body,
            headers={"X-CSRF-Token": token, "Origin": "https://evil.example"},
        )
        assert foreign.status_code == 403
        made = await client.post("/project/create", json=body, headers={"X-CSRF-Token": token})
        assert made.status_code == 201
        # A dashboard form without its token, or from another site's page: refused.
        form = {"name": "Другой", "code": "011"}
        assert (await client.post("/ui/projects", data=form)).status_code == 403
        from_elsewhere = await client.post(
            "/ui/projects",
            data={**form, "csrf_token": token},
            headers={"Origin": "https://evil.example"},
        )
        assert from_elsewhere.status_code == 403
        assert (
            await client.post("/ui/projects", data={**form, "csrf_token": token})
        ).status_code == 303


async def test_a_wrong_key_and_a_revoked_session(start_server: StartServer) -> None:
    server = await start_server(api_keys=[KEY])
    async with httpx.AsyncClient(base_url=server.url) as client:
        await client.get("/ui/login")
        token = client.cookies[session.CSRF_COOKIE]
        refused = await client.post("/ui/login", data={"csrf_token": token, "key": "guess"})
        assert refused.status_code == 403
        assert "Ключ не подходит" in refused.text
        assert session.KEY_COOKIE not in client.cookies
        # A cookie holding a key that is not (or no longer) valid: back to the login.
        client.cookies.set(session.KEY_COOKIE, "not-a-key")
        assert (await client.get("/ui/")).status_code == 303


@pytest.mark.parametrize(
    ("target", "where"),
    [
        (None, "/ui/"),
        ("/ui/project/1", "/ui/project/1"),
        ("//evil.example/x", "/ui/"),
        ("https://evil.example/", "/ui/"),
        ("/\\evil.example", "/ui/"),
        ("ui/project", "/ui/"),
    ],
)
def test_after_the_login_only_a_page_of_this_site(target: str | None, where: str) -> None:
    assert session.safe_next(target) == where


async def test_without_keys_the_forms_still_need_their_token(start_server: StartServer) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.get("/ui/")).status_code == 200
        token = client.cookies[session.CSRF_COOKIE]
        form = {"name": "OCM", "code": "010"}
        assert (await client.post("/ui/projects", data=form)).status_code == 403
        made = await client.post("/ui/projects", data={**form, "csrf_token": token})
        assert made.status_code == 303
        # Logging in needs no key then: the form goes straight on.
        login = await client.post("/ui/login", data={"csrf_token": token, "next": "/ui/"})
        assert login.headers["location"] == "/ui/"
