"""``Idempotency-Key`` on every POST and PUT: a CRM's retry gets the first answer, not a second
object. A real server on each database (see conftest); the rows are counted in the database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, insert, select, table, text
from sqlalchemy.ext.asyncio import AsyncEngine

from conftest import LiveServer, StartServer
from helpers import assert_error, assert_ok, make_project, make_template
from rassylka.config import Settings
from rassylka.db import utcnow
from rassylka.engine.upkeep import ExpiredKeys
from rassylka.idempotency.middleware import fingerprint
from rassylka.idempotency.models import IdempotencyRecord

OTHER_REQUEST = "Ключ идемпотентности уже использован с другим запросом"
IN_PROGRESS = "Запрос с этим ключом идемпотентности ещё выполняется, повторите позже"
CLIENT = {
    "project": "010",
    "guid": "crm-1",
    "first_name": "Иван",
    "last_name": "Иванов",
    "phone": "+79161234567",
}

ROW = {name: value for name, value in CLIENT.items() if name != "project"}  # an import's


def creates(template_id: int) -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """Each create endpoint: its path, the table it writes, a body, and another body."""
    return [
        (
            "/project/create",
            "project",
            {"name": "Другой", "code": "020"},
            {"name": "Т", "code": "030"},
        ),
        ("/client/create", "client", CLIENT, {**CLIENT, "guid": "crm-2"}),
        (
            "/client/import",
            "client",
            {"project": "010", "clients": [{**ROW, "guid": "crm-3"}]},
            {"project": "010", "clients": [{**ROW, "guid": "crm-4"}]},
        ),
        (
            "/template/create",
            "template",
            {"project_id": 1, "name": "Письмо", "sms_text": "Привет"},
            {"project_id": 1, "name": "Письмо", "sms_text": "Пока"},
        ),
        (
            "/mailing/create",
            "mailing",
            {
                "name": "Осенняя",
                "project_id": 1,
                "template_id": template_id,
                "status": 0,
                "channels": [2],
                "event": "2030-08-02",
            },
            {
                "name": "Весенняя",
                "project_id": 1,
                "template_id": template_id,
                "status": 0,
                "channels": [2],
                "event": "2030-08-02",
            },
        ),
        (
            "/suppression/create",
            "suppression",
            {"project": "010", "address": "a@example.com"},
            {"project": "010", "address": "b@example.com"},
        ),
        (
            "/webhook/create",
            "webhook",
            {"project": "010", "url": "http://127.0.0.1:9/hook"},
            {"project": "010", "url": "http://127.0.0.1:9/other"},
        ),
    ]


async def count(engine: AsyncEngine, name: str) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(select(func.count()).select_from(table(name))) or 0)


def key(value: str) -> dict[str, str]:
    return {"Idempotency-Key": value}


async def test_every_create_answers_a_retry_once_and_refuses_another_body(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    project_id = await make_project(api)
    assert project_id == 1
    template_id = await make_template(api, project_id)
    for number, (path, table_name, body, other) in enumerate(creates(template_id)):
        before = await count(engine, table_name)
        first = await api.post(path, json=body, headers=key(f"key-{number}"))
        assert first.status_code in (200, 201), (path, first.text)
        assert "idempotent-replayed" not in first.headers
        again = await api.post(path, json=body, headers=key(f"key-{number}"))
        assert again.status_code == first.status_code, path
        assert again.content == first.content, path  # byte for byte: the same id, secret, …
        assert again.headers["idempotent-replayed"] == "true"
        assert again.headers["content-type"] == "application/json"
        assert await count(engine, table_name) == before + 1, path
        refused = await api.post(path, json=other, headers=key(f"key-{number}"))
        assert_error(refused, 409, OTHER_REQUEST)
        assert await count(engine, table_name) == before + 1, path
        # The same body under a new key is a new request (here: refused as a duplicate, or a
        # second object where duplicates are allowed), never the stored answer.
        fresh = await api.post(path, json=body, headers=key(f"new-{number}"))
        assert "idempotent-replayed" not in fresh.headers


async def test_a_key_is_the_same_request_only_on_the_same_path_and_query(
    api: httpx.AsyncClient,
) -> None:
    await make_project(api)
    body = {"name": "Проект", "code": "020"}
    assert_ok(await api.post("/project/create", json=body, headers=key("k")))
    assert_error(
        await api.post("/project/create?x=1", json=body, headers=key("k")), 409, OTHER_REQUEST
    )
    assert_error(
        await api.put("/project/1/update", json={"name": "Проект"}, headers=key("k")),
        409,
        OTHER_REQUEST,
    )


async def test_update_and_mailing_actions_are_idempotent_too(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    project_id = await make_project(api)
    first = await api.put(f"/project/{project_id}/update", json={"name": "Новое"}, headers=key("u"))
    assert_ok(first)
    async with engine.begin() as connection:  # changed meanwhile by someone else
        await connection.execute(text("UPDATE project SET name = 'Чужое'"))
    again = await api.put(f"/project/{project_id}/update", json={"name": "Новое"}, headers=key("u"))
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    async with engine.connect() as connection:
        assert await connection.scalar(text("SELECT name FROM project")) == "Чужое"


async def test_a_4xx_is_kept_and_a_5xx_is_not(
    api: httpx.AsyncClient, engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    await make_project(api)
    # 400: the same input gives the same answer, so it is kept.
    bad = {"project": "010", "address": ""}
    first = await api.post("/suppression/create", json=bad, headers=key("bad"))
    assert first.status_code == 400
    again = await api.post("/suppression/create", json=bad, headers=key("bad"))
    assert (again.status_code, again.content) == (400, first.content)
    assert again.headers["idempotent-replayed"] == "true"

    # 500: the endpoint's table is away (a real failure of the database, not a stub).
    body = {"project": "010", "address": "a@example.com"}
    async with engine.begin() as connection:
        await connection.execute(text("ALTER TABLE suppression RENAME TO suppression_away"))
    failed = await api.post("/suppression/create", json=body, headers=key("five"))
    assert_error(failed, 500, "Внутренняя ошибка сервера")
    async with engine.begin() as connection:
        await connection.execute(text("ALTER TABLE suppression_away RENAME TO suppression"))
    async with engine.connect() as connection:
        kept = await connection.scalar(select(func.count()).where(IdempotencyRecord.key == "five"))
    assert kept == 0
    retried = await api.post("/suppression/create", json=body, headers=key("five"))
    assert_ok(retried)  # ran again, and made the object this time
    assert "idempotent-replayed" not in retried.headers
    assert await count(engine, "suppression") == 1


@pytest.mark.parametrize("path", ["/project/create", "/client/create"])
async def test_concurrent_retries_make_one_object(
    api: httpx.AsyncClient, engine: AsyncEngine, path: str
) -> None:
    await make_project(api)
    body = CLIENT if path == "/client/create" else {"name": "Проект", "code": "020"}
    responses = await asyncio.gather(
        *(api.post(path, json=body, headers=key("same")) for _ in range(6))
    )
    statuses = sorted(response.status_code for response in responses)
    assert set(statuses) <= {201, 409}, [response.text for response in responses]
    created = [response for response in responses if response.status_code == 201]
    assert created
    # Every 201 is the one answer (the winner's, or its replay); the others were told to retry.
    assert len({response.content for response in created}) == 1
    for response in responses:
        if response.status_code == 409:
            assert_error(response, 409, IN_PROGRESS)
            assert response.headers["retry-after"] == "1"
    table_name = "client" if path == "/client/create" else "project"
    assert await count(engine, table_name) == (1 if path == "/client/create" else 2)


@pytest.mark.parametrize("value", ["", "ключ", "a" * 256, "tab\there"])
async def test_an_invalid_key_is_400_naming_the_header(
    api: httpx.AsyncClient, engine: AsyncEngine, value: str
) -> None:
    response = await api.post(
        "/project/create",
        json={"name": "OCM", "code": "010"},
        headers=[("Idempotency-Key", value.encode())],
    )
    details = assert_error(response, 400, "Ошибка валидации")
    assert [detail["field"] for detail in details] == ["Idempotency-Key"]
    assert await count(engine, "project") == 0


async def test_a_key_of_255_printable_characters_is_taken(api: httpx.AsyncClient) -> None:
    value = "".join(chr(32 + n % 95) for n in range(1, 256))
    assert len(value) == 255
    first = await api.post(
        "/project/create", json={"name": "OCM", "code": "010"}, headers=key(value)
    )
    assert_ok(first)
    again = await api.post(
        "/project/create", json={"name": "OCM", "code": "010"}, headers=key(value)
    )
    assert again.content == first.content


async def test_without_the_header_nothing_is_stored(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await make_project(api)
    assert_ok(await api.post("/client/create", json=CLIENT))
    assert await count(engine, "idempotency_key") == 0


async def record(
    engine: AsyncEngine,
    *,
    key_value: str,
    request_hash: str,
    age: float,
    status_code: int | None = None,
    scope: str = "",
) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            insert(IdempotencyRecord).values(
                scope=scope,
                key=key_value,
                method="POST",
                path="/project/create",
                request_hash=request_hash,
                status_code=status_code,
                response_body=b'{"status": 201}' if status_code else None,
                created_at=utcnow() - timedelta(seconds=age),
            )
        )


def project_hash(body: bytes) -> str:
    return fingerprint({"method": "POST", "path": "/project/create", "query_string": b""}, body)


async def test_a_key_in_progress_is_409_until_its_owner_is_presumed_dead(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    body = b'{"name": "OCM", "code": "010"}'
    headers = {"content-type": "application/json", "Idempotency-Key": "busy"}
    await record(engine, key_value="busy", request_hash=project_hash(body), age=5)
    response = await api.post("/project/create", content=body, headers=headers)
    assert_error(response, 409, IN_PROGRESS)
    assert response.headers["retry-after"] == "1"
    assert await count(engine, "project") == 0

    # Left by a process that died 2 minutes ago: a retry takes it over and answers.
    await record(engine, key_value="dead", request_hash=project_hash(body), age=120)
    headers["Idempotency-Key"] = "dead"
    taken = await api.post("/project/create", content=body, headers=headers)
    assert_ok(taken)
    again = await api.post("/project/create", content=body, headers=headers)
    assert again.content == taken.content
    assert again.headers["idempotent-replayed"] == "true"
    assert await count(engine, "project") == 1


async def test_an_expired_key_is_new_again_and_the_upkeep_deletes_it(
    start_server: Any, engine: AsyncEngine
) -> None:
    server = await start_server(idempotency_ttl=3600)
    body = b'{"name": "OCM", "code": "010"}'
    await record(engine, key_value="old", request_hash="0" * 64, age=7200, status_code=201)
    await record(engine, key_value="kept", request_hash="0" * 64, age=60, status_code=201)
    async with httpx.AsyncClient(base_url=server.url) as api:
        response = await api.post(
            "/project/create",
            content=body,
            headers={"content-type": "application/json", "Idempotency-Key": "old"},
        )
    assert_ok(response)  # another hash, yet no 409: the old answer is gone
    assert "idempotent-replayed" not in response.headers
    await record(engine, key_value="older", request_hash="0" * 64, age=7300, status_code=201)
    assert await ExpiredKeys(engine, ttl=3600).purge() == 1
    async with engine.connect() as connection:
        keys = set(await connection.scalars(select(IdempotencyRecord.key)))
    assert keys == {"old", "kept"}


async def test_two_api_keys_never_share_a_key(
    start_server: StartServer, engine: AsyncEngine
) -> None:
    server = await start_server(api_keys=["first-key", "second-key"])
    async with httpx.AsyncClient(base_url=server.url) as api:

        async def create(api_key: str, code: str) -> httpx.Response:
            headers = {**key("shared"), "Authorization": f"Bearer {api_key}"}
            body = {"name": "Проект", "code": code}
            return await api.post("/project/create", json=body, headers=headers)

        first = await create("first-key", "020")
        assert_ok(first)
        assert_ok(await create("second-key", "030"))  # another key's "shared" is its own
        assert_error(await create("first-key", "040"), 409, OTHER_REQUEST)
        replay = await create("first-key", "020")
        assert replay.content == first.content
    async with engine.connect() as connection:
        scopes = sorted(await connection.scalars(select(IdempotencyRecord.scope)))
    assert scopes == ["env:1", "env:2"]
    assert await count(engine, "project") == 2


async def test_database_away_is_503_not_500(nowhere: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=nowhere.url, timeout=10) as api:
        response = await api.post(
            "/project/create", json={"name": "OCM", "code": "010"}, headers=key("k")
        )
    assert_error(response, 503, "Сервис недоступен")
    assert response.headers["retry-after"] == "1"


async def test_openapi_declares_the_header_on_every_post_and_put(api: httpx.AsyncClient) -> None:
    schema = (await api.get("/openapi.json")).json()
    seen = 0
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            names = {parameter["name"] for parameter in operation.get("parameters", [])}
            if method in ("post", "put"):
                seen += 1
                assert "Idempotency-Key" in names, (method, path)
                assert {"400", "409"} <= set(operation["responses"]), (method, path)
            else:
                assert "Idempotency-Key" not in names, (method, path)
    assert seen >= 10


async def test_a_chunked_body_over_the_limit_is_413(start_server: Any, engine: AsyncEngine) -> None:
    server = await start_server(max_body_bytes=1000)

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "'
        for _ in range(20):
            yield b"x" * 100
        yield b'", "code": "1"}'

    async with httpx.AsyncClient(base_url=server.url) as api:
        response = await api.post(
            "/project/create",
            content=chunks(),  # no Content-Length: the limit is met while reading
            headers={"content-type": "application/json", "Idempotency-Key": "big"},
        )
    assert_error(response, 413, "Слишком большой запрос")
    assert await count(engine, "idempotency_key") == 0


async def test_the_worker_deletes_expired_keys(engine: AsyncEngine, start_worker: Any) -> None:
    await record(engine, key_value="old", request_hash="0" * 64, age=2 * 86400, status_code=201)
    await record(engine, key_value="new", request_hash="0" * 64, age=60, status_code=201)
    await start_worker()
    for _ in range(600):  # the upkeep's first round is at the worker's start
        if await count(engine, "idempotency_key") == 1:
            break
        await asyncio.sleep(0.05)
    async with engine.connect() as connection:
        assert list(await connection.scalars(select(IdempotencyRecord.key))) == ["new"]


async def test_a_retried_mailing_start_gets_its_first_answer(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    project_id = await make_project(api)
    template_id = await make_template(api, project_id)
    body = creates(template_id)[4][2]  # a draft
    mailing_id = assert_ok(await api.post("/mailing/create", json=body))["id"]
    first = await api.post(f"/mailing/{mailing_id}/start", headers=key("go"))
    assert assert_ok(first, 200)["status"] == 1
    # Started already: without the key a second start is refused; with it, the first answer.
    again = await api.post(f"/mailing/{mailing_id}/start", headers=key("go"))
    assert (again.status_code, again.content) == (200, first.content)
    assert again.headers["idempotent-replayed"] == "true"
    assert (await api.post(f"/mailing/{mailing_id}/start")).status_code == 409


async def test_a_csv_import_sent_again_byte_for_byte_is_replayed(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await make_project(api)
    csv = "guid,first_name,last_name,phone\nc-1,Иван,Иванов,+79161234567\n".encode()
    # One multipart body, sent twice as a CRM's retry resends it (a new boundary is a new body).
    upload = httpx.Request("POST", "http://x/", files={"file": ("clients.csv", csv, "text/csv")})
    headers = {"content-type": upload.headers["content-type"], "Idempotency-Key": "csv"}
    path = "/client/import?project=010"
    first = await api.post(path, content=upload.read(), headers=headers)
    assert assert_ok(first)["created"] == 1
    again = await api.post(path, content=upload.read(), headers=headers)
    assert again.content == first.content  # "created": 1 again, not "updated": 1
    assert again.headers["idempotent-replayed"] == "true"
    assert await count(engine, "client") == 1


async def test_a_streamed_answer_or_an_error_raised_keeps_no_key(
    engine: AsyncEngine, settings: Settings
) -> None:
    """The middleware around a small Starlette app of its own (called in-process through
    httpx's ASGI transport): the API has no POST that streams nor one whose error escapes the
    app's handlers, yet the middleware must let both through and keep nothing."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    from rassylka.idempotency.middleware import IdempotencyMiddleware

    calls = {"stream": 0, "boom": 0}

    async def stream(request: Request) -> StreamingResponse:
        calls["stream"] += 1
        body = await request.body()  # before streaming: then Starlette listens for disconnect

        async def parts() -> AsyncIterator[bytes]:
            yield b'{"part": 1, '
            yield b'"body": ' + body + b"}"

        return StreamingResponse(parts(), media_type="application/json")

    async def boom(request: Request) -> None:
        calls["boom"] += 1
        raise RuntimeError("not answered by a handler")

    app = Starlette(
        routes=[
            Route("/stream", stream, methods=["POST"]),
            Route("/boom", boom, methods=["POST"]),
        ],
        middleware=[Middleware(IdempotencyMiddleware)],
    )
    app.state.engine = engine
    app.state.settings = settings
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for _ in range(2):
            response = await client.post("/stream", content=b"[1]", headers=key("s"))
            assert response.content == b'{"part": 1, "body": [1]}'
            assert "idempotent-replayed" not in response.headers
            assert (await client.post("/boom", headers=key("b"))).status_code == 500
    assert calls == {"stream": 2, "boom": 2}  # each retry ran again
    assert await count(engine, "idempotency_key") == 0
