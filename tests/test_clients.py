"""Clients: contacts normalised and checked, guid unique per project, partial updates."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from conftest import POSTGRESQL_ONLY, StartServer
from helpers import assert_error, assert_ok, fields, make_project

CLIENT: dict[str, Any] = {
    "project": "010",
    "guid": "crm-1",
    "first_name": "Иван",
    "last_name": "Иванов",
    "middle_name": "Иванович",
}


@pytest.fixture
async def project_id(api: httpx.AsyncClient) -> int:
    return await make_project(api, code="010")


@pytest.mark.parametrize(
    ("phone", "stored"),
    [
        ("+7 (916) 123-45-67", "+79161234567"),
        ("8 916 123 45 67", "+79161234567"),
        ("9161234567", "+79161234567"),
        ("+44 20 7946 0958", "+442079460958"),
        (79161234567, "+79161234567"),
    ],
)
async def test_phone_is_stored_in_e164(
    api: httpx.AsyncClient, project_id: int, phone: object, stored: str
) -> None:
    data = assert_ok(await api.post("/client/create", json={**CLIENT, "phone": phone}))
    assert data["phone"] == stored
    assert data["project_id"] == project_id


@pytest.mark.parametrize("phone", ["12345", "not a phone", "+7 916 123", "+999 123 456 789"])
async def test_bad_phone_is_400_naming_the_field(
    api: httpx.AsyncClient, project_id: int, phone: str
) -> None:
    response = await api.post("/client/create", json={**CLIENT, "phone": phone})
    details = assert_error(response, 400, "Ошибка валидации")
    assert fields(details) == {"phone"}
    assert "телефон" in details[0]["message"]


@pytest.mark.parametrize(
    "email", ["ivan", "ivan@", "@example.com", "ivan@@example.com", "a b@c.ru"]
)
async def test_bad_email_is_400_naming_the_field(
    api: httpx.AsyncClient, project_id: int, email: str
) -> None:
    response = await api.post("/client/create", json={**CLIENT, "email": email})
    assert fields(assert_error(response, 400, "Ошибка валидации")) == {"email"}


async def test_email_domain_is_normalised(api: httpx.AsyncClient, project_id: int) -> None:
    data = assert_ok(await api.post("/client/create", json={**CLIENT, "email": "Ivan@EXAMPLE.com"}))
    assert data["email"] == "Ivan@example.com"


async def test_timezone_tags_and_attributes(api: httpx.AsyncClient, project_id: int) -> None:
    body = {
        **CLIENT,
        "email": "ivan@example.com",
        "timezone": "Asia/Vladivostok",
        "tags": ["vip", " vip ", "moscow", ""],
        "attributes": {"city": "Москва", "orders": 3, "nested": {"a": [1, 2]}},
    }
    data = assert_ok(await api.post("/client/create", json=body))
    assert data["timezone"] == "Asia/Vladivostok"
    assert data["tags"] == ["vip", "moscow"]
    assert data["attributes"] == {"city": "Москва", "orders": 3, "nested": {"a": [1, 2]}}
    assert assert_ok(await api.get(f"/client/{data['id']}"), 200) == data


@pytest.mark.parametrize("zone", ["Moscow", "Europe/Nowhere", "+03:00", "../../etc/passwd"])
async def test_unknown_timezone_is_400(api: httpx.AsyncClient, project_id: int, zone: str) -> None:
    response = await api.post(
        "/client/create", json={**CLIENT, "email": "a@b.ru", "timezone": zone}
    )
    assert fields(assert_error(response, 400, "Ошибка валидации")) == {"timezone"}


async def test_attributes_must_be_an_object(api: httpx.AsyncClient, project_id: int) -> None:
    response = await api.post(
        "/client/create", json={**CLIENT, "email": "a@b.ru", "attributes": [1]}
    )
    assert fields(assert_error(response, 400, "Ошибка валидации")) == {"attributes"}


async def test_project_by_code_or_by_id(api: httpx.AsyncClient, project_id: int) -> None:
    by_id = assert_ok(
        await api.post("/client/create", json={**CLIENT, "project": project_id, "email": "a@b.ru"})
    )
    assert by_id["project_id"] == project_id
    response = await api.post(
        "/client/create", json={**CLIENT, "guid": "crm-2", "project": "999", "email": "a@b.ru"}
    )
    details = assert_error(response, 400, "Ошибка валидации")
    assert details == [{"field": "project", "message": "Проект «999» не найден"}]


async def test_a_code_wins_over_an_id(api: httpx.AsyncClient, project_id: int) -> None:
    """ "2" names the project whose code is "2" even when another project has the id 2."""
    numbered = await make_project(api, code=str(project_id + 1), name="Цифры")
    other = await make_project(api, code="other")
    assert other == project_id + 2
    body = {**CLIENT, "project": str(project_id + 1), "email": "a@b.ru"}
    assert assert_ok(await api.post("/client/create", json=body))["project_id"] == numbered
    body = {**CLIENT, "guid": "crm-2", "project": str(other), "email": "a@b.ru"}
    assert assert_ok(await api.post("/client/create", json=body))["project_id"] == other
    body = {**CLIENT, "guid": "crm-3", "project": "²", "email": "a@b.ru"}  # a digit, not ASCII
    details = assert_error(await api.post("/client/create", json=body), 400, "Ошибка валидации")
    assert details == [{"field": "project", "message": "Проект «²» не найден"}]


async def test_the_same_guid_created_at_once_is_stored_once(
    api: httpx.AsyncClient, project_id: int
) -> None:
    body = {**CLIENT, "email": "a@b.ru"}
    answers = await asyncio.gather(*(api.post("/client/create", json=body) for _ in range(8)))
    assert sorted(answer.status_code for answer in answers) == [201] + [409] * 7
    assert assert_ok(await api.get("/client/list"), 200)["total"] == 1


@POSTGRESQL_ONLY
async def test_a_create_after_the_servers_connections_were_cut(
    api: httpx.AsyncClient, project_id: int, backend: str, database_url: str
) -> None:
    """The API's pooled connections closed by the server (a restart, a terminated backend):
    the next create opens new ones instead of failing."""
    assert_ok(await api.post("/client/create", json={**CLIENT, "email": "a@b.ru"}))
    connection = await asyncpg.connect(
        make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    try:
        cut = await connection.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await connection.close()
    assert cut >= 1
    await asyncio.sleep(0.2)  # the closed sockets reach the server's event loop
    body = {**CLIENT, "guid": "crm-2", "email": "b@b.ru"}
    assert assert_ok(await api.post("/client/create", json=body))["guid"] == "crm-2"


async def test_update_changes_only_the_given_fields(
    api: httpx.AsyncClient, project_id: int
) -> None:
    created = assert_ok(
        await api.post("/client/create", json={**CLIENT, "email": "a@b.ru", "tags": ["x"]})
    )
    path = f"/client/{created['id']}/update"
    data = assert_ok(await api.put(path, json={"phone": "+79161234567", "email": None}))
    assert data["phone"] == "+79161234567"
    assert data["email"] is None
    assert data["tags"] == ["x"]
    assert data["first_name"] == "Иван"


async def test_update_cannot_leave_a_client_without_contacts(
    api: httpx.AsyncClient, project_id: int
) -> None:
    created = assert_ok(await api.post("/client/create", json={**CLIENT, "email": "a@b.ru"}))
    response = await api.put(f"/client/{created['id']}/update", json={"email": None})
    assert fields(assert_error(response, 400, "Ошибка валидации")) == {"email", "phone"}
    assert assert_ok(await api.get(f"/client/{created['id']}"), 200)["email"] == "a@b.ru"


async def test_update_to_a_taken_guid_is_409(api: httpx.AsyncClient, project_id: int) -> None:
    assert_ok(await api.post("/client/create", json={**CLIENT, "email": "a@b.ru"}))
    other = assert_ok(
        await api.post("/client/create", json={**CLIENT, "guid": "crm-2", "email": "a@b.ru"})
    )
    response = await api.put(f"/client/{other['id']}/update", json={"guid": "crm-1"})
    assert fields(assert_error(response, 409, "Конфликт: запись уже существует")) == {"guid"}


async def test_list_filters_by_project_and_guid(api: httpx.AsyncClient, project_id: int) -> None:
    await make_project(api, code="020")
    for guid in ("a", "b"):
        assert_ok(
            await api.post("/client/create", json={**CLIENT, "guid": guid, "email": "a@b.ru"})
        )
    assert_ok(
        await api.post(
            "/client/create", json={**CLIENT, "project": "020", "guid": "a", "email": "a@b.ru"}
        )
    )
    assert assert_ok(await api.get("/client/list"), 200)["total"] == 3
    in_010 = assert_ok(await api.get("/client/list", params={"project": "010"}), 200)
    assert {item["guid"] for item in in_010["items"]} == {"a", "b"}
    one = assert_ok(await api.get("/client/list", params={"project": "020", "guid": "a"}), 200)
    assert one["total"] == 1
    assert one["items"][0]["project_id"] != project_id
    unknown = await api.get("/client/list", params={"project": "nope"})
    assert fields(assert_error(unknown, 400, "Ошибка валидации")) == {"project"}


async def test_delete(api: httpx.AsyncClient, project_id: int) -> None:
    created = assert_ok(await api.post("/client/create", json={**CLIENT, "email": "a@b.ru"}))
    assert assert_ok(await api.delete(f"/client/{created['id']}"), 200)["guid"] == "crm-1"
    assert_error(await api.get(f"/client/{created['id']}"), 404, "Страница не найдена")
    # The guid is free again.
    assert_ok(await api.post("/client/create", json={**CLIENT, "email": "a@b.ru"}))


async def test_each_app_reads_phones_in_its_own_region(start_server: StartServer) -> None:
    """RASSYLKA_DEFAULT_PHONE_REGION of the serving app, not of the process's environment."""
    server = await start_server(default_phone_region="US")
    async with httpx.AsyncClient(base_url=server.url) as us_api:
        await make_project(us_api, code="010")
        data = assert_ok(
            await us_api.post("/client/create", json={**CLIENT, "phone": "(201) 555-0123"})
        )
        assert data["phone"] == "+12015550123"
        row = {key: value for key, value in CLIENT.items() if key != "project"}
        imported = await us_api.post(
            "/client/import",
            json={
                "project": "010",
                "clients": [{**row, "guid": "crm-2", "phone": "201 555 0124"}],
            },
        )
        assert assert_ok(imported)["created"] == 1, imported.text
        client = assert_ok(await us_api.get("/client/list", params={"guid": "crm-2"}), 200)
        assert client["items"][0]["phone"] == "+12015550124"


