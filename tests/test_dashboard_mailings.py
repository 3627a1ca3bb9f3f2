"""The dashboard's mailing pages over plain HTTP: the form's errors beside its fields, the
lifecycle's buttons, the live page's first render, CSRF, and a project key's scope. (The live
updates are in tests/browser/test_dashboard_mailings.py.)"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from conftest import StartServer, StartWorker
from helpers import assert_ok, make_project, make_template
from rassylka.access import service as key_service
from rassylka.db import create_sessionmaker
from test_dispatcher import until

FORM = {
    "name": "Осенняя",
    "channels": "email",
    "when": "now",
    "timezone": "Europe/Moscow",
    "start": "0",
}


class Browser:
    """A client that keeps the dashboard's cookies and fills in the CSRF field like a form."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def get(self, path: str) -> httpx.Response:
        return await self.client.get(path)

    async def post(self, path: str, data: dict[str, Any] | list[tuple[str, str]]) -> httpx.Response:
        if not self.client.cookies.get("rassylka_csrf"):
            await self.client.get("/ui/login")
        token = self.client.cookies["rassylka_csrf"]
        items = list(data.items()) if isinstance(data, dict) else list(data)
        form: dict[str, list[str]] = {"csrf_token": [token]}
        for name, value in items:
            form.setdefault(name, []).append(value)
        return await self.client.post(path, data=form)


@pytest.fixture
async def browser(api: httpx.AsyncClient) -> AsyncIterator[Browser]:
    async with httpx.AsyncClient(base_url=str(api.base_url), timeout=30) as client:
        yield Browser(client)


def mailing_id_of(response: httpx.Response) -> int:
    assert response.status_code == 303, response.text
    found = re.fullmatch(r"/ui/mailing/(\d+)", response.headers["location"])
    assert found, response.headers["location"]
    return int(found.group(1))


def buttons(html: str) -> set[str]:
    """The lifecycle's forms that are shown (not ``hidden``)."""
    return {
        match.group(1)
        for match in re.finditer(r'<form [^>]*data-action="(\w+)"(?![^>]*hidden)[^>]*>', html)
    }


async def test_the_form_says_what_is_wrong_beside_each_field(
    api: httpx.AsyncClient, browser: Browser
) -> None:
    project = await make_project(api)
    sms_only = await make_template(api, project, sms_text="Привет")
    page = await browser.get(f"/ui/project/{project}/mailings/new")
    assert page.status_code == 200
    assert f'<option value="{sms_only}"' in page.text
    assert 'value="UTC"' in page.text  # the server's zone, preselected

    wrong = await browser.post(
        f"/ui/project/{project}/mailings",
        [
            ("name", "Осенняя"),
            ("when", "event"),
            ("timezone", "Mars/Olympus"),
            ("window_start", "25:00"),
            ("window_end", "21:00"),
        ],
    )
    assert wrong.status_code == 400
    text = wrong.text
    assert 'id="e-event"' in text
    assert "Укажите дату и время отправки" in text
    assert 'id="e-cron"' not in text
    # What was typed stays.
    assert 'value="Осенняя"' in text
    assert 'value="Mars/Olympus"' in text

    # The form's own checks passed: the schema's, on the form's fields.
    wrong = await browser.post(
        f"/ui/project/{project}/mailings",
        [
            ("name", "Осенняя"),
            ("when", "now"),
            ("timezone", "Mars/Olympus"),
            ("tags_any", "vip, " + "x" * 70),
        ],
    )
    assert wrong.status_code == 400
    assert re.search(r'id="e-timezone">Неизвестный часовой пояс «Mars/Olympus»', wrong.text)
    assert re.search(r'id="e-channels">Укажите хотя бы один канал', wrong.text)
    assert re.search(r'id="e-template_id">Обязательное поле', wrong.text)
    assert 'id="e-tags_any"' in wrong.text

    wrong = await browser.post(
        f"/ui/project/{project}/mailings",
        {
            **FORM,
            "template_id": str(sms_only),
            "channels": "sms",
            "window_start": "25:00",
            "window_end": "21:00",
        },
    )
    assert wrong.status_code == 400
    assert 'id="e-window_start"' in wrong.text

    # The service's refusals: the template has no email; a cron that is not one.
    wrong = await browser.post(
        f"/ui/project/{project}/mailings", {**FORM, "template_id": str(sms_only)}
    )
    assert wrong.status_code == 400
    assert re.search(r'id="e-channels">Канал email: в шаблоне \d+ нет письма', wrong.text)
    wrong = await browser.post(
        f"/ui/project/{project}/mailings",
        {
            **FORM,
            "template_id": str(sms_only),
            "channels": "sms",
            "when": "schedule",
            "cron": "every day",
        },
    )
    assert wrong.status_code == 400
    assert 'id="e-cron"' in wrong.text
    assert 'value="every day"' in wrong.text

    created = await browser.post(
        f"/ui/project/{project}/mailings",
        {
            **FORM,
            "template_id": str(sms_only),
            "channels": "sms",
            "when": "schedule",
            "cron": "0 10 * * 1-5",
            "window_start": "09:00",
            "window_end": "21:00",
            "tags_all": "vip, moscow",
        },
    )
    mailing = assert_ok(await api.get(f"/mailing/{mailing_id_of(created)}"), 200)
    assert mailing["status"] == 0
    assert mailing["channels"] == [2]
    assert mailing["schedule"]["cron"] == "0 10 * * 1-5"
    assert mailing["timezone"] == "Europe/Moscow"
    assert mailing["send_window"]["start"] == "09:00"
    assert mailing["audience"] == {"tags_all": ["vip", "moscow"]}


