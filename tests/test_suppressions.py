"""Suppressions: a project's do-not-send list, addresses normalised as clients' contacts are."""

from __future__ import annotations

import httpx
import pytest

from conftest import StartServer
from helpers import assert_error, assert_ok, fields, make_project

VALIDATION = "Ошибка валидации"


@pytest.fixture
async def project_id(api: httpx.AsyncClient) -> int:
    return await make_project(api, code="010")


async def suppress(api: httpx.AsyncClient, address: object, **body: object) -> httpx.Response:
    return await api.post(
        "/suppression/create", json={"project": "010", "address": address, **body}
    )


@pytest.mark.parametrize(
    ("address", "stored"),
    [
        ("Ivan@EXAMPLE.com", "ivan@example.com"),
        ("  ivan@example.com ", "ivan@example.com"),
        ("8 916 123-45-67", "+79161234567"),
        ("+7 (916) 123-45-67", "+79161234567"),
        (79161234567, "+79161234567"),
    ],
)
async def test_address_is_stored_as_clients_store_it(
    api: httpx.AsyncClient, project_id: int, address: object, stored: str
) -> None:
    data = assert_ok(await suppress(api, address, reason=" Жалоба на спам "))
    assert data["address"] == stored
    assert data["project_id"] == project_id
    assert data["reason"] == "Жалоба на спам"
    assert data["created_at"]
    assert assert_ok(await api.get(f"/suppression/{data['id']}"), 200) == data


async def test_reason_is_optional_and_empty_means_none(
    api: httpx.AsyncClient, project_id: int
) -> None:
    assert assert_ok(await suppress(api, "a@example.com"))["reason"] is None
    assert assert_ok(await suppress(api, "b@example.com", reason="  "))["reason"] is None
    assert assert_ok(await suppress(api, "c@example.com", reason=None))["reason"] is None


async def test_project_by_id_and_unknown_project(api: httpx.AsyncClient, project_id: int) -> None:
    data = assert_ok(
        await api.post(
            "/suppression/create", json={"project": project_id, "address": "a@example.com"}
        )
    )
    assert data["project_id"] == project_id
    response = await api.post(
        "/suppression/create", json={"project": "999", "address": "a@example.com"}
    )
    details = assert_error(response, 400, VALIDATION)
    assert details == [{"field": "project", "message": "Проект «999» не найден"}]


async def test_suppressing_an_address_again_returns_the_existing_row(
    api: httpx.AsyncClient, project_id: int
) -> None:
    first = assert_ok(await suppress(api, "+79161234567", reason="Жалоба"))
    again = assert_ok(await suppress(api, "8 (916) 123-45-67", reason="Другая причина"))
    assert again == first, "the first reason and date stand"
    assert assert_ok(await api.get("/suppression/list"), 200)["total"] == 1
    await make_project(api, code="020")
    other = assert_ok(await suppress(api, "+79161234567", project="020"))
    assert other["id"] != first["id"], "each project has its own list"
    assert assert_ok(await api.get("/suppression/list"), 200)["total"] == 2


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("12345", "Некорректный адрес «12345»: ожидается email или номер телефона"),
        ("not an address", "Некорректный адрес «not an address»"),
        ("ivan@", "Некорректный email «ivan@»"),
        ("@example.com", "Некорректный email «@example.com»"),
        ("", "Значение не может быть пустым"),
        (None, "Ожидается строка"),
        ("a" * 310 + "@example.com", "Не длиннее 320 символов"),
    ],
)
async def test_bad_address_is_a_400_naming_it(
    api: httpx.AsyncClient, project_id: int, address: object, message: str
) -> None:
    details = assert_error(await suppress(api, address), 400, VALIDATION)
    assert fields(details) == {"address"}
    assert details[0]["message"].startswith(message), details


async def test_body_is_checked(api: httpx.AsyncClient, project_id: int) -> None:
    response = await api.post("/suppression/create", json={"project": "010"})
    assert fields(assert_error(response, 400, VALIDATION)) == {"address"}
    response = await suppress(api, "a@example.com", comment="x")
    assert assert_error(response, 400, VALIDATION) == [
        {"field": "comment", "message": "Неизвестное поле"}
    ]
    response = await suppress(api, "a@example.com", reason="x" * 1001)
    assert fields(assert_error(response, 400, VALIDATION)) == {"reason"}


