"""The dashboard's pages of clients and templates over HTTP (no browser): the search and the
pages of the client list, the forms' errors beside their fields, the CSV import without
JavaScript, the template preview's JSON, and the doors (CSRF, a project key's scope)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from conftest import StartServer
from helpers import assert_error, assert_ok, make_project, make_template
from test_api_keys import bearer, stored_key

NAMES = {"first_name": "Анна", "last_name": "Петрова"}


async def csrf(client: httpx.AsyncClient) -> str:
    """The browser's CSRF token: the cookie the first page sets (a form sends it back)."""
    if (token := client.cookies.get("rassylka_csrf")) is None:
        response = await client.get("/ui/")
        assert response.status_code == 200, response.text
        token = client.cookies.get("rassylka_csrf")
    assert token
    return token


async def post_form(
    client: httpx.AsyncClient, path: str, data: dict[str, Any], **options: Any
) -> httpx.Response:
    return await client.post(path, data={"csrf_token": await csrf(client), **data}, **options)


def text_of(html: str) -> str:
    """A page's text, its tags and runs of spaces gone (what a person reads)."""
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


async def make_clients(api: httpx.AsyncClient, code: str, rows: list[dict[str, Any]]) -> None:
    result = assert_ok(await api.post("/client/import", json={"project": code, "clients": rows}))
    assert result["rejected"] == 0, result


# -- clients ------------------------------------------------------------------------------------


async def test_the_client_list_searches_and_pages(api: httpx.AsyncClient) -> None:
    project = await make_project(api, "shop", "Магазин")
    rows = [
        {"guid": f"g{n:03}", "first_name": f"Иван{n}", "last_name": "Иванов", "email": f"i{n}@x.ru"}
        for n in range(55)
    ]
    rows.append(
        {**NAMES, "guid": "anna", "phone": "+79161234567", "tags": ["vip"], "last_name": "Сидорова"}
    )
    await make_clients(api, "shop", rows)
    other = await make_project(api, "other", "Другой")
    await make_clients(
        api, "other", [{**NAMES, "guid": "anna", "last_name": "Сидорова"} | {"email": "a@o.ru"}]
    )

    first = await api.get(f"/ui/project/{project}/clients")
    assert first.status_code == 200
    shown = text_of(first.text)
    assert "Всего клиентов: 56" in shown
    assert "1–50 из 56" in shown
    assert "g000" in shown
    assert "g049" in shown
    assert "g050" not in shown
    second = text_of((await api.get(f"/ui/project/{project}/clients?offset=50")).text)
    assert "51–56 из 56" in second
    assert "g050" in second
    assert "g000" not in second

    # Any case, Cyrillic included (SQLite folds only ASCII by itself), in one project only.
    found = text_of((await api.get(f"/ui/project/{project}/clients", params={"q": "сИДОРОВ"})).text)
    assert "Найдено по «сИДОРОВ»: 1" in found
    assert "anna" in found
    assert "+79161234567" in found
    assert "vip" in found
    # A phone as a person writes it; a part of a guid; an email's part.
    for q in ("8 916 123-45-67", "9161234", "ANN", "i7@x"):
        listed = assert_ok(await api.get("/client/list", params={"project": "shop", "q": q}), 200)
        expected = {"i7@x": ["g007"]}.get(q, ["anna"])
        assert [c["guid"] for c in listed["items"]] == expected, q
    # LIKE's own wildcards are letters here.
    none = assert_ok(await api.get("/client/list", params={"project": "shop", "q": "%_"}), 200)
    assert none["total"] == 0
    # The pager keeps the search.
    many = await api.get(f"/ui/project/{project}/clients", params={"q": "иванов"})
    assert "1–50 из 55" in text_of(many.text)
    assert "/clients?q=%D0%B8%D0%B2%D0%B0%D0%BD%D0%BE%D0%B2&amp;offset=50" in many.text
    nobody = await api.get(f"/ui/project/{other}/clients", params={"q": "иван"})
    assert "никого не нашлось" in text_of(nobody.text)


