"""Every request example of the manual (§3.1), sent verbatim, and its response checked.

The manual gives each body as a schema with ``example`` values; those values, exactly as printed
(strings where the schema says integer, ``"1"`` for the channel list), are the bodies sent here.
The ids the examples reference (project 74892489, project 0236, template 156) are arranged first.
"""

from __future__ import annotations

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from helpers import assert_error, assert_ok, insert_project, insert_template

OK_KEYS = {"status", "message", "data"}


async def test_project_create_example(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/project/create",
        content='{"name": "OCM", "code": "010"}',
        headers={"Content-type": "application/json"},
    )
    assert response.status_code == 201
    body = response.json()
    assert set(body) == OK_KEYS
    assert body["status"] == 201
    assert body["message"] == "Ok"
    assert isinstance(body["data"]["id"], int)
    assert body["data"]["name"] == "OCM"
    assert body["data"]["code"] == "010"  # a code, not a number: the leading zero stays


async def test_project_update_example(api: httpx.AsyncClient, engine: AsyncEngine) -> None:
    await insert_project(engine, id=74892489, code="010", name="OCM")
    response = await api.put(
        "/project/74892489/update", json={"primary key": "74892489", "name": "ОСМ"}
    )
    assert response.status_code == 201
    body = response.json()
    assert set(body) == OK_KEYS
    assert (body["status"], body["message"]) == (201, "Ok")
    assert body["data"]["id"] == 74892489
    assert body["data"]["name"] == "ОСМ"
    assert body["data"]["code"] == "010"
    stored = assert_ok(await api.get("/project/74892489"), 200)
    assert stored["name"] == "ОСМ"


async def test_project_update_example_with_integer_key(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await insert_project(engine, id=74892489, code="010")
    data = assert_ok(
        await api.put("/project/74892489/update", json={"primary key": 74892489, "name": "ОСМ"})
    )
    assert data["name"] == "ОСМ"


async def test_project_update_example_unknown_id_is_404(api: httpx.AsyncClient) -> None:
    response = await api.put(
        "/project/74892489/update", json={"primary key": "74892489", "name": "ОСМ"}
    )
    assert_error(response, 404, "Страница не найдена")


CLIENT_EXAMPLE = {
    "project": "ОСМ",
    "guid": "lisjrfengghb^&Tgfb4*Tasdf",
    "first_name": "Иван",
    "last_name": "Иванов",
    "middle_name": "Иванович",
}


async def test_client_create_example_needs_a_contact(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """The manual's client has no email or phone; DESIGN §2.1 requires one (docs/api.md)."""
    await insert_project(engine, id=1, code="ОСМ")
    details = assert_error(
        await api.post("/client/create", json=CLIENT_EXAMPLE), 400, "Ошибка валидации"
    )
    assert {d["field"] for d in details} == {"email", "phone"}


async def test_client_create_example_with_a_contact(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await insert_project(engine, id=1, code="ОСМ")
    response = await api.post(
        "/client/create", json={**CLIENT_EXAMPLE, "phone": "+7 916 123-45-67"}
    )
    assert response.status_code == 201
    body = response.json()
    assert set(body) == OK_KEYS
    assert (body["status"], body["message"]) == (201, "Ok")
    data = body["data"]
    assert isinstance(data["id"], int)
    assert data["project_id"] == 1
    for field in ("guid", "first_name", "last_name", "middle_name"):
        assert data[field] == CLIENT_EXAMPLE[field]
    assert data["phone"] == "+79161234567"


async def test_mailing_create_example(api: httpx.AsyncClient, engine: AsyncEngine) -> None:
    await insert_project(engine, id=236, code="0236")
    await insert_template(engine, id=156, project_id=236)
    example = {
        "name": "SMSMailing",
        "project_id": "0236",
        "template_id": "156",
        "status": "1",
        "channels": "1",
        "event": "2020-08-02",
    }
    response = await api.post("/mailing/create", json=example)
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == OK_KEYS
    assert (body["status"], body["message"]) == (201, "Ok")
    data = body["data"]
    assert isinstance(data["id"], int)
    assert data["name"] == "SMSMailing"
    assert data["project_id"] == 236
    assert data["template_id"] == 156
    assert data["status"] == 1
    assert data["channels"] == [1]
    assert data["event"] == "2020-08-02T00:00:00+00:00"
    assert data["timezone"] == "UTC"


async def test_error_examples_have_the_manuals_shape(api: httpx.AsyncClient) -> None:
    """§3.1.3–3.1.13: 400, 404 and 405 as the manual prints them (403 and 500 in test_errors)."""
    bad = await api.post("/project/create", json={"name": "OCM"})
    assert bad.json()["code"] == 400
    assert bad.json()["error"]["message"] == "Ошибка валидации"
    assert bad.json()["error"]["status"] == 400
    missing = await api.get("/nowhere")
    assert missing.json() == {
        "code": 404,
        "error": {"message": "Страница не найдена", "status": 404},
    }
    wrong_method = await api.get("/project/create")
    assert wrong_method.json() == {
        "code": 405,
        "error": {"message": "Метод не поддерживается", "status": 405},
    }
