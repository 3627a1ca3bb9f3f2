"""``POST /client/create`` answered by ``FastCreate`` ahead of FastAPI: the same answers as the
endpoint gives, and every request it cannot answer exactly so passed on to the endpoint."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from conftest import StartServer
from helpers import assert_error, assert_ok, fields, make_project
from rassylka.clients import router

CLIENT: dict[str, Any] = {
    "project": "010",
    "guid": "crm-1",
    "first_name": "Иван",
    "last_name": "Иванов",
    "middle_name": "Иванович",
    "email": "Ivan@Example.RU",
    "phone": "8 916 123 45 67",
    "timezone": "Europe/Moscow",
    "tags": ["vip", " vip ", "новый"],
    "attributes": {"город": "Москва", "n": 1.5, "list": [1, None, True]},
}
VARIABLE = ("id", "guid", "created_at", "updated_at")


@pytest.fixture
def endpoint_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many creates FastAPI's endpoint answered (FastCreate answers the others)."""
    calls: list[int] = []
    original = router.created

    def counted(row: Any) -> bytes:
        calls.append(1)
        return original(row)

    monkeypatch.setattr(router, "created", counted)
    return calls


@pytest.fixture
async def project_id(api: httpx.AsyncClient) -> int:
    return await make_project(api, code="010")


async def chunked(body: dict[str, Any] | bytes) -> AsyncIterator[bytes]:
    """A body without Content-Length (httpx sends it chunked): FastCreate passes it on."""
    yield body if isinstance(body, bytes) else json.dumps(body).encode()


def comparable(response: httpx.Response) -> tuple[int, list[tuple[str, str]], dict[str, Any]]:
    headers = [(k, v) for k, v in response.headers.items() if k not in ("date", "content-length")]
    payload = response.json()
    for name in VARIABLE:
        payload["data"].pop(name)
    return response.status_code, headers, payload


async def test_the_same_answer_from_the_fast_path_and_the_endpoint(
    api: httpx.AsyncClient, project_id: int, endpoint_calls: list[int]
) -> None:
    fast = await api.post("/client/create", json=CLIENT)
    assert endpoint_calls == []
    slow = await api.post(
        "/client/create",
        content=chunked({**CLIENT, "guid": "crm-2"}),
        headers={"Content-Type": "application/json"},
    )
    assert endpoint_calls == [1]
    assert comparable(fast) == comparable(slow)
    data = assert_ok(fast)
    assert data["project_id"] == project_id
    assert (data["email"], data["phone"]) == ("Ivan@example.ru", "+79161234567")
    assert data["tags"] == ["vip", "новый"]
    assert data["attributes"] == CLIENT["attributes"]
    # What was answered is what was stored.
    stored = assert_ok(await api.get(f"/client/{data['id']}"), 200)
    assert stored == data
    assert len(fast.content) == int(fast.headers["content-length"])


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "Application/JSON", "application/json"]
)
async def test_json_content_types_take_the_fast_path(
    api: httpx.AsyncClient, project_id: int, endpoint_calls: list[int], content_type: str
) -> None:
    response = await api.post(
        "/client/create",
        content=json.dumps(CLIENT).encode(),
        headers={"Content-Type": content_type},
    )
    assert_ok(response)
    assert endpoint_calls == []


async def test_other_json_types_go_to_the_endpoint(
    api: httpx.AsyncClient, project_id: int, endpoint_calls: list[int]
) -> None:
    response = await api.post(
        "/client/create",
        content=json.dumps(CLIENT).encode(),
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert_ok(response)
    assert endpoint_calls == [1]


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b'{"project": "010", "guid": ', {"body"}),
        (b"[1, 2]", {"body"}),
        (b'"text"', {"body"}),
        (json.dumps({**CLIENT, "guid": ""}).encode(), {"guid"}),
        (json.dumps({**CLIENT, "phone": "12"}).encode(), {"phone"}),
        (json.dumps({**CLIENT, "unknown": 1}).encode(), {"unknown"}),
        (json.dumps({"project": "010"}).encode(), {"guid", "first_name", "last_name"}),
        (b"\xff\xfe\x00", {"body"}),
    ],
)
async def test_bodies_that_do_not_validate_get_the_endpoints_400(
    api: httpx.AsyncClient,
    project_id: int,
    endpoint_calls: list[int],
    body: bytes,
    named: set[str],
) -> None:
    """Passed on with the body already read: the app's own handlers answer, as before."""
    headers = {"Content-Type": "application/json"}
    fast = await api.post("/client/create", content=body, headers=headers)
    details = assert_error(fast, 400, "Ошибка валидации")
    assert fields(details) == named
    slow = await api.post("/client/create", content=chunked(body), headers=headers)
    assert (fast.status_code, fast.content) == (slow.status_code, slow.content)


async def test_domain_errors_get_the_envelope_of_the_apps_handler(
    api: httpx.AsyncClient, project_id: int, endpoint_calls: list[int]
) -> None:
    assert_ok(await api.post("/client/create", json=CLIENT))
    cases = [
        {**CLIENT},  # the guid is taken: 409
        {**CLIENT, "guid": "crm-3", "project": "nope"},  # no such project
        {**CLIENT, "guid": "crm-4", "email": None, "phone": None},  # no contact
    ]
    for body in cases:
        fast = await api.post("/client/create", json=body)
        slow = await api.post(
            "/client/create", content=chunked(body), headers={"Content-Type": "application/json"}
        )
        assert fast.status_code in (400, 404, 409)
        assert (fast.status_code, fast.headers["content-type"], fast.content) == (
            slow.status_code,
            slow.headers["content-type"],
            slow.content,
        )
    assert endpoint_calls == []  # FastAPI's endpoint answered none: they raised before


@pytest.fixture
async def keyed_api(start_server: StartServer) -> AsyncIterator[httpx.AsyncClient]:
    server = await start_server(api_keys=["first-key", "second-key"])
    async with httpx.AsyncClient(base_url=server.url) as client:
        yield client


async def test_the_api_key_is_checked(keyed_api: httpx.AsyncClient) -> None:
    key = {"X-API-Key": "first-key"}
    assert_ok(
        await keyed_api.post("/project/create", json={"name": "OCM", "code": "010"}, headers=key)
    )
    for headers in ({}, {"X-API-Key": "nope"}, {"Authorization": "Bearer nope"}):
        response = await keyed_api.post("/client/create", json=CLIENT, headers=headers)
        assert_error(response, 403, "Доступ запрещен")
    assert_ok(await keyed_api.post("/client/create", json=CLIENT, headers=key))
    bearer = {"Authorization": "Bearer second-key"}
    assert_ok(await keyed_api.post("/client/create", json={**CLIENT, "guid": "b"}, headers=bearer))
    listed = await keyed_api.get("/client/list", headers=key)
    assert assert_ok(listed, 200)["total"] == 2


async def test_a_body_over_the_limit_is_413(start_server: StartServer) -> None:
    server = await start_server(max_body_bytes=200)
    async with httpx.AsyncClient(base_url=server.url) as api:
        await make_project(api, code="010")
        big = {**CLIENT, "attributes": {"x": "y" * 300}}
        assert_error(await api.post("/client/create", json=big), 413, "Слишком большой запрос")


async def test_other_methods_and_paths_are_the_apps(
    api: httpx.AsyncClient, project_id: int
) -> None:
    assert_error(await api.get("/client/create"), 405, "Метод не поддерживается")
    assert (await api.post("/client/create/", json=CLIENT)).status_code != 201