async def test_opted_out_is_false_by_default_and_can_be_set(
    api: httpx.AsyncClient, project_id: int
) -> None:
    plain = assert_ok(await api.post("/client/create", json={**CLIENT, "email": "a@b.ru"}))
    assert plain["opted_out"] is False
    body = {**CLIENT, "guid": "crm-2", "email": "a@b.ru", "opted_out": True}
    refused = assert_ok(await api.post("/client/create", json=body))
    assert refused["opted_out"] is True
    assert assert_ok(await api.get(f"/client/{refused['id']}"), 200)["opted_out"] is True


async def test_update_sets_and_keeps_opted_out(api: httpx.AsyncClient, project_id: int) -> None:
    created = assert_ok(await api.post("/client/create", json={**CLIENT, "email": "a@b.ru"}))
    path = f"/client/{created['id']}/update"
    assert assert_ok(await api.put(path, json={"opted_out": True}))["opted_out"] is True
    # Another field's update leaves it alone.
    assert assert_ok(await api.put(path, json={"last_name": "Петров"}))["opted_out"] is True
    assert assert_ok(await api.put(path, json={"opted_out": "нет"}))["opted_out"] is False
    response = await api.put(path, json={"opted_out": None})
    details = assert_error(response, 400, "Ошибка валидации")
    assert details == [{"field": "opted_out", "message": "Поле нельзя очистить"}]
    assert assert_ok(await api.get(f"/client/{created['id']}"), 200)["opted_out"] is False


@pytest.mark.parametrize("value", ["maybe", "", 2, [True], {"a": 1}])
async def test_opted_out_must_be_a_yes_or_no(
    api: httpx.AsyncClient, project_id: int, value: object
) -> None:
    response = await api.post(
        "/client/create", json={**CLIENT, "email": "a@b.ru", "opted_out": value}
    )
    assert fields(assert_error(response, 400, "Ошибка валидации")) == {"opted_out"}
