"""The dashboard's doors in a browser: the login with an API key, the session cookie, and a
first form (a project)."""

from __future__ import annotations

from playwright.async_api import Page, expect

from browser.conftest import screenshot
from conftest import LiveServer, StartServer


async def test_a_new_user_creates_a_project_on_the_front_page(
    page: Page, service: LiveServer
) -> None:
    await page.goto(service.url)  # / leads to the dashboard
    await expect(page.get_by_role("heading", name="Проекты")).to_be_visible()
    await page.get_by_label("Название").fill("Магазин")
    await page.get_by_label("Код").fill("shop")
    await page.get_by_role("button", name="Создать проект").click()
    await expect(page.get_by_role("heading", name="Магазин")).to_be_visible()
    await page.goto(service.url + "/ui/")
    await expect(page.get_by_role("link", name="Магазин")).to_be_visible()
    await screenshot(page, "projects")

    # The same code again: the form says why, beside the field, and keeps what was typed.
    await page.get_by_label("Название").fill("Другой")
    await page.get_by_label("Код").fill("shop")
    await page.get_by_role("button", name="Создать проект").click()
    await expect(page.get_by_text("Проект с кодом «shop» уже существует")).to_be_visible()
    await expect(page.get_by_label("Название")).to_have_value("Другой")


async def test_with_keys_the_dashboard_asks_for_one_and_keeps_it(
    page: Page, start_server: StartServer
) -> None:
    server = await start_server(api_keys=["the-right-key"])
    await page.goto(server.url + "/ui/project/1?tab=x")
    await expect(page.get_by_role("heading", name="Вход")).to_be_visible()

    await page.get_by_label("Ключ API").fill("a-wrong-key")
    await page.get_by_role("button", name="Войти").click()
    await expect(page.get_by_text("Ключ не подходит")).to_be_visible()

    await page.get_by_label("Ключ API").fill("the-right-key")
    await page.get_by_role("button", name="Войти").click()
    # Back to the page asked for (a project that does not exist: the dashboard's 404).
    await expect(page.get_by_role("heading", name="Страница не найдена")).to_be_visible()
    assert page.url.endswith("/ui/project/1?tab=x")
    cookies = {cookie["name"]: cookie for cookie in await page.context.cookies()}
    assert cookies["rassylka_key"]["httpOnly"] is True
    assert cookies["rassylka_key"]["sameSite"] == "Strict"

    # The page's scripts reach the JSON API with the cookie and the CSRF token...
    created = await page.evaluate(
        "rassylka.api('POST', '/project/create', {name: 'Из страницы', code: 'js'})"
    )
    assert created["status"] == 201, created
    # ...and without the token the cookie alone changes nothing.
    refused = await page.evaluate(
        """fetch('/project/create', {method: 'POST', headers: {'Content-Type': 'application/json'},
             body: JSON.stringify({name: 'x', code: 'nocsrf'})}).then(r => r.status)"""
    )
    assert refused == 403

    await page.goto(server.url + "/ui/")
    await page.get_by_role("button", name="Выйти").click()
    await expect(page.get_by_role("heading", name="Вход")).to_be_visible()
    await page.goto(server.url + "/ui/")
    await expect(page.get_by_role("heading", name="Вход")).to_be_visible()
