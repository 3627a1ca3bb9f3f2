"""API keys (docs/security.md): stored hashed, checked by ``AuthMiddleware`` on a real server,
scoped to a project, limited per caller, and kept out of logs and error answers."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from conftest import LiveServer, StartServer, StartWorker
from helpers import assert_error, assert_ok
from rassylka.access import service as key_service
from rassylka.access.keyring import TTL, Caller, KeyRing
from rassylka.access.middleware import OPEN_PATHS, TokenBuckets
from rassylka.access.models import ApiKey
from rassylka.access.redaction import redact
from rassylka.app import create_app
from rassylka.config import Settings
from rassylka.db import create_engine, create_sessionmaker
from test_cli import _env, _run
from test_dispatcher import until

RASSYLKA = Path(sys.executable).with_name("rassylka")
FORBIDDEN = "Доступ запрещен"
NOT_FOUND = "Страница не найдена"
NAMES = {"first_name": "Анна", "last_name": "Петрова"}
CALLBACK = {"id": "peer-1", "status": "DELIVRD"}
SECRET = re.compile(r"^rsk_[A-Za-z0-9_-]{43}$")


async def stored_key(engine: AsyncEngine, project: str | None = None) -> str:
    async with create_sessionmaker(engine)() as session, session.begin():
        _, secret = await key_service.create(session, project_code=project, name=None)
    return secret


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


# -- the command ----------------------------------------------------------------------------


async def test_the_command_makes_lists_and_revokes_keys(
    api: httpx.AsyncClient, database_url: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    assert_ok(await api.post("/project/create", json={"name": "OCM", "code": "010"}))
    env = _env(RASSYLKA_DATABASE_URL=database_url)

    made = _run("apikey", "create", "--project", "010", "--name", "CRM", cwd=tmp_path, env=env)
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert SECRET.match(secret), made.stdout
    assert "больше он не будет показан" in made.stderr
    made_global = _run("apikey", "create", cwd=tmp_path, env=env)
    assert made_global.returncode == 0, made_global.stderr
    other = made_global.stdout.strip()
    assert SECRET.match(other)
    assert other != secret

    async with engine.connect() as connection:
        rows = (await connection.execute(select(ApiKey).order_by(ApiKey.id))).all()
        dumped = str((await connection.execute(text("SELECT * FROM api_key"))).all())
    assert [row.key_hash for row in rows] == [
        hashlib.sha256(secret.encode()).hexdigest(),
        hashlib.sha256(other.encode()).hexdigest(),
    ]
    assert rows[0].project_id is not None
    assert rows[1].project_id is None
    assert rows[0].prefix == secret[:10]
    assert rows[0].name == "CRM"
    assert secret not in dumped, "only hashes are stored"
    assert other not in dumped

    unknown = _run("apikey", "create", "--project", "nope", cwd=tmp_path, env=env)
    assert unknown.returncode == 2
    assert "Проект с кодом «nope» не найден" in unknown.stderr
    assert "Traceback" not in unknown.stderr

    revoked = _run("apikey", "revoke", str(rows[0].id), cwd=tmp_path, env=env)
    assert revoked.returncode == 0, revoked.stderr
    missing = _run("apikey", "revoke", "999999", cwd=tmp_path, env=env)
    assert missing.returncode == 2
    assert "Ключ 999999 не найден" in missing.stderr

    listed = _run("apikey", "list", cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.rstrip("\n").splitlines()
    assert lines[0].split("\t") == ["id", "prefix", "project", "name", "created", "revoked"]
    first, second = (line.split("\t") for line in lines[1:])
    assert first[:4] == [str(rows[0].id), secret[:10] + "…", "010", "CRM"]
    assert first[5], "revoked at"
    assert second[:3] == [str(rows[1].id), other[:10] + "…", "*"]
    assert second[5] == ""
    assert secret not in listed.stdout
    assert other not in listed.stdout


# -- the middleware -------------------------------------------------------------------------


async def test_stored_keys_turn_authorisation_on_and_revoking_turns_a_key_off(
    start_server: StartServer, engine: AsyncEngine
) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        assert_ok(await client.get("/project/list"), 200)  # no keys: open, as the manual says
        secret = await stored_key(engine)
        server.app.state.keyring.expire()

        assert_error(await client.get("/project/list"), 403, FORBIDDEN)
        wrong = await client.get("/project/list", headers=bearer("rsk_guessed-secret-value"))
        assert_error(wrong, 403, FORBIDDEN)
        assert "rsk_guessed-secret-value" not in wrong.text
        assert_error(
            await client.get("/project/list", headers={"Authorization": secret}), 403, FORBIDDEN
        )
        assert_ok(await client.get("/project/list", headers=bearer(secret)), 200)
        assert_ok(await client.get("/project/list", headers={"X-API-Key": secret}), 200)
        # No key needed: health, the docs, and the provider's callbacks (their own token).
        for path in ("/health", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
            assert (await client.get(path)).status_code == 200, path
        callback = await client.post("/webhook/sms/status", json=CALLBACK)
        assert callback.status_code == 200, callback.text
        # A bounce report is the CRM's (or its relay's) call: it needs a key.
        bounce = await client.post("/webhook/bounce", json={"message_id": 1, "type": "hard"})
        assert_error(bounce, 403, FORBIDDEN)
        # ?access_token= only for an event stream.
        query_key = await client.get("/project/list", params={"access_token": secret})
        assert_error(query_key, 403, FORBIDDEN)

        kept = await stored_key(engine)
        async with engine.begin() as connection:
            await connection.execute(
                text("UPDATE api_key SET revoked_at = CURRENT_TIMESTAMP WHERE key_hash = :h"),
                {"h": hashlib.sha256(secret.encode()).hexdigest()},
            )
        started = time.monotonic()
        # No expire(): the process sees the revocation (and the new key) when its snapshot
        # ages out.
        while (await client.get("/project/list", headers=bearer(secret))).status_code != 403:
            assert time.monotonic() - started < TTL + 10, "revocation took effect within TTL"
            await asyncio.sleep(0.2)
        assert_ok(await client.get("/project/list", headers=bearer(kept)), 200)
        assert_error(await client.get("/project/list"), 403, FORBIDDEN)
        # Every key revoked: the API stays locked, it does not fall back to no authorisation.
        async with engine.begin() as connection:
            await connection.execute(text("UPDATE api_key SET revoked_at = CURRENT_TIMESTAMP"))
        server.app.state.keyring.expire()
        assert_error(await client.get("/project/list"), 403, FORBIDDEN)
        assert_error(await client.get("/project/list", headers=bearer(kept)), 403, FORBIDDEN)
        assert (await client.get("/health")).status_code == 200


async def test_the_keyring_reads_the_table_once_per_ttl(engine: AsyncEngine) -> None:
    """Between two reads no request queries the table: a key made meanwhile is unknown until
    the snapshot ages out, and then known; an unreadable table keeps the last snapshot."""
    now = [0.0]
    ring = KeyRing(["env-key"], clock=lambda: now[0])
    ring.engine = engine
    first = await ring.current()
    assert first.required
    assert first.find("env-key") == Caller("env:1")
    secret = await stored_key(engine)
    now[0] = TTL - 0.1
    assert await ring.current() is first
    assert first.find(secret) is None
    now[0] = TTL + 0.1
    found = (await ring.current()).find(secret)
    assert found is not None
    assert found.caller_id.startswith("key:")
    assert found.project_id is None
    await engine.dispose()
    ring.engine = create_engine("sqlite+aiosqlite:////nonexistent-dir/r.db")
    now[0] = 3 * TTL
    assert (await ring.current()).find(secret) == found, "the last snapshot stays in use"
    await ring.engine.dispose()


async def test_an_event_stream_takes_the_key_in_the_query(
    start_server: StartServer,
) -> None:
    server = await start_server(api_keys=["env-key-for-streams"])
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        async with client.stream("GET", "/events", params={"since": 0}) as refused:
            assert refused.status_code == 403
        params = {"since": 0, "access_token": "env-key-for-streams"}
        async with client.stream("GET", "/events", params=params) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")


async def test_a_caller_over_its_rate_gets_429_with_retry_after(
    start_server: StartServer,
) -> None:
    server = await start_server(api_keys=["first", "second"], api_rate_limit=2, api_rate_burst=3)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        codes = [
            (await client.get("/project/list", headers=bearer("first"))).status_code
            for _ in range(6)
        ]
        assert codes[:3] == [200, 200, 200], codes
        assert 429 in codes[3:], codes
        over = await client.get("/project/list", headers=bearer("first"))
        assert_error(over, 429, "Слишком много запросов")
        assert int(over.headers["Retry-After"]) >= 1
        # Per key: the other key still has its burst; health is never limited.
        assert_ok(await client.get("/project/list", headers=bearer("second")), 200)
        for _ in range(10):
            assert (await client.get("/health")).status_code == 200
        await asyncio.sleep(1.2)  # 2 tokens a second: at least one is back
        assert_ok(await client.get("/project/list", headers=bearer("first")), 200)


def test_token_buckets_refill_at_the_rate() -> None:
    now = [0.0]
    buckets = TokenBuckets(rate=10, burst=2, clock=lambda: now[0])
    assert buckets.take("a") == 0
    assert buckets.take("a") == 0
    assert buckets.take("a") == pytest.approx(0.1)
    assert buckets.take("b") == 0
    now[0] = 0.1
    assert buckets.take("a") == 0
    now[0] = 100.0
    assert buckets.take("a") == 0
    assert buckets.take("a") == 0
    assert buckets.take("a") > 0


def test_secret_query_parameters_are_masked() -> None:
    line = '127.0.0.1:5 - "GET /webhook/sms/status?token=abc&n=1 HTTP/1.1" 200'
    assert redact(line) == '127.0.0.1:5 - "GET /webhook/sms/status?token=***&n=1 HTTP/1.1" 200'
    assert redact("/events?since=0&access_token=rsk_a-b_c") == "/events?since=0&access_token=***"
    assert redact("/client/list?monkey=1") == "/client/list?monkey=1"


# -- project scope --------------------------------------------------------------------------


@dataclass
class Two:
    """Projects A and B with one of everything in B; a client with A's scoped key."""

    server: LiveServer
    admin: httpx.AsyncClient
    scoped: httpx.AsyncClient
    a: int
    b: int
    ids: dict[str, int]


