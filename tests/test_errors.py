"""Every error code of the contract, provoked for real, in the manual's envelope."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from conftest import StartServer
from helpers import assert_error, assert_ok, fields, make_project, make_template

VALIDATION = "Ошибка валидации"
FORBIDDEN = "Доступ запрещен"
NOT_FOUND = "Страница не найдена"
NOT_ALLOWED = "Метод не поддерживается"
INTERNAL = "Внутренняя ошибка сервера"


# -- 400 ---------------------------------------------------------------------------------------


async def test_missing_fields_are_each_named(api: httpx.AsyncClient) -> None:
    details = assert_error(await api.post("/project/create", json={}), 400, VALIDATION)
    assert fields(details) == {"name", "code"}
    assert all(detail["message"] == "Обязательное поле" for detail in details)


async def test_wrong_types_are_400_never_422(api: httpx.AsyncClient) -> None:
    response = await api.post("/project/create", json={"name": ["OCM"], "code": {"a": 1}})
    details = assert_error(response, 400, VALIDATION)
    assert {(d["field"], d["message"]) for d in details} == {
        ("name", "Ожидается строка"),
        ("code", "Ожидается строка"),
    }
    project_id = await make_project(api)
    response = await api.post(
        "/mailing/create",
        json={
            "name": "m",
            "project_id": "abc",
            "template_id": 1.5,
            "status": 9,
            "channels": ["fax"],
            "event": "вчера",
        },
    )
    details = assert_error(response, 400, VALIDATION)
    assert fields(details) == {"project_id", "template_id", "status", "channels", "event"}
    assert project_id  # the project exists; the body alone was wrong


async def test_unknown_field_is_rejected(api: httpx.AsyncClient) -> None:
    response = await api.post("/project/create", json={"name": "a", "code": "b", "nmae": "c"})
    details = assert_error(response, 400, VALIDATION)
    assert details == [{"field": "nmae", "message": "Неизвестное поле"}]


@pytest.mark.parametrize(
    "content",
    ['{"name": "OCM", "code": ', "{'name': 'OCM'}", "", "\xff\xfe"],
    ids=["truncated", "single-quotes", "empty", "not-utf8"],
)
async def test_malformed_json_is_400(api: httpx.AsyncClient, content: str) -> None:
    response = await api.post(
        "/project/create",
        content=content.encode("latin-1"),
        headers={"Content-Type": "application/json"},
    )
    details = assert_error(response, 400, VALIDATION)
    assert details, "the client is told what was wrong"


async def test_json_that_is_not_an_object_is_400(api: httpx.AsyncClient) -> None:
    details = assert_error(await api.post("/project/create", json=[1, 2]), 400, VALIDATION)
    assert details[0]["message"] == "Ожидается объект JSON"


async def test_body_of_another_type_is_400(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/project/create", content=b"name=OCM&code=010", headers={"Content-Type": "text/plain"}
    )
    assert_error(response, 400, VALIDATION)


async def test_bad_query_parameters_are_400(api: httpx.AsyncClient) -> None:
    details = assert_error(await api.get("/project/list?limit=0"), 400, VALIDATION)
    assert fields(details) == {"limit"}
    details = assert_error(await api.get("/project/list?offset=x"), 400, VALIDATION)
    assert fields(details) == {"offset"}


# -- 403 ---------------------------------------------------------------------------------------


async def test_api_key_missing_or_wrong_is_403(keyed_api: httpx.AsyncClient) -> None:
    body = {"name": "OCM", "code": "010"}
    response = await keyed_api.post("/project/create", json=body)
    assert response.json() == {"code": 403, "error": {"message": FORBIDDEN, "status": 403}}
    assert response.status_code == 403
    wrong = await keyed_api.post("/project/create", json=body, headers={"X-API-Key": "nope"})
    assert_error(wrong, 403, FORBIDDEN)
    wrong_bearer = await keyed_api.get("/project/list", headers={"Authorization": "Bearer nope"})
    assert_error(wrong_bearer, 403, FORBIDDEN)


async def test_api_key_accepted_in_either_header(keyed_api: httpx.AsyncClient) -> None:
    body = {"name": "OCM", "code": "010"}
    assert_ok(
        await keyed_api.post("/project/create", json=body, headers={"X-API-Key": "first-key"})
    )
    listed = await keyed_api.get("/project/list", headers={"Authorization": "Bearer second-key"})
    assert assert_ok(listed, 200)["total"] == 1


async def test_health_needs_no_key(keyed_api: httpx.AsyncClient) -> None:
    assert (await keyed_api.get("/health")).status_code == 200


async def test_no_keys_configured_means_open(api: httpx.AsyncClient) -> None:
    """The manual, §2.1.1: «авторизация не требуется»."""
    assert_ok(await api.post("/project/create", json={"name": "OCM", "code": "010"}))


# -- 404 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/nothing", "/projects/create", "/project/1/delete", "/client/abc"])
async def test_unknown_path_is_404(api: httpx.AsyncClient, path: str) -> None:
    assert (await api.get(path)).json() == {
        "code": 404,
        "error": {"message": NOT_FOUND, "status": 404},
    }


@pytest.mark.parametrize(
    ("entity", "change"),
    [("project", "name"), ("client", "first_name"), ("template", "name"), ("mailing", "name")],
)
async def test_unknown_id_is_404_for_read_update_delete(
    api: httpx.AsyncClient, entity: str, change: str
) -> None:
    details = assert_error(await api.get(f"/{entity}/999"), 404, NOT_FOUND)
    assert fields(details) == {"id"}
    assert "999" in details[0]["message"]
    assert_error(await api.put(f"/{entity}/999/update", json={change: "x"}), 404, NOT_FOUND)
    assert_error(await api.delete(f"/{entity}/999"), 404, NOT_FOUND)


async def test_id_beyond_any_integer_column_is_404(api: httpx.AsyncClient) -> None:
    assert_error(await api.get(f"/project/{2**70}"), 404, NOT_FOUND)


# -- 405 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/project/create"),
        ("PUT", "/project/create"),
        ("POST", "/project/1/update"),
        ("PATCH", "/project/1/update"),
        ("GET", "/client/create"),
        ("GET", "/mailing/create"),
        ("POST", "/project/list"),
        ("POST", "/health"),
    ],
)
async def test_wrong_method_on_a_known_path_is_405(
    api: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await api.request(method, path)
    assert response.json() == {"code": 405, "error": {"message": NOT_ALLOWED, "status": 405}}
    assert response.status_code == 405
    assert response.headers.get("allow")


# -- 409 ---------------------------------------------------------------------------------------


async def test_duplicate_project_code_is_409(api: httpx.AsyncClient) -> None:
    await make_project(api, code="010")
    response = await api.post("/project/create", json={"name": "другой", "code": "010"})
    details = assert_error(response, 409, "Конфликт: запись уже существует")
    assert fields(details) == {"code"}
    other = await make_project(api, code="020")
    response = await api.put(f"/project/{other}/update", json={"name": "x", "code": "010"})
    assert_error(response, 409, "Конфликт: запись уже существует")


async def test_duplicate_guid_in_a_project_is_409_but_not_across_projects(
    api: httpx.AsyncClient,
) -> None:
    await make_project(api, code="A")
    await make_project(api, code="B")
    client = {"guid": "g-1", "first_name": "И", "last_name": "И", "email": "a@example.com"}
    assert_ok(await api.post("/client/create", json={**client, "project": "A"}))
    response = await api.post("/client/create", json={**client, "project": "A"})
    assert fields(assert_error(response, 409, "Конфликт: запись уже существует")) == {"guid"}
    assert_ok(await api.post("/client/create", json={**client, "project": "B"}))


# -- 413 ---------------------------------------------------------------------------------------


async def test_declared_body_over_the_limit_is_413(start_server: StartServer) -> None:
    server = await start_server(max_body_bytes=1000)
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.post("/project/create", json={"name": "x" * 2000, "code": "1"})
        assert response.json() == {
            "code": 413,
            "error": {"message": "Слишком большой запрос", "status": 413},
        }
        assert response.status_code == 413
        small = await client.post("/project/create", json={"name": "x" * 100, "code": "1"})
        assert_ok(small)


async def test_chunked_body_over_the_limit_is_413(start_server: StartServer) -> None:
    server = await start_server(max_body_bytes=1000)

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "'
        for _ in range(20):
            yield b"x" * 100
        yield b'", "code": "1"}'

    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.post(
            "/project/create", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert "content-length" not in response.request.headers
        assert_error(response, 413, "Слишком большой запрос")
        listed = assert_ok(await client.get("/project/list"), 200)
        assert listed["total"] == 0, "nothing of the refused body was stored"


# -- 500 ---------------------------------------------------------------------------------------


async def test_internal_error_is_the_envelope_without_a_traceback(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    project_id = await make_project(api)
    await make_template(api, project_id)
    async with engine.begin() as connection:  # the database loses a table under the service
        # RENAME, not DROP: runs and messages reference the table, and a rename
        # behaves the same on SQLite and PostgreSQL.
        await connection.execute(text("ALTER TABLE mailing RENAME TO mailing_gone"))
    response = await api.get("/mailing/list")
    assert response.status_code == 500
    assert response.json() == {"code": 500, "error": {"message": INTERNAL, "status": 500}}
    for leak in ("Traceback", "sqlalchemy", "mailing", "File "):
        assert leak not in response.text
