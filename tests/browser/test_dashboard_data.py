"""The pages of clients and templates in a browser: a client made with the form, a CSV
import with its progress bar and its rejected row, and the template editor's live preview."""

from __future__ import annotations

from typing import Any

import httpx
from playwright.async_api import Page, expect

from browser.conftest import screenshot
from conftest import LiveServer, StartServer
from helpers import assert_ok, make_project

CLIENTS = [
    {
        "guid": "crm-1001",
        "first_name": "Анна",
        "last_name": "Петрова",
        "email": "anna@example.ru",
        "phone": "+79161234567",
        "timezone": "Europe/Moscow",
        "tags": ["vip", "москва"],
        "attributes": {"city": "Москва"},
    },
    {
        "guid": "crm-1002",
        "first_name": "Олег",
        "last_name": "Сидоров",
        "phone": "+79031112233",
        "timezone": "Asia/Yekaterinburg",
        "tags": ["новый"],
    },
    {
        "guid": "crm-1003",
        "first_name": "Мария",
        "last_name": "Кузнецова",
        "email": "maria@example.ru",
        "tags": [],
    },
]


async def arrange(
    server: LiveServer, key: str | None = None, **template: Any
) -> tuple[int, int | None]:
    """A project with three clients (and a template, if its texts are given)."""
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=server.url, timeout=30, headers=headers) as api:
        project = await make_project(api, "shop", "Магазин")
        body = {"project": "shop", "clients": CLIENTS}
        assert_ok(await api.post("/client/import", json=body))
        if not template:
            return project, None
        made = await api.post("/template/create", json={"project_id": project, **template})
        return project, int(assert_ok(made)["id"])


async def test_a_client_is_made_with_the_form_and_found(page: Page, service: LiveServer) -> None:
    project, _ = await arrange(service)
    await page.goto(f"{service.url}/ui/project/{project}/clients")
    await expect(page.get_by_role("heading", name="Клиенты")).to_be_visible()
    await expect(page.get_by_role("row")).to_have_count(4)
    await screenshot(page, "clients")

    await page.get_by_role("link", name="Новый клиент").click()
    await page.get_by_label("guid", exact=True).fill("crm-2001")
    await page.get_by_label("Фамилия").fill("Смирнов")
    await page.get_by_label("Имя", exact=True).fill("Пётр")
    await page.get_by_role("button", name="Создать клиента").click()
    # No contact: the form says so beside the field and keeps what was typed.
    await expect(page.get_by_text("Укажите email или phone").first).to_be_visible()
    await expect(page.get_by_label("Фамилия")).to_have_value("Смирнов")
    await page.get_by_label("Телефон").fill("8 (926) 555-44-33")
    await page.get_by_label("Теги").fill("vip, акция")
    await page.get_by_role("button", name="Создать клиента").click()
    await expect(page.get_by_role("heading", name="Смирнов Пётр")).to_be_visible()
    await expect(page.get_by_role("status")).to_have_text("Сохранено")
    await expect(page.get_by_label("Телефон")).to_have_value("+79265554433")

    await page.get_by_role("link", name="← Клиенты проекта").click()
    await page.get_by_label("Поиск").fill("смирн")
    await page.get_by_role("button", name="Найти").click()
    await expect(page.get_by_role("row")).to_have_count(2)
    await expect(page.get_by_role("link", name="Смирнов Пётр")).to_be_visible()