@pytest.fixture
async def two(
    start_server: StartServer, engine: AsyncEngine, start_worker: StartWorker
) -> AsyncIterator[Two]:
    server = await start_server(api_keys=["global-key"])
    admin = httpx.AsyncClient(base_url=server.url, timeout=30, headers=bearer("global-key"))
    ids: dict[str, int] = {}
    project = {}
    for code in ("AAA", "BBB"):
        data = assert_ok(await admin.post("/project/create", json={"name": code, "code": code}))
        project[code] = data["id"]
    for code in ("AAA", "BBB"):
        client = {**NAMES, "project": code, "guid": "g1", "email": f"x@{code.lower()}.ru"}
        ids[f"client_{code}"] = assert_ok(await admin.post("/client/create", json=client))["id"]
        template = {
            "project_id": project[code],
            "name": "T",
            "email_subject": "S",
            "email_text": "x",
        }
        ids[f"template_{code}"] = assert_ok(await admin.post("/template/create", json=template))[
            "id"
        ]
        mailing = {
            "name": "M",
            "project_id": project[code],
            "template_id": ids[f"template_{code}"],
            "status": 1,
            "channels": [1],
            "event": "2020-08-02",
        }
        ids[f"mailing_{code}"] = assert_ok(await admin.post("/mailing/create", json=mailing))["id"]
        suppression = {"project": code, "address": f"s@{code.lower()}.ru"}
        ids[f"suppression_{code}"] = assert_ok(
            await admin.post("/suppression/create", json=suppression)
        )["id"]
        webhook = {"project": code, "url": "http://127.0.0.1:9/hook"}
        ids[f"webhook_{code}"] = assert_ok(await admin.post("/webhook/create", json=webhook))["id"]
    await start_worker()  # sends the mailings: B gets a message (for the bounce report)

    async def sent() -> bool:
        async with engine.connect() as connection:
            count = await connection.scalar(
                text("SELECT count(*) FROM message WHERE status = 'sent'")
            )
        return count == 2

    await until(sent)
    async with engine.connect() as connection:
        ids["message_BBB"] = (
            await connection.execute(
                text("SELECT id FROM message WHERE mailing_id = :m"), {"m": ids["mailing_BBB"]}
            )
        ).scalar_one()
    secret = await stored_key(engine, "AAA")
    server.app.state.keyring.expire()
    scoped = httpx.AsyncClient(base_url=server.url, timeout=30, headers=bearer(secret))
    yield Two(server, admin, scoped, project["AAA"], project["BBB"], ids)
    await scoped.aclose()
    await admin.aclose()


