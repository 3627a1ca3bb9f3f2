"""Projects: create, update (the manual's ``primary key``), list, read, delete."""

from __future__ import annotations

import httpx

from helpers import assert_error, assert_ok, fields, make_project, make_template


async def test_create_strips_and_returns_the_stored_project(api: httpx.AsyncClient) -> None:
    data = assert_ok(await api.post("/project/create", json={"name": "  OCM ", "code": " 010 "}))
    assert (data["name"], data["code"]) == ("OCM", "010")
    assert data["created_at"].endswith("Z") or "+00:00" in data["created_at"]
    assert assert_ok(await api.get(f"/project/{data['id']}"), 200) == data


async def test_empty_name_or_code_is_400(api: httpx.AsyncClient) -> None:
    details = assert_error(
        await api.post("/project/create", json={"name": " ", "code": ""}), 400, "Ошибка валидации"
    )
    assert {(d["field"], d["message"]) for d in details} == {
        ("name", "Значение не может быть пустым"),
        ("code", "Значение не может быть пустым"),
    }


async def test_update_without_primary_key_uses_the_path(api: httpx.AsyncClient) -> None:
    project_id = await make_project(api)
    data = assert_ok(await api.put(f"/project/{project_id}/update", json={"name": "Новое"}))
    assert data["name"] == "Новое"
    assert data["updated_at"] >= data["created_at"]


async def test_update_with_mismatched_primary_key_is_400(api: httpx.AsyncClient) -> None:
    project_id = await make_project(api)
    response = await api.put(
        f"/project/{project_id}/update", json={"primary key": project_id + 1, "name": "x"}
    )
    details = assert_error(response, 400, "Ошибка валидации")
    assert fields(details) == {"primary key"}
    assert assert_ok(await api.get(f"/project/{project_id}"), 200)["name"] == "OCM"


async def test_update_with_nothing_to_change_is_400(api: httpx.AsyncClient) -> None:
    project_id = await make_project(api)
    response = await api.put(f"/project/{project_id}/update", json={"primary key": project_id})
    assert_error(response, 400, "Ошибка валидации")


async def test_update_may_change_the_code(api: httpx.AsyncClient) -> None:
    project_id = await make_project(api, code="010")
    data = assert_ok(await api.put(f"/project/{project_id}/update", json={"code": "011"}))
    assert data["code"] == "011"
    assert data["name"] == "OCM"


async def test_list_pages_in_id_order(api: httpx.AsyncClient) -> None:
    ids = [await make_project(api, code=f"p{n}") for n in range(5)]
    first = assert_ok(await api.get("/project/list?limit=2"), 200)
    assert first["total"] == 5
    assert [item["id"] for item in first["items"]] == ids[:2]
    rest = assert_ok(await api.get("/project/list?limit=10&offset=2"), 200)
    assert [item["id"] for item in rest["items"]] == ids[2:]
    assert (rest["limit"], rest["offset"]) == (10, 2)


async def test_delete_removes_the_project_and_what_belongs_to_it(api: httpx.AsyncClient) -> None:
    project_id = await make_project(api)
    template_id = await make_template(api, project_id)
    client = {"project": "010", "guid": "g", "first_name": "А", "last_name": "Б", "email": "a@b.ru"}
    client_id = assert_ok(await api.post("/client/create", json=client))["id"]
    mailing = {
        "name": "m",
        "project_id": project_id,
        "template_id": template_id,
        "status": 0,
        "channels": [1],
        "event": "2030-01-01",
    }
    mailing_id = assert_ok(await api.post("/mailing/create", json=mailing))["id"]
    deleted = assert_ok(await api.delete(f"/project/{project_id}"), 200)
    assert deleted["id"] == project_id
    for path in (
        f"/project/{project_id}",
        f"/client/{client_id}",
        f"/template/{template_id}",
        f"/mailing/{mailing_id}",
    ):
        assert_error(await api.get(path), 404, "Страница не найдена")
    # The freed code can be used again.
    assert await make_project(api, code="010")


async def test_senders_and_frequency_caps_are_set_read_and_cleared(api: httpx.AsyncClient) -> None:
    body = {
        "name": "Магазин",
        "code": "senders",
        "sms_sender": "SHOP",
        "email_from": "Магазин <news@shop.example.ru>",
        "email_reply_to": "help@shop.example.ru",
        "frequency_cap": {"email": 3, "sms": 1},
    }
    data = assert_ok(await api.post("/project/create", json=body))
    assert (data["sms_sender"], data["email_from"], data["email_reply_to"]) == (
        "SHOP",
        "Магазин <news@shop.example.ru>",
        "help@shop.example.ru",
    )
    assert data["frequency_cap"] == {"email": 3, "sms": 1}
    project_id = data["id"]
    # Only the cap named changes; null clears it.
    data = assert_ok(
        await api.put(f"/project/{project_id}/update", json={"frequency_cap": {"sms": None}})
    )
    assert data["frequency_cap"] == {"email": 3, "sms": None}
    data = assert_ok(
        await api.put(
            f"/project/{project_id}/update", json={"sms_sender": "+79161234567", "email_from": None}
        )
    )
    assert (data["sms_sender"], data["email_from"], data["name"]) == (
        "+79161234567",
        None,
        "Магазин",
    )
    assert assert_ok(await api.get(f"/project/{project_id}"), 200)["frequency_cap"] == {
        "email": 3,
        "sms": None,
    }


async def test_a_bad_sender_or_cap_is_a_400_naming_the_field(api: httpx.AsyncClient) -> None:
    body = {
        "name": "Магазин",
        "code": "bad-senders",
        "sms_sender": "Слишком-длинное-имя",
        "email_from": "not an address",
        "frequency_cap": {"email": 0},
    }
    details = assert_error(await api.post("/project/create", json=body), 400, "Ошибка валидации")
    assert {d["field"] for d in details} == {"sms_sender", "email_from", "frequency_cap.email"}
    assert any("буквенное имя" in d["message"] for d in details)
