"""Schemathesis against /openapi.json of a real server: every operation, valid and invalid input.

For each operation in the schema, Hypothesis (through schemathesis) makes requests from the
declared parameters and bodies — ones that fit the schema and ones that break it — and sends
them over HTTP to the app served by uvicorn on 127.0.0.1, on SQLite and on PostgreSQL. Every
answer must:

- not be a 5xx (``not_a_server_error``);
- have a status the operation declares (``status_code_conformance``);
- have the declared content type (``content_type_conformance``) and match the declared schema
  (``response_schema_conformance``);
- if it is an error, be the manual's envelope with ``code`` equal to the HTTP status
  (``error_envelope``, ours).

The number of examples per operation is ``RASSYLKA_FUZZ_EXAMPLES`` (a few in the ordinary run,
many in ``make fuzz``); the run is derandomized, so the same code gets the same requests.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import text

from conftest import LiveServer, serve
from helpers import assert_error, assert_ok, fields, make_project
from rassylka.app import create_app
from rassylka.config import Settings
from rassylka.db import create_engine
from rassylka.schemas import NUL_MESSAGE

HTTP_METHODS = {"get", "put", "post", "delete", "patch"}
EXAMPLES = int(os.environ.get("RASSYLKA_FUZZ_EXAMPLES", "10"))
# Scenarios of linked calls in the stateful test, and calls per scenario at most. Fewer than
# about 50 scenarios (derandomized) never get a created id through a link to a 2xx.
STATEFUL_EXAMPLES = max(50, EXAMPLES // 2)
STATEFUL_STEPS = 10
# A file to append each operation's count of answers by status to (for `make fuzz`'s summary).
STATS = os.environ.get("RASSYLKA_FUZZ_STATS")
# Tokens the providers' callbacks check, so that fuzzing reaches past the 403.
SMS_TOKEN = "fuzz-sms-token"


class ThreadedServer:
    """The app on uvicorn in a thread of its own: schemathesis calls it synchronously (with
    requests), which would block a server running in the test's own event loop."""

    def __init__(self, settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-server")
        self.thread.start()
        self.server: LiveServer = self.run(serve(settings))

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        try:
            self.run(self.server.stop())
            self.run(_cancel_the_rest())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=60)
            self.loop.close()


async def _cancel_the_rest() -> None:
    """What the server left running (sse-starlette's shutdown watcher) ends before its loop."""
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _created(response: httpx.Response) -> int:
    assert response.status_code == 201, response.text
    return int(response.json()["data"]["id"])


def _seed(url: str) -> dict[str, int]:
    """One of each thing the API can name by id, so that generated ids often exist."""
    with httpx.Client(base_url=url, timeout=30) as client:
        project = _created(client.post("/project/create", json={"name": "Fuzz", "code": "fuzz"}))
        template = _created(
            client.post(
                "/template/create",
                json={
                    "project_id": project,
                    "name": "Шаблон",
                    "email_subject": "Здравствуйте, {{ first_name }}",
                    "email_text": "Текст для {{ first_name }}",
                    "sms_text": "{{ first_name }}, привет",
                },
            )
        )
        client_id = _created(
            client.post(
                "/client/create",
                json={
                    "project": "fuzz",
                    "guid": "fuzz-1",
                    "first_name": "Иван",
                    "last_name": "Иванов",
                    "email": "ivan@example.com",
                    "phone": "+79001234567",
                },
            )
        )
        mailing = _created(
            client.post(
                "/mailing/create",
                json={
                    "name": "Рассылка",
                    "project_id": project,
                    "template_id": template,
                    "status": 0,
                    "channels": [1, 2],
                    "event": "2030-01-01",
                },
            )
        )
        suppression = _created(
            client.post("/suppression/create", json={"project": "fuzz", "address": "x@example.com"})
        )
        webhook = _created(
            client.post(
                "/webhook/create",
                json={"project_id": project, "url": "http://127.0.0.1:9/hook"},
            )
        )
    return {
        "project": project,
        "template": template,
        "client": client_id,
        "mailing": mailing,
        "suppression": suppression,
        "webhook": webhook,
    }


@pytest.fixture
def threaded_server(database_url: str) -> Iterator[ThreadedServer]:
    server = ThreadedServer(
        Settings(
            database_url=database_url,
            # A stream ends (with its reconnect event) at once, so a request for it answers.
            sse_max_lifetime=0.2,
            sms_http_callback_token=SMS_TOKEN,
        )
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fuzz_server(threaded_server: ThreadedServer) -> tuple[str, dict[str, int]]:
    return threaded_server.url, _seed(threaded_server.url)


async def _empty_database(url: str) -> None:
    """Every row gone and every id counting from 1 again, the schema kept: a stateful
    scenario then meets the same database each time, as Hypothesis requires of its replays."""
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            if engine.dialect.name == "postgresql":
                rows = await connection.execute(
                    text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                )
                tables = [f'"{name}"' for (name,) in rows if name != "alembic_version"]
                await connection.execute(
                    text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
                )
                return
            await connection.execute(text("PRAGMA foreign_keys = OFF"))
            rows = await connection.execute(
                text("SELECT name FROM sqlite_master WHERE type = 'table'")
            )
            names = [name for (name,) in rows.all()]
            for name in names:
                if name != "alembic_version" and not name.startswith("sqlite_"):
                    await connection.execute(text(f'DELETE FROM "{name}"'))
            if "sqlite_sequence" in names:
                await connection.execute(text("DELETE FROM sqlite_sequence"))
    finally:
        await engine.dispose()


@schemathesis.check
def error_envelope(
    _ctx: schemathesis.CheckContext, response: schemathesis.Response, _case: schemathesis.Case
) -> bool | None:
    """Every error is the manual's envelope: ``{"code": N, "error": {"message", "status": N}}``
    with N the HTTP status."""
    status = response.status_code
    if status < 400:
        return None
    try:
        body = json.loads(response.content)
    except ValueError as error:
        raise AssertionError(f"{status} answered with a body that is not JSON") from error
    assert isinstance(body, dict), body
    assert set(body) == {"code", "error"}, body
    assert body["code"] == status, body
    error = body["error"]
    assert isinstance(error, dict), body
    assert set(error) <= {"message", "status", "details"}, body
    assert isinstance(error.get("message"), str), body
    assert error["message"], body
    assert error.get("status") == status, body
    for detail in error.get("details", []):
        assert set(detail) == {"field", "message"}, body
    return None


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    error_envelope,
]