async def test_the_list_and_the_buttons_follow_the_lifecycle(
    api: httpx.AsyncClient, browser: Browser
) -> None:
    project = await make_project(api)
    template = await make_template(api, project)
    created = await browser.post(
        f"/ui/project/{project}/mailings",
        {**FORM, "template_id": str(template), "when": "event", "event": "2099-01-02T10:00"},
    )
    mailing = mailing_id_of(created)
    listed = await browser.get(f"/ui/project/{project}/mailings")
    assert listed.status_code == 200
    assert "Осенняя" in listed.text
    assert "черновик" in listed.text
    assert buttons(listed.text) == {"start", "cancel"}

    back = f"/ui/project/{project}/mailings"
    moves = [
        ("start", 1, {"pause", "cancel"}),
        ("pause", 2, {"resume", "cancel"}),
        ("resume", 1, {"pause", "cancel"}),
        ("cancel", 4, set()),
    ]
    for action, status, shown in moves:
        answer = await browser.post(f"/ui/mailing/{mailing}/{action}", {"next": back})
        assert answer.status_code == 303
        assert answer.headers["location"] == back
        assert assert_ok(await api.get(f"/mailing/{mailing}"), 200)["status"] == status
        live = await browser.get(f"/ui/mailing/{mailing}")
        assert live.status_code == 200
        assert buttons(live.text) == shown

    # No longer legal: the lifecycle's own refusal, as a page.
    refused = await browser.post(f"/ui/mailing/{mailing}/start", {"next": back})
    assert refused.status_code == 409
    assert "Нельзя запустить рассылку" in refused.text
    # An action that does not exist; a form without its CSRF token.
    assert (await browser.post(f"/ui/mailing/{mailing}/explode", {})).status_code == 404
    forged = await browser.client.post(f"/ui/mailing/{mailing}/cancel", data={"next": back})
    assert forged.status_code == 403
    # The live page of a mailing that does not exist.
    assert (await browser.get("/ui/mailing/999999")).status_code == 404