# (method, route as the app declares it, the path's id (a key of ``Two.ids``, "project" for B's
# id), the request, the answer to A's key). Every route of the app is here or in OPEN_PATHS:
# test_the_walk_covers_every_route.
CSV = {"content": b"guid,email\nz1,z@b.ru\n", "headers": {"Content-Type": "text/csv"}}
WALK: list[tuple[str, str, str | None, dict[str, Any], int]] = [
    ("POST", "/project/create", None, {"json": {"name": "C", "code": "CCC"}}, 403),
    ("PUT", "/project/{id}/update", "project", {"json": {"name": "x"}}, 404),
    ("GET", "/project/{id}", "project", {}, 404),
    ("DELETE", "/project/{id}", "project", {}, 403),
    ("GET", "/project/list", None, {"params": {"project": "BBB"}}, 200),
    (
        "POST",
        "/client/create",
        None,
        {"json": {**NAMES, "project": "BBB", "guid": "n", "email": "n@b.ru"}},
        403,
    ),
    ("POST", "/client/import", None, {"json": {"project": "BBB", "clients": [{"guid": "z"}]}}, 403),
    ("POST", "/client/import", None, {"params": {"project": "BBB"}, **CSV}, 403),
    ("PUT", "/client/{id}/update", "client_BBB", {"json": {"first_name": "x"}}, 404),
    ("GET", "/client/list", None, {"params": {"project": "BBB"}}, 403),
    ("GET", "/client/{id}", "client_BBB", {}, 404),
    ("GET", "/client/{id}/messages", "client_BBB", {}, 404),
    ("DELETE", "/client/{id}", "client_BBB", {}, 404),
    (
        "POST",
        "/template/create",
        None,
        {"json": {"project": "BBB", "name": "T", "sms_text": "x"}},
        403,
    ),
    ("PUT", "/template/{id}/update", "template_BBB", {"json": {"name": "x"}}, 404),
    ("GET", "/template/list", None, {"params": {"project": "BBB"}}, 403),
    ("GET", "/template/{id}", "template_BBB", {}, 404),
    ("DELETE", "/template/{id}", "template_BBB", {}, 404),
    ("POST", "/mailing/create", None, {"json": "mailing_in_B"}, 403),
    ("PUT", "/mailing/{id}/update", "mailing_BBB", {"json": {"name": "x"}}, 404),
    ("POST", "/mailing/{id}/start", "mailing_BBB", {}, 404),
    ("POST", "/mailing/{id}/pause", "mailing_BBB", {}, 404),
    ("POST", "/mailing/{id}/resume", "mailing_BBB", {}, 404),
    ("POST", "/mailing/{id}/cancel", "mailing_BBB", {}, 404),
    ("GET", "/mailing/list", None, {"params": {"project": "BBB"}}, 403),
    ("GET", "/mailing/{id}/schedule", "mailing_BBB", {}, 404),
    ("GET", "/mailing/{id}/runs", "mailing_BBB", {}, 404),
    ("GET", "/mailing/{id}/stats", "mailing_BBB", {}, 404),
    ("POST", "/mailing/{id}/retry-failed", "mailing_BBB", {}, 404),
    ("GET", "/mailing/{id}/messages", "mailing_BBB", {}, 404),
    ("GET", "/mailing/{id}", "mailing_BBB", {}, 404),
    ("DELETE", "/mailing/{id}", "mailing_BBB", {}, 404),
    ("GET", "/mailing/{id}/events", "mailing_BBB", {}, 404),
    ("GET", "/events", None, {"params": {"project_id": "project_B"}}, 403),
    ("POST", "/suppression/create", None, {"json": {"project": "BBB", "address": "q@b.ru"}}, 403),
    ("GET", "/suppression/list", None, {"params": {"project": "BBB"}}, 403),
    ("GET", "/suppression/{id}", "suppression_BBB", {}, 404),
    ("DELETE", "/suppression/{id}", "suppression_BBB", {}, 404),
    (
        "POST",
        "/webhook/create",
        None,
        {"json": {"project": "BBB", "url": "http://127.0.0.1:9/h"}},
        403,
    ),
    ("GET", "/webhook/list", None, {"params": {"project": "BBB"}}, 403),
    ("GET", "/webhook/list", None, {"params": {"project_id": "project_B"}}, 403),
    ("GET", "/webhook/{id}", "webhook_BBB", {}, 404),
    ("PUT", "/webhook/{id}/update", "webhook_BBB", {"json": {"active": False}}, 404),
    ("DELETE", "/webhook/{id}", "webhook_BBB", {}, 404),
    ("GET", "/webhook/{id}/deliveries", "webhook_BBB", {}, 404),
    ("POST", "/webhook/bounce", None, {"json": "bounce_of_B"}, 404),
    (
        "POST",
        "/webhook/bounce",
        None,
        {"json": {"project": "BBB", "email": "x@bbb.ru", "type": "hard"}},
        403,
    ),
]


