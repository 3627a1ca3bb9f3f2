"""A new user's whole way through the dashboard, pages only: a project, a client, a template
and a mailing made with the forms, the mailing launched, and its page counting the messages
up to "sent" live, without a reload, while the real SMTP server receives them."""

from __future__ import annotations

from playwright.async_api import Page, expect

from conftest import LiveServer
from smtp_peer import SmtpPeer


async def test_project_client_template_and_mailing_through_the_pages(
    page: Page, service: LiveServer, smtp: SmtpPeer
) -> None:
    smtp.delay = 0.5  # each DATA takes a moment: the sends happen while the page watches

    await page.goto(service.url)
    await page.get_by_label("Название").fill("Книжный")
    await page.get_by_label("Код").fill("books")
    await page.get_by_role("button", name="Создать проект").click()
    await expect(page.get_by_role("heading", name="Книжный")).to_be_visible()

    nav = page.get_by_role("navigation", name="Проект")
    clients = [("b-1", "Анна", "Петрова", "anna@"), ("b-2", "Олег", "Сидоров", "oleg@")]
    for guid, first, last, mailbox in clients:
        await nav.get_by_role("link", name="Клиенты").click()
        await page.get_by_role("link", name="Новый клиент").click()
        await page.get_by_label("guid", exact=True).fill(guid)
        await page.get_by_label("Фамилия").fill(last)
        await page.get_by_label("Имя", exact=True).fill(first)
        await page.get_by_label("Email").fill(mailbox + "example.ru")
        await page.get_by_role("button", name="Создать клиента").click()
        await expect(page.get_by_role("heading", name=f"{last} {first}")).to_be_visible()

    await nav.get_by_role("link", name="Шаблоны").click()
    await page.get_by_role("link", name="Новый шаблон").click()
    await page.get_by_label("Название").fill("Новинки")
    await page.get_by_label("Тема письма").fill("{{ first_name }}, новые книги")
    await page.get_by_label("Текст письма").fill("Здравствуйте, {{ first_name }}! У нас новинки.")
    await page.get_by_role("button", name="Создать шаблон").click()
    await expect(page.get_by_role("heading", name="Шаблон «Новинки»")).to_be_visible()

    await nav.get_by_role("link", name="Рассылки").click()
    await page.get_by_role("link", name="Новая рассылка").click()
    await page.get_by_label("Название").fill("Новинки ноября")
    await page.get_by_label("Шаблон").select_option(label="Новинки (#1, письмо)")
    await page.get_by_label("Email").check()
    await page.get_by_label("Сейчас").check()
    await page.get_by_label("Запустить (отправка по расписанию или сразу)").check()
    await page.get_by_role("button", name="Создать рассылку").click()

    await expect(page.get_by_role("heading", name="Новинки ноября")).to_be_visible()
    loaded_at = await page.evaluate("rassylkaMailingPage.loadedAt")
    everything = page.locator('#counts tr[data-channel="all"]')
    await expect(everything.locator('td[data-status="sent"]')).to_have_text("2")
    await expect(everything.locator('td[data-status="total"]')).to_have_text("2")
    await expect(page.locator("#mailing-status")).to_have_text("завершена")
    # The same page all along: the numbers came over the event stream.
    assert await page.evaluate("rassylkaMailingPage.loadedAt") == loaded_at
    assert smtp.recipients() == {"anna@example.ru": 1, "oleg@example.ru": 1}