async def test_list_filters_by_project_and_address(api: httpx.AsyncClient, project_id: int) -> None:
    await make_project(api, code="020")
    for address in ("a@example.com", "+79161234567", "b@example.com"):
        assert_ok(await suppress(api, address))
    assert_ok(await suppress(api, "+79161234567", project="020"))

    everything = assert_ok(await api.get("/suppression/list"), 200)
    assert everything["total"] == 4
    assert [item["id"] for item in everything["items"]] == sorted(
        item["id"] for item in everything["items"]
    )
    in_010 = assert_ok(await api.get("/suppression/list", params={"project": "010"}), 200)
    assert [item["address"] for item in in_010["items"]] == [
        "a@example.com",
        "+79161234567",
        "b@example.com",
    ]
    # The address filter is normalised as the address was.
    phone = assert_ok(
        await api.get("/suppression/list", params={"address": "8 916 123 45 67"}), 200
    )
    assert phone["total"] == 2
    assert {item["project_id"] for item in phone["items"]} == {project_id, project_id + 1}
    one = assert_ok(
        await api.get(
            "/suppression/list", params={"project": "020", "address": "+7 916 123-45-67"}
        ),
        200,
    )
    assert one["total"] == 1
    assert one["items"][0]["project_id"] != project_id
    page = assert_ok(
        await api.get("/suppression/list", params={"project": "010", "limit": 2, "offset": 1}), 200
    )
    assert (page["total"], page["limit"], page["offset"]) == (3, 2, 1)
    assert [item["address"] for item in page["items"]] == ["+79161234567", "b@example.com"]

    unknown = await api.get("/suppression/list", params={"project": "nope"})
    assert fields(assert_error(unknown, 400, VALIDATION)) == {"project"}
    bad = await api.get("/suppression/list", params={"address": "12345"})
    assert fields(assert_error(bad, 400, VALIDATION)) == {"address"}
    too_many = await api.get("/suppression/list", params={"limit": 1001})
    assert fields(assert_error(too_many, 400, VALIDATION)) == {"limit"}


async def test_read_and_delete(api: httpx.AsyncClient, project_id: int) -> None:
    created = assert_ok(await suppress(api, "a@example.com", reason="Отписался"))
    assert assert_ok(await api.delete(f"/suppression/{created['id']}"), 200) == created
    assert_error(await api.get(f"/suppression/{created['id']}"), 404, "Страница не найдена")
    assert_error(await api.delete(f"/suppression/{created['id']}"), 404, "Страница не найдена")
    assert assert_ok(await api.get("/suppression/list"), 200)["total"] == 0
    # Suppressed anew, the address gets a new row with the new reason.
    again = assert_ok(await suppress(api, "a@example.com", reason="Снова"))
    assert again["reason"] == "Снова"
    assert assert_ok(await api.get("/suppression/list"), 200)["total"] == 1


async def test_unknown_ids_are_404(api: httpx.AsyncClient, project_id: int) -> None:
    assert_error(await api.get("/suppression/999"), 404, "Страница не найдена")
    assert_error(await api.delete("/suppression/999"), 404, "Страница не найдена")
    assert_error(await api.get("/suppression/abc"), 404, "Страница не найдена")
    assert_error(await api.get("/suppression/0"), 404, "Страница не найдена")
    assert_error(await api.put("/suppression/create", json={}), 405, "Метод не поддерживается")


async def test_deleting_the_project_deletes_its_suppressions(
    api: httpx.AsyncClient, project_id: int
) -> None:
    created = assert_ok(await suppress(api, "a@example.com"))
    assert_ok(await api.delete(f"/project/{project_id}"), 200)
    assert_error(await api.get(f"/suppression/{created['id']}"), 404, "Страница не найдена")


async def test_api_key_is_required_when_configured(start_server: StartServer) -> None:
    server = await start_server(api_keys=["secret"])
    async with httpx.AsyncClient(base_url=server.url) as api:
        assert_error(await api.get("/suppression/list"), 403, "Доступ запрещен")
        response = await api.get("/suppression/list", headers={"X-API-Key": "secret"})
        assert assert_ok(response, 200)["total"] == 0