def test_the_walk_covers_every_route() -> None:
    """Every operation the app declares (its OpenAPI schema) is walked or open."""
    app = create_app(Settings(database_url="sqlite+aiosqlite:///:memory:"))
    declared = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
        if path not in OPEN_PATHS
    }
    assert len(declared) > 40
    assert declared == {(method, path) for method, path, *_ in WALK}


def test_the_schema_declares_the_key_where_it_is_taken() -> None:
    schema = create_app(Settings(database_url="sqlite+aiosqlite:///:memory:")).openapi()
    assert schema["components"]["securitySchemes"]["APIKey"]["scheme"] == "bearer"
    assert schema["paths"]["/client/create"]["post"]["security"] == [{"APIKey": []}, {}]
    assert "security" not in schema["paths"]["/health"]["get"]
    assert "security" not in schema["paths"]["/webhook/sms/status"]["post"]


async def test_a_project_key_sees_and_changes_only_its_project(two: Two) -> None:
    for method, route, id_of, request, expected in WALK:
        object_id = two.b if id_of == "project" else two.ids.get(id_of or "", 0)
        options = dict(request)
        if options.get("json") == "mailing_in_B":
            options["json"] = {
                "name": "M",
                "project_id": two.b,
                "template_id": two.ids["template_BBB"],
                "status": 0,
                "channels": [1],
            }
        if options.get("json") == "bounce_of_B":
            options["json"] = {"message_id": two.ids["message_BBB"], "type": "hard"}
        if "params" in options:
            options["params"] = {
                key: two.b if value == "project_B" else value
                for key, value in options["params"].items()
            }
        path = route.replace("{id}", str(object_id))
        async with two.scoped.stream(method, path, **options) as response:
            await response.aread()
        where = f"{method} {path}"
        assert response.status_code == expected, (where, response.text)
        if expected == 200:  # the project list, whatever it is asked: A's alone
            assert [p["id"] for p in response.json()["data"]["items"]] == [two.a], where
        else:
            message = FORBIDDEN if expected == 403 else NOT_FOUND
            assert_error(response, expected, message)
    # Nothing of B changed or went: each is there, as it was.
    for kind in ("client", "template", "mailing", "suppression", "webhook"):
        found = await two.admin.get(f"/{kind}/{two.ids[f'{kind}_BBB']}")
        assert found.status_code == 200, (kind, found.text)
    mailing = assert_ok(await two.admin.get(f"/mailing/{two.ids['mailing_BBB']}"), 200)
    assert mailing["name"] == "M"
    assert mailing["status"] != 4
    messages = assert_ok(await two.admin.get(f"/mailing/{two.ids['mailing_BBB']}/messages"), 200)
    assert [m["status"] for m in messages["items"]] == ["sent"]
    assert_ok(await two.admin.get(f"/project/{two.b}"), 200)


