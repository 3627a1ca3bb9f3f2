"""Templates: sandboxed Jinja2 checked at create time, one text at least, scoped to a project."""

from __future__ import annotations

import httpx
import pytest

from helpers import assert_error, assert_ok, fields, make_project, make_template


@pytest.fixture
async def project_id(api: httpx.AsyncClient) -> int:
    return await make_project(api, code="010")


async def test_create_and_read(api: httpx.AsyncClient, project_id: int) -> None:
    body = {
        "project_id": project_id,
        "name": "Напоминание",
        "email_subject": "{{ first_name }}, ваш заказ",
        "email_html": "<p>Здравствуйте, {{ first_name }}!</p>{% if attributes.vip %}VIP{% endif %}",
        "email_text": "Здравствуйте, {{ first_name }}!",
        "sms_text": "{{ first_name }}, заказ готов",
    }
    data = assert_ok(await api.post("/template/create", json=body))
    for key, value in body.items():
        assert data[key] == value
    assert assert_ok(await api.get(f"/template/{data['id']}"), 200) == data


async def test_project_by_code(api: httpx.AsyncClient, project_id: int) -> None:
    data = assert_ok(
        await api.post("/template/create", json={"project": "010", "name": "t", "sms_text": "hi"})
    )
    assert data["project_id"] == project_id


@pytest.mark.parametrize(
    ("field", "source"),
    [
        ("email_subject", "Привет, {{ first_name"),
        ("email_html", "{% if x %}без конца"),
        ("email_text", "{% for %}{% endfor %}"),
        ("sms_text", "{{ name | no_such_filter }}"),
    ],
)
async def test_syntax_error_is_400_naming_the_field(
    api: httpx.AsyncClient, project_id: int, field: str, source: str
) -> None:
    body = {"project_id": project_id, "name": "t", "email_subject": "s", "email_text": "t"}
    body["sms_text"] = "ok"
    body[field] = source
    details = assert_error(await api.post("/template/create", json=body), 400, "Ошибка валидации")
    assert fields(details) == {field}
    assert details[0]["message"].startswith("Ошибка синтаксиса шаблона в строке 1")


async def test_brackets_nested_too_deep_for_the_parser_are_a_syntax_error(
    api: httpx.AsyncClient, project_id: int
) -> None:
    """Jinja's parser recurses once per bracket: ``{`` * 81 ran out of stack (a 500)."""
    body = {"project_id": project_id, "name": "t", "sms_text": "{" * 500}
    details = assert_error(await api.post("/template/create", json=body), 400, "Ошибка валидации")
    assert details == [
        {
            "field": "sms_text",
            "message": "Ошибка синтаксиса шаблона: слишком глубокая вложенность скобок",
        }
    ]


async def test_a_template_says_something(api: httpx.AsyncClient, project_id: int) -> None:
    response = await api.post("/template/create", json={"project_id": project_id, "name": "t"})
    assert fields(assert_error(response, 400, "Ошибка валидации")) == {"email_subject", "sms_text"}


async def test_an_email_needs_subject_and_body(api: httpx.AsyncClient, project_id: int) -> None:
    only_subject = {"project_id": project_id, "name": "t", "email_subject": "s"}
    response = await api.post("/template/create", json=only_subject)
    assert fields(assert_error(response, 400, "Ошибка валидации")) == {"email_html"}
    only_body = {"project_id": project_id, "name": "t", "email_html": "<p>x</p>"}
    response = await api.post("/template/create", json=only_body)
    assert fields(assert_error(response, 400, "Ошибка валидации")) == {"email_subject"}


async def test_unknown_project_is_400(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/template/create", json={"project_id": 5, "name": "t", "sms_text": "x"}
    )
    assert fields(assert_error(response, 400, "Ошибка валидации")) == {"project_id"}
    response = await api.post("/template/create", json={"name": "t", "sms_text": "x"})
    assert_error(response, 400, "Ошибка валидации")


async def test_update_checks_the_result(api: httpx.AsyncClient, project_id: int) -> None:
    template_id = await make_template(api, project_id, sms_text="hi")
    data = assert_ok(await api.put(f"/template/{template_id}/update", json={"sms_text": "{{ x }}"}))
    assert data["sms_text"] == "{{ x }}"
    response = await api.put(f"/template/{template_id}/update", json={"sms_text": None})
    assert_error(response, 400, "Ошибка валидации")
    response = await api.put(f"/template/{template_id}/update", json={"sms_text": "{{"})
    assert fields(assert_error(response, 400, "Ошибка валидации")) == {"sms_text"}
    assert assert_ok(await api.get(f"/template/{template_id}"), 200)["sms_text"] == "{{ x }}"


async def test_list_by_project(api: httpx.AsyncClient, project_id: int) -> None:
    other = await make_project(api, code="020")
    mine = await make_template(api, project_id, sms_text="a")
    await make_template(api, other, sms_text="b")
    listed = assert_ok(await api.get("/template/list", params={"project": "010"}), 200)
    assert [item["id"] for item in listed["items"]] == [mine]
    assert assert_ok(await api.get("/template/list"), 200)["total"] == 2


async def test_a_template_in_use_cannot_be_deleted(api: httpx.AsyncClient, project_id: int) -> None:
    template_id = await make_template(api, project_id)
    mailing = {
        "name": "m",
        "project_id": project_id,
        "template_id": template_id,
        "status": 0,
        "channels": [2],
        "event": "2030-01-01",
    }
    mailing_id = assert_ok(await api.post("/mailing/create", json=mailing))["id"]
    details = assert_error(
        await api.delete(f"/template/{template_id}"), 409, "Конфликт: запись уже существует"
    )
    assert str(mailing_id) in details[0]["message"]
    assert_ok(await api.delete(f"/mailing/{mailing_id}"), 200)
    assert_ok(await api.delete(f"/template/{template_id}"), 200)
    assert_error(await api.get(f"/template/{template_id}"), 404, "Страница не найдена")