async def test_a_csv_import_shows_its_progress_and_the_rejected_row(
    page: Page, start_server: StartServer
) -> None:
    """With API keys: the page's request to the JSON API is authorised by the login's cookie
    and carries the CSRF token."""
    service = await start_server(api_keys=["the-key"])
    project, _ = await arrange(service, key="the-key")
    await page.goto(f"{service.url}/ui/project/{project}/clients/import")
    await page.get_by_label("Ключ API").fill("the-key")
    await page.get_by_role("button", name="Войти").click()
    await expect(page.get_by_role("heading", name="Импорт клиентов")).to_be_visible()
    csv = (
        "guid;first_name;last_name;email;phone;tags\n"
        "crm-1001;Анна;Петрова-Лебедева;anna@example.ru;;vip\n"
        "crm-3001;Игорь;Волков;igor@example.ru;+79990001122;новый\n"
        "crm-3002;Ольга;Белова;not-an-email;;\n"
        + "".join(f"crm-4{n:03};Клиент;Номер{n};c{n}@example.ru;;\n" for n in range(400))
    ).encode()
    await page.get_by_label("CSV-файл").set_input_files(
        files=[{"name": "clients.csv", "mimeType": "text/csv", "buffer": csv}]
    )
    await page.get_by_role("button", name="Загрузить клиентов").click()
    # The bar reaches its end (position 1: value = max), then the summary comes.
    await expect(page.locator("#import-progress")).to_have_js_property("position", 1)
    await expect(page.get_by_role("heading", name="Импорт завершён")).to_be_visible()
    counts = page.locator(".counts")
    await expect(counts).to_have_text(
        "Создано: 401 · обновлено: 1 · отклонено строк: 1", use_inner_text=True
    )
    rejected = page.get_by_role("table", name="Отклонённые строки")
    await expect(rejected.get_by_role("row")).to_have_count(2)
    await expect(rejected.get_by_role("row").nth(1)).to_contain_text("4")
    await expect(rejected.get_by_role("row").nth(1)).to_contain_text("not-an-email")
    assert page.url.endswith("/clients/import")  # the script's, not the form's, answer
    await screenshot(page, "clients-import")

    await page.get_by_role("link", name="К списку клиентов").click()
    await expect(page.get_by_text("Всего клиентов: 404")).to_be_visible()


async def test_the_template_editor_previews_as_one_types(page: Page, service: LiveServer) -> None:
    _, template = await arrange(
        service,
        name="Напоминание",
        email_subject="{{ first_name }}, ваш заказ готов",
        email_html="<h1>Здравствуйте, {{ first_name }}!</h1><p>Ждём вас в {{ project.name }}.</p>",
        sms_text="{{ first_name }}, заказ готов",
    )
    await page.goto(f"{service.url}/ui/template/{template}")
    await expect(page.get_by_role("heading", name="Шаблон «Напоминание»")).to_be_visible()
    # The sample client first, then a client of the project chosen in the list.
    await expect(page.locator("#preview-subject")).to_have_text("Иван, ваш заказ готов")
    counter = page.locator("#sms-counter")
    await expect(counter).to_have_text("SMS: 17 символов · UCS-2 · 1 сегмент")
    await page.get_by_label("Клиент", exact=True).select_option(label="Петрова Анна (crm-1001)")
    await expect(page.locator("#preview-subject")).to_have_text("Анна, ваш заказ готов")
    html = page.frame_locator("#preview-html")
    await expect(html.get_by_role("heading")).to_have_text("Здравствуйте, Анна!")
    await expect(html.locator("p")).to_have_text("Ждём вас в Магазин.")

    sms = page.get_by_label("Текст SMS")
    await sms.fill("{{ first_name }}, ")
    await sms.press_sequentially("заказ №{{ attributes.city }}")
    await expect(page.locator("#preview-sms")).to_have_text("Анна, заказ №Москва")
    await expect(counter).to_have_text("SMS: 19 символов · UCS-2 · 1 сегмент")
    await sms.fill("Hello {{ first_name|upper }}! " + "x" * 150)
    await expect(counter).to_have_text("SMS: 162 символа · UCS-2 · 3 сегмента")
    await sms.fill("Hello! " + "x" * 154)
    await expect(counter).to_have_text("SMS: 161 символ · GSM-7 · 2 сегмента")
    # An error in one text is said, in Russian, and the others still render.
    await sms.fill("{{ attributes.nope }}")
    await expect(page.locator("#preview-problems")).to_contain_text(
        "SMS: нет такого имени или поля"
    )
    await expect(page.locator("#preview-subject")).to_have_text("Анна, ваш заказ готов")
    await sms.fill("{{ first_name }}, заказ готов")
    await expect(page.locator("#preview-problems")).to_be_empty()
    await expect(html.get_by_role("heading")).to_have_text("Здравствуйте, Анна!")
    await screenshot(page, "template-editor")

    await page.get_by_label("Название").fill("Заказ готов")
    await page.get_by_role("button", name="Сохранить шаблон").click()
    await expect(page.get_by_role("heading", name="Шаблон «Заказ готов»")).to_be_visible()
    await expect(page.get_by_role("status").first).to_have_text("Сохранено")