async def replayed(client: httpx.AsyncClient, seconds: float = 3.0) -> list[dict[str, Any]]:
    """The events ``GET /events?since=0`` replays within ``seconds`` (the history comes at
    once; the time only bounds the read of a stream that does not end)."""
    events: list[dict[str, Any]] = []

    async def read() -> None:
        async with client.stream("GET", "/events", params={"since": 0}) as stream:
            assert stream.status_code == 200
            async for line in stream.aiter_lines():
                if line.startswith("data:") and '"message_id"' in line:
                    events.append(json.loads(line[5:]))

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await read()
    return events


async def test_a_project_key_works_in_its_own_project(two: Two) -> None:
    for path in (
        "/client/list",
        "/template/list",
        "/mailing/list",
        "/suppression/list",
        "/webhook/list",
    ):
        items = assert_ok(await two.scoped.get(path), 200)["items"]
        assert {item["project_id"] for item in items} == {two.a}, path
    by_code = {**NAMES, "project": "AAA", "guid": "g2", "email": "y@aaa.ru"}
    assert assert_ok(await two.scoped.post("/client/create", json=by_code))["project_id"] == two.a
    by_id = {**NAMES, "project": two.a, "guid": "g3", "email": "z@aaa.ru"}
    assert assert_ok(await two.scoped.post("/client/create", json=by_id))["project_id"] == two.a
    assert_ok(await two.scoped.get(f"/client/{two.ids['client_AAA']}"), 200)
    assert_ok(await two.scoped.get(f"/mailing/{two.ids['mailing_AAA']}/stats"), 200)
    renamed = await two.scoped.put(f"/project/{two.a}/update", json={"name": "A2"})
    assert assert_ok(renamed)["name"] == "A2"
    # The stream of every project is, for this key, its project's.
    everyone = await replayed(two.admin)
    assert {event["project_id"] for event in everyone} == {two.a, two.b}
    own = await replayed(two.scoped)
    assert [event["id"] for event in own] == [
        event["id"] for event in everyone if event["project_id"] == two.a
    ]
    # An unknown project is refused like another's: nothing tells the two apart.
    unknown = {**NAMES, "project": "ZZZ", "guid": "g4", "email": "w@aaa.ru"}
    assert_error(await two.scoped.post("/client/create", json=unknown), 403, FORBIDDEN)
    # The global key sees both projects.
    listed = assert_ok(await two.admin.get("/client/list"), 200)["items"]
    assert {item["project_id"] for item in listed} == {two.a, two.b}


