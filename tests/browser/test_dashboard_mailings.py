"""Mailings in a browser: made through the form, watched live on their page (the event stream,
no reload) while the real SMTP peer accepts one recipient and refuses another, the failure
retried; and the lifecycle's buttons."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from playwright.async_api import Page, expect

from browser.conftest import screenshot
from conftest import LiveServer, StartServer, serve
from helpers import assert_ok, make_project
from rassylka.config import Settings
from smtp_peer import SmtpPeer


async def a_project_with_clients(
    url: str, *addresses: str, headers: dict[str, str] | None = None
) -> tuple[int, int]:
    """A project, an email template and a client per address, through the JSON API."""
    async with httpx.AsyncClient(base_url=url, timeout=30, headers=headers) as api:
        project = await make_project(api, code="shop", name="Магазин")
        template = {
            "project_id": project,
            "name": "Осенняя распродажа",
            "email_subject": "Скидки, {{ first_name }}",
            "email_text": "Здравствуйте, {{ first_name }}!",
        }
        template_id = assert_ok(await api.post("/template/create", json=template))["id"]
        for number, address in enumerate(addresses):
            client = {
                "project": "shop",
                "guid": address.split("@")[0],
                "first_name": f"Клиент {number}",
                "last_name": "Тестов",
                "email": address,
            }
            assert_ok(await api.post("/client/create", json=client))
    return project, template_id


@pytest.fixture
async def service(database_url: str, smtp: SmtpPeer) -> AsyncIterator[LiveServer]:
    """``rassylka serve`` whose streams last 2 s, so the page's stream is ended by the server
    and resumed (Last-Event-ID) while the test watches."""
    server = await serve(
        Settings(
            database_url=database_url,
            smtp_host="127.0.0.1",
            smtp_port=smtp.port,
            dispatch_poll_interval=0.1,
            sse_max_lifetime=2,
        ),
        worker=True,
    )
    yield server
    await server.stop()


async def test_a_mailing_made_on_the_page_is_watched_live_and_its_failure_retried(
    page: Page, service: LiveServer, smtp: SmtpPeer
) -> None:
    # Each DATA takes a moment, so the sends happen while the page watches, not before it.
    smtp.delay = 1.0
    project, template = await a_project_with_clients(
        service.url, "anna@example.ru", "never@example.ru"
    )

    await page.goto(f"{service.url}/ui/project/{project}/mailings")
    await expect(page.get_by_text("Рассылок пока нет")).to_be_visible()
    await page.get_by_role("link", name="Новая рассылка").click()
    await expect(page.get_by_role("heading", name="Новая рассылка")).to_be_visible()
    await page.get_by_label("Название").fill("Осень")
    await page.get_by_label("Шаблон").select_option(
        label=f"Осенняя распродажа (#{template}, письмо)"
    )
    await expect(page.get_by_label("Email")).to_be_checked()
    await expect(page.get_by_label("Сейчас")).to_be_checked()
    # Only the choice's own fields are shown.
    await expect(page.get_by_label("Cron-выражение")).to_be_hidden()
    await page.get_by_label("По расписанию (cron)").check()
    await expect(page.get_by_label("Cron-выражение")).to_be_visible()
    await page.get_by_label("Сейчас").check()
    await expect(page.get_by_label("Дата и время")).to_be_hidden()
    await screenshot(page, "mailing-new")
    await page.get_by_role("button", name="Создать рассылку").click()

    await expect(page.get_by_role("heading", name="Осень")).to_be_visible()
    loaded_at = await page.evaluate("rassylkaMailingPage.loadedAt")
    stream = page.locator("#stream-state")
    await expect(stream).to_have_attribute("role", "status")
    await expect(stream).to_have_text("Обновление: подключено")
    counts = page.locator('#counts tr[data-channel="all"]')
    await expect(counts.locator('td[data-status="sent"]')).to_have_text("1")
    await expect(counts.locator('td[data-status="failed"]')).to_have_text("1")
    await expect(counts.locator('td[data-status="total"]')).to_have_text("2")
    await expect(page.locator("#mailing-status")).to_have_text("завершена")
    failed = page.locator("#failed tbody")
    await expect(failed).to_contain_text("never@example.ru")
    await expect(failed).to_contain_text("No such user here")
    await expect(page.locator("#events")).to_contain_text("sending → sent")
    # The chart drew the sends over time: more than the one point the page started with.
    points = await page.locator("#chart polyline[data-series='sent']").get_attribute("points")
    assert points is not None
    assert len(points.split()) > 1, points
    # All of it came live: the same page, with events from the stream.
    assert await page.evaluate("rassylkaMailingPage.loadedAt") == loaded_at
    assert await page.evaluate("rassylkaMailingPage.events") >= 1
    assert page.url.endswith(f"/ui/mailing/{await page.evaluate('rassylkaMailingPage.mailingId')}")
    await screenshot(page, "mailing-live")
    # The server ends the stream after its lifetime; what follows comes over the resumed one.
    await page.wait_for_function("rassylkaMailingPage.reconnects >= 1")

    await page.get_by_role("button", name="Повторить неудачные").click()
    await expect(page.locator("#retry-result")).to_have_text("Снова в очереди: 1")
    await expect(page.locator("#events")).to_contain_text("failed → queued")
    await expect(page.locator("#events li").first).to_contain_text("→ failed")
    assert smtp.rcpt_attempts["never@example.ru"] == 2
    assert await page.evaluate("rassylkaMailingPage.loadedAt") == loaded_at
    # Each of the 4 events once, across the reconnects: none lost, none repeated.
    await expect(page.locator("#events li")).to_have_count(4)
    # (The refusal at RCPT may beat the page's first render: then it was rendered, not streamed.)
    shown_live = await page.evaluate("rassylkaMailingPage.events")
    assert shown_live >= 3
    assert await page.evaluate("rassylkaMailingPage.received") == shown_live
    # Reloaded, the page renders the same from the server: the latest events, newest first.
    await page.reload()
    await expect(page.locator("#events li")).to_have_count(4)
    await expect(page.locator("#events li").first).to_contain_text("sending → failed")
    await expect(page.locator("#events li").nth(1)).to_contain_text("failed → queued")
    await expect(page.locator("#failed tbody")).to_contain_text("No such user here")

    # The list, with a draft and a weekly one beside it: each row offers its legal moves.
    async with httpx.AsyncClient(base_url=service.url) as api:
        for name, status, schedule in (
            ("Черновик зимы", 0, None),
            ("Еженедельная", 1, "0 10 * * 1"),
        ):
            body = {
                "name": name,
                "project_id": project,
                "template_id": template,
                "status": status,
                "channels": ["email"],
                "event": "2099-01-01",
                "schedule": {"cron": schedule} if schedule else None,
            }
            assert_ok(await api.post("/mailing/create", json=body))
    await page.goto(f"{service.url}/ui/project/{project}/mailings")
    autumn = page.get_by_role("row", name="Осень")
    await expect(autumn).to_contain_text("завершена")
    # Messages, sent, errors.
    await expect(autumn.locator("td.num")).to_have_text(["2", "1", "1"])
    draft = page.get_by_role("row", name="Черновик зимы")
    await expect(draft.get_by_role("button", name="Запустить")).to_be_visible()
    await expect(draft.get_by_role("button", name="Приостановить")).to_be_hidden()
    weekly = page.get_by_role("row", name="Еженедельная")
    await expect(weekly).to_contain_text("0 10 * * 1")
    await weekly.get_by_role("button", name="Приостановить").click()
    await expect(page.get_by_role("row", name="Еженедельная")).to_contain_text("приостановлена")
    assert page.url.endswith(f"/ui/project/{project}/mailings")
    await screenshot(page, "mailings")


async def test_the_lifecycle_buttons_show_only_what_the_status_allows(
    page: Page, start_server: StartServer
) -> None:
    """With API keys: the page's stream is authorised by the login's cookie too."""
    server = await start_server(api_keys=["the-key"])
    headers = {"Authorization": "Bearer the-key"}
    project, template = await a_project_with_clients(server.url, headers=headers)
    async with httpx.AsyncClient(base_url=server.url, headers=headers) as api:
        body = {
            "name": "Весна",
            "project_id": project,
            "template_id": template,
            "status": 1,
            "channels": [1],
            "event": "2099-03-01T10:00:00+03:00",
        }
        mailing = assert_ok(await api.post("/mailing/create", json=body))["id"]

    await page.goto(f"{server.url}/ui/mailing/{mailing}")
    await page.get_by_label("Ключ API").fill("the-key")
    await page.get_by_role("button", name="Войти").click()
    await expect(page.locator("#stream-state")).to_have_text("Обновление: подключено")
    status = page.locator("#mailing-status")
    pause = page.get_by_role("button", name="Приостановить")
    resume = page.get_by_role("button", name="Возобновить")
    cancel = page.get_by_role("button", name="Отменить")
    await expect(status).to_have_text("активна")
    await expect(page.get_by_role("button", name="Запустить")).to_be_hidden()
    await expect(resume).to_be_hidden()

    await pause.click()
    await expect(status).to_have_text("приостановлена")
    await expect(pause).to_be_hidden()
    await resume.click()
    await expect(status).to_have_text("активна")
    await expect(page.locator("#mailing-phase")).to_contain_text("запланирована на 2099-03-01")
    await cancel.click()
    await expect(status).to_have_text("отменена")
    for button in (pause, resume, cancel):
        await expect(button).to_be_hidden()