async def test_the_client_forms_show_errors_beside_fields(api: httpx.AsyncClient) -> None:
    project = await make_project(api, "shop", "Магазин")
    new = f"/ui/project/{project}/clients/new"
    assert (await api.get(new)).status_code == 200

    no_contact = await post_form(api, new, {"guid": "c1", **NAMES, "tags": "a, b"})
    assert no_contact.status_code == 400
    assert 'id="e-email"' in no_contact.text
    assert "Укажите email или phone" in no_contact.text
    assert 'value="c1"' in no_contact.text  # what was typed stays

    bad = await post_form(
        api,
        new,
        {"guid": "c1", **NAMES, "phone": "12", "attributes": "{oops", "timezone": "Mars/X"},
    )
    assert bad.status_code == 400
    for field in ("phone", "attributes", "timezone"):
        assert f'id="e-{field}"' in bad.text, field
    assert "Некорректный номер телефона" in bad.text
    assert "Некорректный JSON" in bad.text

    made = await post_form(
        api,
        new,
        {
            "guid": "c1",
            **NAMES,
            "phone": "8 916 123 45 67",
            "tags": "vip, москва",
            "attributes": '{"city": "Москва"}',
        },
    )
    assert made.status_code == 303, made.text
    card = made.headers["location"]
    client_id = int(card.split("/")[-1].split("?")[0])
    stored = assert_ok(await api.get(f"/client/{client_id}"), 200)
    assert stored["phone"] == "+79161234567"
    assert stored["tags"] == ["vip", "москва"]
    assert stored["attributes"] == {"city": "Москва"}
    assert "Сохранено" in (await api.get(card)).text

    taken = await post_form(api, new, {"guid": "c1", **NAMES, "email": "x@y.ru"})
    assert taken.status_code == 400
    assert "Клиент с guid «c1» уже есть в этом проекте" in taken.text

    # The card: an emptied field is cleared; a required one emptied is refused, nothing saved.
    path = f"/ui/client/{client_id}"
    cleared = await post_form(
        api, path, {"guid": "c1", **NAMES, "email": "a@b.ru", "phone": "", "tags": ""}
    )
    assert cleared.status_code == 303, cleared.text
    stored = assert_ok(await api.get(f"/client/{client_id}"), 200)
    assert (stored["phone"], stored["email"], stored["tags"]) == (None, "a@b.ru", [])
    assert stored["attributes"] == {}
    refused = await post_form(
        api, path, {"guid": "c1", "first_name": "", "last_name": "Новая", "email": "a@b.ru"}
    )
    assert refused.status_code == 400
    assert "Поле нельзя очистить" in refused.text
    assert assert_ok(await api.get(f"/client/{client_id}"), 200)["last_name"] == "Петрова"
    gone = await api.get("/ui/client/999999")
    assert gone.status_code == 404
    assert "Клиент 999999 не найден" in gone.text


async def test_the_import_form_works_without_javascript(api: httpx.AsyncClient) -> None:
    project = await make_project(api, "shop", "Магазин")
    page = await api.get(f"/ui/project/{project}/clients/import")
    assert page.status_code == 200
    assert 'enctype="multipart/form-data"' in page.text
    assert "<progress" in page.text
    csv = (
        "guid,first_name,last_name,email,tags\n"
        "a1,Анна,Петрова,anna@x.ru,vip;new\n"
        "a2,Пётр,Иванов,not-an-email,\n"
        "a3,Олег,Сидоров,oleg@x.ru,\n"
    ).encode()
    files = {"file": ("clients.csv", csv, "text/csv")}
    answer = await post_form(api, "/ui/clients/import", {"project_id": str(project)}, files=files)
    assert answer.status_code == 200, answer.text
    shown = text_of(answer.text)
    assert "Создано: 2 · обновлено: 0 · отклонено строк: 1" in shown
    assert re.search(r"3 email Некорректный email «not-an-email»", shown), shown
    listed = assert_ok(await api.get("/client/list", params={"project": "shop"}), 200)
    assert sorted(c["guid"] for c in listed["items"]) == ["a1", "a3"]

    again = await post_form(api, "/ui/clients/import", {"project_id": str(project)}, files=files)
    assert "Создано: 0 · обновлено: 2" in text_of(again.text)
    unreadable = await post_form(
        api,
        "/ui/clients/import",
        {"project_id": str(project)},
        files={"file": ("x.csv", b"name\nx\n", "text/csv")},
    )
    assert unreadable.status_code == 400
    assert "Нет обязательного столбца guid" in unreadable.text
    no_file = await post_form(api, "/ui/clients/import", {"project_id": str(project)})
    assert no_file.status_code == 400
    assert "Выберите CSV-файл" in no_file.text
    nowhere = await post_form(api, "/ui/clients/import", {"project_id": "x"}, files=files)
    assert nowhere.status_code == 404