def _operations() -> list[Any]:
    """Every operation of the app's schema, known before any server runs (for test ids)."""
    app = create_app(Settings(database_url="sqlite+aiosqlite://"))
    return [
        pytest.param(method.upper(), path, id=f"{method.upper()} {path}")
        for path, item in app.openapi()["paths"].items()
        for method in item
        if method in HTTP_METHODS
    ]


@pytest.mark.parametrize(("method", "path"), _operations())
def test_operation(method: str, path: str, fuzz_server: tuple[str, dict[str, int]]) -> None:
    url, seeded = fuzz_server
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operation = schema[path][method]
    cases = st.one_of(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )
    existing = sorted(set(seeded.values()))
    if "{id}" in path:
        # Half the time the ``{id}`` names a seeded row, so the operation gets past its 404.
        cases = st.one_of(
            cases,
            st.tuples(cases, st.sampled_from(existing)).map(lambda pair: _with_id(*pair)),
        )

    @given(case=cases)
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: schemathesis.Case) -> None:
        response = case.call_and_validate(base_url=url, checks=CHECKS)
        statuses[response.status_code] += 1

    statuses: Counter[int] = Counter()
    fuzz()
    if STATS:
        with open(STATS, "a", encoding="utf-8") as stats:
            line = {"operation": f"{method} {path}", "statuses": statuses}
            stats.write(json.dumps(line) + "\n")


def _with_id(case: schemathesis.Case, id_: int) -> schemathesis.Case:
    case.path_parameters = {**(case.path_parameters or {}), "id": id_}
    return case


def test_stateful(threaded_server: ThreadedServer, database_url: str) -> None:
    """Sequences of calls that follow the schema's links: an id a create answered goes into
    the ``{id}`` of the operations on it (update, read, start, delete, ...), so operations are
    reached on rows made with generated data, in generated orders."""
    url = threaded_server.url
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")

    class Calls(schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            threaded_server.run(_empty_database(database_url))

        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"base_url": url}

        def after_call(self, response: schemathesis.Response, case: schemathesis.Case) -> None:
            answered[f"{case.operation.method.upper()} {case.operation.path}"].append(
                response.status_code
            )

        def validate_response(
            self,
            response: schemathesis.Response,
            case: schemathesis.Case,
            additional_checks: Any = None,
            **kwargs: Any,
        ) -> None:
            case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs)

    answered: defaultdict[str, list[int]] = defaultdict(list)
    Calls.run(
        settings=settings(
            max_examples=STATEFUL_EXAMPLES,
            stateful_step_count=STATEFUL_STEPS,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
    )
    # The links were followed: some operation on an {id} succeeded with a created id.
    linked = {
        operation
        for operation, statuses in answered.items()
        if "{id}" in operation and any(status < 300 for status in statuses)
    }
    assert linked, sorted(answered.items())


# -- what fuzzing found, kept as plain tests ----------------------------------------------------


async def test_text_with_nul_is_a_400_naming_the_field(api: httpx.AsyncClient) -> None:
    """PostgreSQL stores NUL in neither text nor jsonb: it was a 500 there (a body's string, a
    nested attribute, a query parameter); now a 400 on both databases."""
    nul = NUL_MESSAGE
    response = await api.post("/project/create", json={"name": "a\x00b", "code": "c"})
    assert assert_error(response, 400, "Ошибка валидации") == [{"field": "name", "message": nul}]
    project = await make_project(api, code="nul")
    response = await api.post(
        "/client/create",
        json={
            "project": "nul",
            "guid": "g",
            "first_name": "Иван",
            "last_name": "Иванов",
            "email": "ivan@example.com",
            "attributes": {"city": ["Мо\x00сква"]},
        },
    )
    (field,) = fields(assert_error(response, 400, "Ошибка валидации"))
    assert field.startswith("attributes"), field
    response = await api.get("/webhook/list", params={"project": "nul\x00"})
    assert assert_error(response, 400, "Ошибка валидации") == [{"field": "project", "message": nul}]
    assert assert_ok(await api.get(f"/project/{project}"), 200)["code"] == "nul"


async def test_an_offset_past_any_row_is_an_empty_page_or_a_400(api: httpx.AsyncClient) -> None:
    """An offset beyond a 64-bit integer overflowed SQLite's INTEGER (a 500)."""
    response = await api.get("/project/list", params={"offset": 2**63 - 1})
    assert assert_ok(response, 200)["items"] == []
    response = await api.get("/project/list", params={"offset": 2**63})
    assert fields(assert_error(response, 400, "Ошибка валидации")) == {"offset"}