# -- served processes -----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_up(process: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("the server did not answer in 30 s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.mark.parametrize("command", ["api", "serve"])
def test_no_keys_on_an_open_address_refuses_to_start(command: str, tmp_path: Path) -> None:
    env = _env(RASSYLKA_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    started = time.monotonic()
    refused = _run(command, "--host", "0.0.0.0", "--port", str(_free_port()), cwd=tmp_path, env=env)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "ключей API нет" in refused.stderr
    assert "--insecure-no-auth" in refused.stderr
    assert time.monotonic() - started < 30


def test_an_open_address_starts_with_the_flag_or_with_a_key(tmp_path: Path) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'r.db'}"
    assert (
        _run("db", "upgrade", cwd=tmp_path, env=_env(RASSYLKA_DATABASE_URL=database)).returncode
        == 0
    )
    for extra, env in (
        (["--insecure-no-auth"], _env(RASSYLKA_DATABASE_URL=database)),
        ([], _env(RASSYLKA_DATABASE_URL=database, RASSYLKA_API_KEYS="k")),
    ):
        port = _free_port()
        process = subprocess.Popen(
            [str(RASSYLKA), "api", "--host", "0.0.0.0", "--port", str(port), *extra],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_up(process, port)
        finally:
            _stop(process)


def test_secrets_stay_out_of_the_served_process_log(tmp_path: Path) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'r.db'}"
    assert (
        _run("db", "upgrade", cwd=tmp_path, env=_env(RASSYLKA_DATABASE_URL=database)).returncode
        == 0
    )
    env = _env(
        RASSYLKA_DATABASE_URL=database,
        RASSYLKA_API_KEYS="env-secret-key-1",
        RASSYLKA_SMS_HTTP_CALLBACK_TOKEN="callback-secret-2",
    )
    port = _free_port()
    log = tmp_path / "api.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(RASSYLKA), "api", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_up(process, port)
            url = f"http://127.0.0.1:{port}"
            callback = httpx.post(
                f"{url}/webhook/sms/status?token=callback-secret-2", json=CALLBACK, timeout=10
            )
            assert callback.status_code == 200, callback.text
            wrong = httpx.get(f"{url}/webhook/sms/status?token=wrong-token-3", timeout=10)
            assert "wrong-token-3" not in wrong.text
            params = {"since": "0", "access_token": "env-secret-key-1"}
            with httpx.stream("GET", f"{url}/events", params=params, timeout=10) as stream:
                assert stream.status_code == 200
            refused = httpx.get(f"{url}/project/list", headers=bearer("guessed-key-4"), timeout=10)
            assert refused.status_code == 403
            assert "guessed-key-4" not in refused.text
            assert_ok(httpx.get(f"{url}/project/list", headers=bearer("env-secret-key-1")), 200)
            time.sleep(0.5)
        finally:
            _stop(process)
    written = log.read_text()
    assert "/webhook/sms/status?token=***" in written, written  # the access log is on
    assert "/events?since=0&access_token=***" in written, written
    for secret in ("env-secret-key-1", "callback-secret-2", "wrong-token-3", "guessed-key-4"):
        assert secret not in written, secret