async def test_forms_without_the_csrf_token_change_nothing(api: httpx.AsyncClient) -> None:
    project = await make_project(api, "shop", "Магазин")
    template = await make_template(api, project)
    await csrf(api)  # the cookie is there; the field is not
    for path, data in (
        (f"/ui/project/{project}/clients/new", {"guid": "c1", **NAMES, "email": "a@b.ru"}),
        ("/ui/clients/import", {"project_id": str(project)}),
        (f"/ui/project/{project}/templates/new", {"name": "T", "sms_text": "x"}),
        (f"/ui/template/{template}", {"name": "Другое", "sms_text": "x"}),
        ("/ui/template/preview", {"project_id": str(project), "sms_text": "x"}),
    ):
        refused = await api.post(path, data=data)
        assert refused.status_code == 403, path
        wrong = await api.post(path, data={**data, "csrf_token": "not-the-cookie"})
        assert wrong.status_code == 403, path
    assert assert_ok(await api.get("/client/list"), 200)["total"] == 0
    assert assert_ok(await api.get(f"/template/{template}"), 200)["name"] == "Шаблон"
    assert assert_ok(await api.get("/template/list"), 200)["total"] == 1


# -- templates ----------------------------------------------------------------------------------


async def preview(api: httpx.AsyncClient, project: int, **fields: str) -> dict[str, Any]:
    answer = await post_form(api, "/ui/template/preview", {"project_id": str(project), **fields})
    return assert_ok(answer, 200)


async def test_the_preview_renders_for_a_client_and_counts_the_sms(api: httpx.AsyncClient) -> None:
    project = await make_project(api, "shop", "Магазин")
    await make_clients(
        api,
        "shop",
        [
            {
                "guid": "g1",
                "first_name": "<b>Анна</b>",
                "last_name": "Петрова",
                "email": "a@b.ru",
                "attributes": {"city": "Казань"},
            }
        ],
    )
    client_id = assert_ok(await api.get("/client/list", params={"q": "g1"}), 200)["items"][0]["id"]

    shown = await preview(
        api,
        project,
        email_subject="  Привет, {{ first_name }} из {{ attributes.city }}  ",
        email_html="<p>{{ first_name }} · {{ project.name }}</p>",
        sms_text="{{ last_name }}",
        client_id=str(client_id),
    )
    assert shown["client"] == {"id": client_id, "guid": "g1", "name": "Петрова <b>Анна</b>"}
    assert shown["subject"] == "Привет, <b>Анна</b> из Казань"
    # HTML escapes the client's data as the email would (it is shown in a sandboxed iframe).
    assert shown["html"] == "<p>&lt;b&gt;Анна&lt;/b&gt; · Магазин</p>"
    # No text of its own: the plain part made from the HTML, as the email would carry it.
    assert shown["text"] == "<b>Анна</b> · Магазин"
    assert shown["text_from_html"] is True
    assert shown["sms"] == "Петрова"
    assert shown["problems"] == {}
    # By guid, typed; the sample client when none is chosen.
    by_guid = await preview(api, project, sms_text="{{ guid }}", client_guid=" g1 ")
    assert by_guid["sms"] == "g1"
    sample = await preview(api, project, sms_text="{{ first_name }} {{ attributes.any }}!")
    assert sample["client"] is None
    assert sample["sms"] == "Иван !"

    # The counter: Cyrillic is UCS-2, 70 in one part, 67 a part beyond; GSM-7 160 and 153.
    for text, expected in (
        ("Ж" * 70, "70 символов · UCS-2 · 1 сегмент"),
        ("Ж" * 71, "71 символ · UCS-2 · 2 сегмента"),
        ("a" * 160, "160 символов · GSM-7 · 1 сегмент"),
        ("a" * 161, "161 символ · GSM-7 · 2 сегмента"),
        ("[" * 81, "81 символ · GSM-7 · 2 сегмента"),  # an extension character is two septets
        ("Оплата 34 р" + "." * 23, "34 символа · UCS-2 · 1 сегмент"),
    ):
        counted = (await preview(api, project, sms_text=text))["sms_counter"]
        assert counted["summary"] == expected, text
    cyrillic = (await preview(api, project, sms_text="Ж" * 71))["sms_counter"]
    assert cyrillic == {
        "length": 71,
        "encoding": "UCS-2",
        "units": 71,
        "segments": 2,
        "too_long": False,
        "summary": "71 символ · UCS-2 · 2 сегмента",
    }
    gsm = (await preview(api, project, sms_text="{{ 'a' * 161 }}"))["sms_counter"]
    assert (gsm["encoding"], gsm["length"], gsm["segments"]) == ("GSM-7", 161, 2)
    extension = (await preview(api, project, sms_text="[" * 80))["sms_counter"]
    assert (extension["units"], extension["segments"]) == (160, 1)