async def test_the_live_page_starts_with_the_numbers_and_the_stream_cursor(
    api: httpx.AsyncClient, browser: Browser, start_worker: StartWorker
) -> None:
    project = await make_project(api)
    template = await make_template(api, project)
    for guid, address in (("anna", "anna@example.ru"), ("nobody", "never@example.ru")):
        client = {
            "project": project,
            "guid": guid,
            "first_name": "А",
            "last_name": "Б",
            "email": address,
        }
        assert_ok(await api.post("/client/create", json=client))
    created = await browser.post(
        f"/ui/project/{project}/mailings", {**FORM, "template_id": str(template), "start": "1"}
    )
    mailing = mailing_id_of(created)
    await start_worker()

    async def settled() -> bool:
        stats = assert_ok(await api.get(f"/mailing/{mailing}/stats"), 200)
        return stats["total"]["by_status"] == {"sent": 1, "failed": 1}

    await until(settled)
    page = await browser.get(f"/ui/mailing/{mailing}")
    assert page.status_code == 200
    found = re.search(
        r'<script type="application/json" id="mailing-live">(.*?)</script>', page.text
    )
    assert found
    live = httpx.Response(200, content=found.group(1)).json()
    assert live["mailing_id"] == mailing
    assert live["status"] in (1, 3)  # completed once the engine has looked
    assert live["stats"]["total"]["by_status"] == {"sent": 1, "failed": 1}
    # The stream resumes after the newest event, and the two events are already on the page.
    events = re.findall(r'<li data-event-id="(\d+)">', page.text)
    assert len(events) == 2
    assert live["cursor"] >= max(int(event) for event in events)
    assert int(events[0]) > int(events[1])  # newest first
    assert re.search(r'<tr data-channel="all">.*?data-status="sent">1<', page.text, re.S)
    assert "never@example.ru" in page.text
    assert "550 5.1.1 No such user here" in page.text
    assert 'id="stream-state" class="stream-state" role="status"' in page.text
    # The list counts them too.
    listed = await browser.get(f"/ui/project/{project}/mailings")
    assert re.search(
        r'class="num">2</td>\s*<td class="num">1</td>\s*<td class="num">1</td>', listed.text
    )
    # The script and style it names are served.
    assert (await browser.get("/ui/static/mailing.js")).status_code == 200
    assert (await browser.get("/ui/static/mailing.css")).status_code == 200


async def test_a_project_key_sees_only_its_own_mailings(
    start_server: StartServer, engine: AsyncEngine
) -> None:
    server = await start_server(api_keys=["global-key"])
    admin_headers = {"Authorization": "Bearer global-key"}
    async with httpx.AsyncClient(base_url=server.url, headers=admin_headers) as admin:
        projects = {
            code: await make_project(admin, code=code, name=code) for code in ("AAA", "BBB")
        }
        mailings = {}
        for code, project in projects.items():
            template = await make_template(admin, project)
            body = {
                "name": "M",
                "project_id": project,
                "template_id": template,
                "status": 0,
                "channels": [1],
            }
            mailings[code] = assert_ok(await admin.post("/mailing/create", json=body))["id"]
    async with create_sessionmaker(engine)() as session, session.begin():
        _, secret = await key_service.create(session, project_code="AAA", name=None)
    server.app.state.keyring.expire()
    headers = {"Authorization": f"Bearer {secret}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers) as client:
        scoped = Browser(client)
        own = await scoped.get(f"/ui/mailing/{mailings['AAA']}")
        assert own.status_code == 200
        assert (await scoped.get(f"/ui/project/{projects['AAA']}/mailings")).status_code == 200
        b = projects["BBB"]
        for path in (
            f"/ui/mailing/{mailings['BBB']}",
            f"/ui/project/{b}/mailings",
            f"/ui/project/{b}/mailings/new",
        ):
            assert (await scoped.get(path)).status_code == 404, path
        for path, data in (
            (f"/ui/mailing/{mailings['BBB']}/start", {}),
            (f"/ui/mailing/{mailings['BBB']}/retry-failed", {}),
            (f"/ui/project/{b}/mailings", FORM),
        ):
            assert (await scoped.post(path, data)).status_code == 404, path
    async with httpx.AsyncClient(base_url=server.url, headers=admin_headers) as admin:
        assert assert_ok(await admin.get(f"/mailing/{mailings['BBB']}"), 200)["status"] == 0
