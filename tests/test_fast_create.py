"""``POST /client/create`` answered by ``FastCreate`` ahead of FastAPI: the same answers as the
endpoint gives, and every request it cannot answer exactly so passed on to the endpoint."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from conftest import POSTGRESQL_ONLY, StartServer
from helpers import assert_error, assert_ok, fields, make_project
from rassylka.clients import router
from rassylka.clients.repository import PoolNewClients

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


# -- PostgreSQL: the creates waiting written by one statement -----------------------------------


def row_fields(guid: str, **changes: Any) -> dict[str, Any]:
    return {
        "guid": guid,
        "first_name": "Иван",
        "last_name": "Иванов",
        "middle_name": "",
        "email": f"{guid}@example.ru",
        "phone": None,
        "timezone": None,
        "tags": ["a"],
        "attributes": {"k": guid},
        "opted_out": False,
        "email_opted_out": False,
        "sms_opted_out": False,
        "email_consent": "unknown",
        "email_consent_at": None,
        "email_consent_source": None,
        "sms_consent": "unknown",
        "sms_consent_at": None,
        "sms_consent_source": None,
        "phone_timezone": None,
        **changes,
    }


@POSTGRESQL_ONLY
async def test_creates_waiting_together_share_a_statement(
    api: httpx.AsyncClient, project_id: int, engine: AsyncEngine, backend: str
) -> None:
    """Each answer is its own request's: written, or None when the project is unknown or the
    guid taken (in the database, or earlier in the same batch); a row the database refuses
    fails only its own request."""
    other = await make_project(api, code="020")
    writer = await PoolNewClients.open(engine, writers=2)
    statements: list[int] = []
    try:
        first = await writer.insert(project_code="010", project_id=None, fields=row_fields("g0"))
        assert first is not None
        asks = [
            *(("010", None, row_fields(f"g{n}")) for n in range(1, 30)),
            (None, other, row_fields("g1")),  # the same guid in another project: written
            ("nope", None, row_fields("g40")),  # no such project
            ("010", None, row_fields("g0")),  # taken before
            ("010", None, row_fields("g5", first_name="second")),  # taken in this batch
            ("010", None, row_fields("g41", first_name="bad\x00")),  # refused by PostgreSQL
        ]
        original = writer._run

        async def counted(connection: Any, batch: list[Any]) -> None:
            statements.append(len(batch))
            await original(connection, batch)

        writer._run = counted  # type: ignore[method-assign]
        answers = await asyncio.gather(
            *(
                writer.insert(project_code=code, project_id=number, fields=fields)
                for code, number, fields in asks
            ),
            return_exceptions=True,
        )
    finally:
        await writer.close()
    assert max(statements) > 10  # many rows in one statement
    *written, unknown, taken, second_g5, refused = answers
    first_g5 = written[4]
    # The same guid asked twice at once: one of the two is written, the other finds it taken.
    assert (first_g5 is None) != (second_g5 is None)
    del written[4]
    assert all(isinstance(row, dict) for row in written)
    guids = [row["guid"] for row in written]  # type: ignore[index]
    assert guids == [f"g{n}" for n in range(1, 30) if n != 5] + ["g1"]
    assert {row["project_id"] for row in written[:-1]} == {project_id}  # type: ignore[index]
    assert written[-1]["project_id"] == other  # type: ignore[index]
    assert (unknown, taken) == (None, None)
    assert isinstance(refused, asyncpg.PostgresError)
    async with engine.connect() as connection:
        stored = {
            (guid, project): (number, name, attributes)
            for number, guid, project, name, attributes in await connection.execute(
                text("SELECT id, guid, project_id, first_name, attributes FROM client")
            )
        }
    assert len(stored) == 31
    g5 = first_g5 or second_g5
    assert stored["g5", project_id][:2] == (g5["id"], g5["first_name"])  # type: ignore[index]
    for row in written:
        number, _, attributes = stored[row["guid"], row["project_id"]]  # type: ignore[index]
        assert (number, attributes) == (row["id"], {"k": row["guid"]})  # type: ignore[index]


@POSTGRESQL_ONLY
async def test_no_create_is_left_waiting(
    api: httpx.AsyncClient, project_id: int, engine: AsyncEngine, backend: str
) -> None:
    """A create asked while the writer is finishing (its last answer given, its connection
    not yet released) still gets a writer: one after another, and many at once."""
    writer = await PoolNewClients.open(engine, writers=1)

    async def client(number: int, count: int) -> int:
        answered = 0
        for n in range(count):
            await asyncio.sleep(random.random() / 500 if number else 0)
            fields = row_fields(f"c{number}-{n}")
            if await writer.insert(project_code="010", project_id=None, fields=fields):
                answered += 1
        return answered

    try:
        async with asyncio.timeout(60):
            assert await client(0, 10) == 10
            writer.writers = 2
            answered = await asyncio.gather(*(client(number, 25) for number in range(1, 13)))
    finally:
        await writer.close()
    assert answered == [25] * 12