async def test_the_preview_says_what_fails_and_renders_the_rest(api: httpx.AsyncClient) -> None:
    project = await make_project(api, "shop", "Магазин")
    await make_clients(api, "shop", [{**NAMES, "guid": "g1", "email": "a@b.ru"}])
    client_id = assert_ok(await api.get("/client/list"), 200)["items"][0]["id"]
    shown = await preview(
        api,
        project,
        email_subject="Тема {{ first_name }}",
        email_text="{% if %}",
        sms_text="{{ attributes.city }}",
        email_html="{{ 'x' * 2000000 }}",
        client_id=str(client_id),
    )
    assert shown["subject"] == "Тема Анна"
    assert shown["problems"]["email_text"].startswith("Ошибка синтаксиса шаблона в строке 1")
    assert shown["problems"]["sms_text"].startswith("нет такого имени или поля")
    assert "city" in shown["problems"]["sms_text"]
    assert shown["problems"]["email_html"].startswith("Результат шаблона слишком большой")
    assert shown["sms"] is None
    assert shown["sms_counter"] is None
    # Forbidden by the sandbox, as in dispatch.
    unsafe = await preview(api, project, sms_text="{{ ''.__class__.__mro__ }}")
    assert "sms_text" in unsafe["problems"]

    # A client of another project, or none: 404 in the API's envelope (the script shows it).
    other = await make_project(api, "other", "Другой")
    await make_clients(api, "other", [{**NAMES, "guid": "o1", "email": "o@b.ru"}])
    foreign = assert_ok(await api.get("/client/list", params={"project": "other"}), 200)
    foreign_id = foreign["items"][0]["id"]
    for fields in (
        {"client_id": str(foreign_id)},
        {"client_guid": "o1"},
        {"client_id": "x"},
        {"client_guid": "g\x001"},
    ):
        answer = await post_form(
            api, "/ui/template/preview", {"project_id": str(project), "sms_text": "x", **fields}
        )
        assert answer.status_code == 404, fields
        assert answer.json()["error"]["message"]
    missing = await post_form(api, "/ui/template/preview", {"project_id": "999999"})
    details = assert_error(missing, 404, "Страница не найдена")
    assert details == [{"field": "id", "message": "Проект 999999 не найден"}]
    assert other


async def test_the_template_editor_creates_and_saves(api: httpx.AsyncClient) -> None:
    project = await make_project(api, "shop", "Магазин")
    new = f"/ui/project/{project}/templates/new"
    page = await api.get(new)
    assert page.status_code == 200
    assert "sandbox" in page.text
    empty = await post_form(api, new, {"name": "Напоминание"})
    assert empty.status_code == 400
    assert "Шаблону нужен текст хотя бы для одного канала" in empty.text
    typo = await post_form(api, new, {"name": "Напоминание", "sms_text": "{{ first_name"})
    assert typo.status_code == 400
    assert 'id="e-sms_text"' in typo.text
    made = await post_form(
        api, new, {"name": "Напоминание", "email_subject": "Тема", "email_text": "Текст"}
    )
    assert made.status_code == 303, made.text
    template_id = int(made.headers["location"].split("/")[-1].split("?")[0])
    listed = text_of((await api.get(f"/ui/project/{project}/templates")).text)
    assert "Напоминание" in listed
    assert "email" in listed

    path = f"/ui/template/{template_id}"
    saved = await post_form(
        api, path, {"name": "Новое", "sms_text": "{{ first_name }}", "email_text": "Текст"}
    )
    assert saved.status_code == 400  # a body without a subject
    assert "У письма есть текст, но нет темы" in saved.text
    stored = assert_ok(await api.get(f"/template/{template_id}"), 200)
    assert (stored["name"], stored["email_subject"], stored["sms_text"]) == (
        "Напоминание",
        "Тема",
        None,
    )
    saved = await post_form(api, path, {"name": "Только SMS", "sms_text": "{{ first_name }}"})
    assert saved.status_code == 303, saved.text
    stored = assert_ok(await api.get(f"/template/{template_id}"), 200)
    assert stored["name"] == "Только SMS"
    assert (stored["email_subject"], stored["email_text"]) == (None, None)
    assert stored["sms_text"] == "{{ first_name }}"


# -- a project's key ----------------------------------------------------------------------------


@dataclass
class Scoped:
    admin: httpx.AsyncClient
    scoped: httpx.AsyncClient
    a: int
    b: int
    ids: dict[str, int]


@pytest.fixture
async def scoped(start_server: StartServer, engine: AsyncEngine) -> AsyncIterator[Scoped]:
    server = await start_server(api_keys=["global-key"])
    admin = httpx.AsyncClient(base_url=server.url, timeout=30, headers=bearer("global-key"))
    ids: dict[str, int] = {}
    projects = {code: await make_project(admin, code, code) for code in ("AAA", "BBB")}
    for code, project in projects.items():
        await make_clients(admin, code, [{**NAMES, "guid": "g1", "email": f"x@{code}.ru"}])
        found = assert_ok(await admin.get("/client/list", params={"project": code}), 200)
        ids[f"client_{code}"] = found["items"][0]["id"]
        ids[f"template_{code}"] = await make_template(admin, project)
    secret = await stored_key(engine, "AAA")
    server.app.state.keyring.expire()
    scoped = httpx.AsyncClient(base_url=server.url, timeout=30, headers=bearer(secret))
    yield Scoped(admin, scoped, projects["AAA"], projects["BBB"], ids)
    await scoped.aclose()
    await admin.aclose()


async def test_a_project_key_sees_only_its_projects_pages(scoped: Scoped) -> None:
    key = scoped.scoped
    for own, other in (
        (f"/ui/project/{scoped.a}/clients", f"/ui/project/{scoped.b}/clients"),
        (f"/ui/project/{scoped.a}/clients/new", f"/ui/project/{scoped.b}/clients/new"),
        (f"/ui/project/{scoped.a}/clients/import", f"/ui/project/{scoped.b}/clients/import"),
        (f"/ui/client/{scoped.ids['client_AAA']}", f"/ui/client/{scoped.ids['client_BBB']}"),
        (f"/ui/project/{scoped.a}/templates", f"/ui/project/{scoped.b}/templates"),
        (f"/ui/project/{scoped.a}/templates/new", f"/ui/project/{scoped.b}/templates/new"),
        (
            f"/ui/template/{scoped.ids['template_AAA']}",
            f"/ui/template/{scoped.ids['template_BBB']}",
        ),
    ):
        assert (await key.get(own)).status_code == 200, own
        refused = await key.get(other)
        assert refused.status_code == 404, other
        assert "не найден" in refused.text
    # Changes to B's things: 404 too, and nothing changes.
    b_client = f"/ui/client/{scoped.ids['client_BBB']}"
    changed = await post_form(
        key, b_client, {"guid": "g1", "first_name": "X", "last_name": "Y", "email": "q@q.ru"}
    )
    assert changed.status_code == 404
    made = await post_form(
        key, f"/ui/project/{scoped.b}/clients/new", {"guid": "n", **NAMES, "email": "n@b.ru"}
    )
    assert made.status_code == 404
    files = {"file": ("c.csv", b"guid,email\nz,z@b.ru\n", "text/csv")}
    imported = await post_form(
        key, "/ui/clients/import", {"project_id": str(scoped.b)}, files=files
    )
    assert imported.status_code == 404
    template = await post_form(
        key, f"/ui/template/{scoped.ids['template_BBB']}", {"name": "X", "sms_text": "x"}
    )
    assert template.status_code == 404
    seen = await post_form(
        key, "/ui/template/preview", {"project_id": str(scoped.b), "sms_text": "x"}
    )
    assert seen.status_code == 404
    # A's preview may not name B's client either.
    b_client_id = str(scoped.ids["client_BBB"])
    crossing = await post_form(
        key,
        "/ui/template/preview",
        {"project_id": str(scoped.a), "sms_text": "x", "client_id": b_client_id},
    )
    assert crossing.status_code == 404
    listed = assert_ok(await scoped.admin.get("/client/list", params={"project": "BBB"}), 200)
    assert [(c["guid"], c["first_name"]) for c in listed["items"]] == [("g1", "Анна")]
    b_template = assert_ok(await scoped.admin.get(f"/template/{scoped.ids['template_BBB']}"), 200)
    assert b_template["name"] == "Шаблон"
