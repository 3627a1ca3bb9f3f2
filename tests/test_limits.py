"""Limits on what a caller may cost the service: a template's render budget (time and size)
at create and at dispatch, the size of a template's text, and open live streams per caller.
Against real servers, the real dispatcher and the aiosmtpd peer, on both databases."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request

from conftest import StartServer, StartWorker
from helpers import assert_error, assert_ok, make_project
from rassylka.events.router import caller_of
from rassylka.templates.budget import TOO_LARGE, TOO_SLOW, RenderLimits
from rassylka.templates.models import Template
from rassylka.templates.rendering import RenderError, TemplateSources, compiled
from smtp_peer import SmtpPeer
from test_dispatcher import all_final, arrange, client, statuses, until
from test_stream import WAIT, open_stream

# Generous: the budget is 1 s; a stalled render would take minutes or all the memory.
BOUND = 10.0

RUNAWAY = {
    "nested-loops": (
        "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
        TOO_SLOW,
    ),
    "repeat-1e9": ("{{ 'x' * 10**9 }}", TOO_LARGE),
    "repeat-1e8": ("{{ 'x' * 100000000 }}", TOO_LARGE),
    "100mb-through-loops": (
        "{% for a in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
        TOO_LARGE,
    ),
    "recursive-macro": (
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        "рекурсия",
    ),
    "exponential-macro": (
        "{% macro f(n) %}{% if n < 60 %}{{ f(n + 1) }}{{ f(n + 1) }}{% endif %}"
        "{% endmacro %}{{ f(0) }}",
        TOO_SLOW,
    ),
    "center": ("{{ 'x'|center(10**9) }}", TOO_LARGE),
    "indent": ("{{ ('x\n' * 1000)|indent(10**6) }}", TOO_LARGE),
    "percent-width": ("{{ '%999999999s' % 'x' }}", TOO_LARGE),
    "percent-repeat": ("{{ ('%s' * 10**7) % 1 }}", TOO_LARGE),
    "format-width": ("{{ '{:999999999}'.format(1) }}", TOO_LARGE),
    "format-filter": ("{{ '%999999999d'|format(1) }}", TOO_LARGE),
    "ljust-method": ("{{ 'x'.ljust(10**9) }}", TOO_LARGE),
    "power": ("{{ 2 ** (10 ** 9) }}", TOO_LARGE),
    "doubling": (
        "{% set ns = namespace(x='ab') %}{% for i in range(100) %}"
        "{% set ns.x = ns.x ~ ns.x %}{% endfor %}{{ ns.x|length }}",
        TOO_LARGE,
    ),
    "block-set-doubling": (
        "{% set ns = namespace(x='ab') %}{% for i in range(100) %}"
        "{% set y %}{{ ns.x }}{{ ns.x }}{% endset %}{% set ns.x = y %}{% endfor %}"
        "{{ ns.x|length }}",
        TOO_LARGE,
    ),
    "macro-doubling": (
        "{% macro twice(s) %}{{ s }}{{ s }}{% endmacro %}{% set ns = namespace(x='ab') %}"
        "{% for i in range(100) %}{% set ns.x = twice(ns.x) %}{% endfor %}{{ ns.x|length }}",
        TOO_LARGE,
    ),
    "shared-list": (
        "{% set ns = namespace(x=['ab']) %}{% for i in range(80) %}"
        "{% set ns.x = [ns.x, ns.x] %}{% endfor %}{{ ns.x }}",
        TOO_LARGE,
    ),
    "join": ("{{ (['x' * 100000] * 10)|join('y' * 1000000) }}", TOO_LARGE),
    "replace": ("{{ ('x' * 100000)|replace('x', 'y' * 100000) }}", TOO_LARGE),
    "map-center-join": ("{{ range(1000)|map('center', 1000000)|join }}", TOO_LARGE),
    "map-center-list": ("{{ range(1000)|map('center', 1000000)|list|length }}", TOO_LARGE),
    "str-join-generator": ("{{ ''.join(range(1000)|map('center', 1000000)) }}", TOO_LARGE),
    "lipsum": ("{{ lipsum(1000000) }}", TOO_LARGE),
    "batch-fill": ("{{ [1]|batch(10**8, 'x')|list|length }}", TOO_LARGE),
    "loop-cycle": (
        "{% for a in range(100000) %}{% for b in range(100000) %}"
        "{% if loop.cycle(1, 2) == 3 %}x{% endif %}{% endfor %}{% endfor %}",
        TOO_SLOW,
    ),
}


@pytest.mark.parametrize(("source", "expected"), RUNAWAY.values(), ids=RUNAWAY.keys())
def test_a_runaway_template_is_stopped_in_bounded_time_with_a_clear_error(
    source: str, expected: str
) -> None:
    template = compiled(TemplateSources(sms_text=source))
    started = time.monotonic()
    with pytest.raises(RenderError) as raised:
        template.render_sms({}, RenderLimits(max_bytes=1024 * 1024, max_seconds=1.0))
    elapsed = time.monotonic() - started
    assert raised.value.over_budget
    assert expected in raised.value.reason
    assert raised.value.reason.startswith("Шаблон, поле sms_text: ")
    assert elapsed < BOUND, f"stopped after {elapsed:.1f} s"


def test_ordinary_templates_render_as_before_within_the_budget() -> None:
    source = (
        "{{ first_name }}: {% for i in range(3) %}{{ i }}{% endfor %} {{ '%5s' % 'a' }}"
        " {{ '{:>4}'.format(7) }} {{ 'a'|center(5) }} {{ [1, 2]|join(',') }}"
        " {{ ('ab' * 3)|replace('a', 'c') }} {{ 2 ** 10 }} {{ attributes|length }}"
        " {{ '-' * 3 }}{{ [1] + [2] }}{{ 'x' ~ 1 }}"
        # Large numbers are no widths: money amounts pass through format and macros.
        "{% macro money(x) %}{{ x }}{% endmacro %}"
        " {{ '%d'|format(sum) }} {{ '{}'.format(sum) }} {{ money(sum) }} {{ sum * 1000 }}"
    )
    text = compiled(TemplateSources(sms_text=source)).render_sms(
        {"first_name": "Иван", "attributes": {"a": 1}, "sum": 2_500_000}
    )
    assert text == (
        "Иван: 012     a    7   a   1,2 cbcbcb 1024 1 ---[1, 2]x1"
        " 2500000 2500000 2500000 2500000000"
    )


def test_the_output_cap_is_the_setting_and_a_slow_template_fails_fast_afterwards() -> None:
    template = compiled(TemplateSources(sms_text="{{ 'x' * n }}"))
    small = RenderLimits(max_bytes=2000, max_seconds=1.0)
    assert template.render_sms({"n": 2000}, small) == "x" * 2000
    with pytest.raises(RenderError, match=TOO_LARGE):
        template.render_sms({"n": 2001}, small)
    # Size depends on the data: the next recipient is rendered anew.
    assert template.render_sms({"n": 3}, small) == "xxx"

    slow = compiled(TemplateSources(sms_text=RUNAWAY["nested-loops"][0]))
    with pytest.raises(RenderError, match=TOO_SLOW):
        slow.render_sms({}, RenderLimits(max_seconds=0.2))
    started = time.monotonic()
    with pytest.raises(RenderError, match=TOO_SLOW):
        slow.render_sms({}, RenderLimits(max_seconds=0.2))
    assert time.monotonic() - started < 0.1, "a template that ran out of time is not rerun"


ESCAPES = {
    "subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "cycler-globals": "{{ cycler.__init__.__globals__ }}",
    "lipsum-globals": "{{ lipsum.__globals__ }}",
    "template-context": "{{ self._TemplateReference__context }}",
    "format-attribute": "{{ '{0.__class__}'.format(1) }}",
    "namespace-globals": "{{ namespace.__init__.__globals__ }}",
    "mutating-method": "{% set x = [].append %}{{ x(1) }}",
    "mutating-dict": "{{ attributes.update({'a': 1}) }}",
}


@pytest.mark.parametrize("source", ESCAPES.values(), ids=ESCAPES.keys())
async def test_known_sandbox_escapes_are_a_400_at_create(
    api: httpx.AsyncClient, source: str
) -> None:
    project_id = await make_project(api)
    response = await api.post(
        "/template/create", json={"project_id": project_id, "name": "x", "sms_text": source}
    )
    details = assert_error(response, 400, "Ошибка валидации")
    assert [detail["field"] for detail in details] == ["sms_text"]
    assert "недопустимая операция" in details[0]["message"]


async def test_escapes_that_only_find_nothing_render_nothing_of_pythons(
    api: httpx.AsyncClient,
) -> None:
    """``''.format.__self__`` and globals such as ``config`` or ``request`` do not exist in the
    sandbox: the name is undefined, which fails the message (never shows an object)."""
    for source in ("{{ ''.format.__self__ }}", "{{ config }}", "{{ request }}"):
        with pytest.raises(RenderError) as raised:
            compiled(TemplateSources(sms_text=source)).render_sms({})
        assert "undefined" in raised.value.reason or "no attribute" in raised.value.reason
        assert "<" not in raised.value.reason, raised.value.reason


@pytest.mark.parametrize(
    ("field", "source", "expected"),
    [
        ("email_text", RUNAWAY["nested-loops"][0], TOO_SLOW),
        ("email_subject", RUNAWAY["repeat-1e9"][0], TOO_LARGE),
        ("sms_text", RUNAWAY["100mb-through-loops"][0], TOO_LARGE),
        ("email_html", RUNAWAY["recursive-macro"][0], "рекурсия"),
    ],
)
async def test_an_over_budget_template_is_a_400_on_its_field_at_create_and_update(
    api: httpx.AsyncClient, field: str, source: str, expected: str
) -> None:
    project_id = await make_project(api)
    body: dict[str, Any] = {
        "project_id": project_id,
        "name": "Шаблон",
        "email_subject": "Тема",
        "email_text": "Текст {{ attributes.city }}",
        "sms_text": "SMS",
    }
    started = time.monotonic()
    details = assert_error(
        await api.post("/template/create", json={**body, field: source}), 400, "Ошибка валидации"
    )
    assert details == [{"field": field, "message": details[0]["message"]}]
    assert expected in details[0]["message"]
    template_id = assert_ok(await api.post("/template/create", json=body))["id"]
    details = assert_error(
        await api.put(f"/template/{template_id}/update", json={field: source}),
        400,
        "Ошибка валидации",
    )
    assert [detail["field"] for detail in details] == [field]
    assert time.monotonic() - started < 3 * BOUND
    stored = assert_ok(await api.get(f"/template/{template_id}"), 200)
    assert stored[field] == body.get(field), "a refused update changes nothing"


async def test_a_template_field_over_the_size_limit_is_a_400(start_server: StartServer) -> None:
    server = await start_server(max_template_bytes=4096)
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT) as api:
        project_id = await make_project(api)
        body = {"project_id": project_id, "name": "x", "sms_text": "ы" * 2048}  # 4096 bytes
        assert_ok(await api.post("/template/create", json=body))
        details = assert_error(
            await api.post("/template/create", json={**body, "sms_text": "ы" * 2049}),
            400,
            "Ошибка валидации",
        )
        assert details == [
            {"field": "sms_text", "message": "Текст шаблона не больше 4096 байт (UTF-8)"}
        ]


async def test_a_runaway_template_fails_its_messages_at_dispatch_without_stalling_the_worker(
    api: httpx.AsyncClient, engine: AsyncEngine, smtp: SmtpPeer, start_worker: StartWorker
) -> None:
    """A template stored before the limits existed (written here straight to the table): its
    messages fail permanently with the reason, once each, quickly; a template whose size
    depends on the client fails only the client it is too large for."""
    await arrange(
        api,
        [client(1, "a@example.ru"), client(2, "b@example.ru"), client(3, "c@example.ru")],
        email_subject="Тема",
        email_text="Текст",
    )
    async with engine.begin() as connection:
        await connection.execute(update(Template).values(email_text=RUNAWAY["nested-loops"][0]))
    started = time.monotonic()
    await start_worker()
    await until(lambda: all_final(engine), seconds=30)
    elapsed = time.monotonic() - started
    found = await statuses(engine)
    for address in ("a@example.ru", "b@example.ru", "c@example.ru"):
        assert found[address]["status"] == "failed"
        assert found[address]["attempts"] == 1, "not retried"
        assert found[address]["reason"] == f"Шаблон, поле email_text: {TOO_SLOW} (дольше 1 с)"
    assert smtp.received == []
    assert elapsed < BOUND, f"three messages took {elapsed:.1f} s"


async def test_a_template_too_large_for_one_client_fails_that_message_only(
    api: httpx.AsyncClient, engine: AsyncEngine, smtp: SmtpPeer, start_worker: StartWorker
) -> None:
    await arrange(
        api,
        [
            client(1, "small@example.ru", attributes={"n": 3}),
            client(2, "huge@example.ru", attributes={"n": 10**9}),
        ],
        email_subject="Тема",
        email_text="{{ 'x' * attributes.n }}",
    )
    await start_worker()
    await until(lambda: all_final(engine))
    found = await statuses(engine)
    assert found["small@example.ru"]["status"] == "sent"
    assert found["huge@example.ru"]["status"] == "failed"
    assert found["huge@example.ru"]["attempts"] == 1
    assert TOO_LARGE in found["huge@example.ru"]["reason"]
    assert [str(message["To"]) for message in smtp.received] == ["small@example.ru"]
    body = smtp.received[0].get_body(("plain",))
    assert body is not None
    assert body.get_content().strip() == "xxx"


# -- live streams per caller -------------------------------------------------------------------


async def test_streams_per_caller_are_limited_and_a_closed_one_frees_its_place(
    start_server: StartServer,
) -> None:
    server = await start_server(sse_max_per_client=3, sse_ping=0.2)
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT) as api:
        opened = [open_stream(api, "/events") for _ in range(3)]
        streams = [await context.__aenter__() for context in opened]
        assert len(streams) == 3
        details = assert_error(await api.get("/events"), 429, "Слишком много запросов")
        assert details[0]["field"] == "events"
        assert "3" in details[0]["message"]
        await opened[0].__aexit__(None, None, None)

        # The server notices the closed connection at its next write (a ping, 0.2 s).
        deadline = time.monotonic() + WAIT
        while True:
            async with api.stream("GET", "/events") as response:
                if response.status_code == 200:
                    break
                assert response.status_code == 429
            assert time.monotonic() < deadline, "the closed stream's place was never freed"
            await asyncio.sleep(0.1)
        for context in opened[1:]:
            await context.__aexit__(None, None, None)


# -- request bodies ----------------------------------------------------------------------------


def _csv(rows: int) -> bytes:
    lines = b"".join(b"g%d,a,b,a%d@b.ru\n" % (i, i) for i in range(rows))
    return b"guid,first_name,last_name,email\n" + lines


async def _chunked(data: bytes, size: int = 100) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def test_every_kind_of_body_over_its_limit_is_a_413_the_client_can_read(
    start_server: StartServer,
) -> None:
    """Declared and chunked, JSON (both create paths), multipart and text/csv imports; the
    import's own limit applies to it only; a body far over the limit (1 MiB against 1000
    bytes) is read and dropped, so the client gets the envelope, not a reset connection."""
    server = await start_server(max_body_bytes=1000, max_import_bytes=5000)
    too_big = "Слишком большой запрос"
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT) as api:
        await make_project(api)
        person = {"project": "010", "first_name": "a", "last_name": "b", "email": "a@b.ru"}
        big_client = json.dumps({**person, "guid": "x" * 2000}).encode()
        json_type = {"Content-Type": "application/json"}
        # POST /client/create: FastCreate reads it, declared or chunked.
        assert_error(
            await api.post("/client/create", content=big_client, headers=json_type), 413, too_big
        )
        response = await api.post("/client/create", content=_chunked(big_client), headers=json_type)
        assert "content-length" not in response.request.headers
        assert_error(response, 413, too_big)
        # Far over the limit, declared: the whole megabyte is drained before the answer.
        huge = json.dumps({"name": "x" * 1024 * 1024, "code": "1"}).encode()
        assert_error(
            await api.post("/project/create", content=huge, headers=json_type), 413, too_big
        )
        assert_error(
            await api.post("/project/create", content=_chunked(huge, 65536), headers=json_type),
            413,
            too_big,
        )
        # The import: its own limit (5000), by every content type.
        fits, over = _csv(100), _csv(400)
        assert 1000 < len(fits) <= 5000 < len(over)
        query = {"project": "010"}
        assert_ok(await api.post("/client/import", params=query, files={"file": ("c.csv", fits)}))
        assert_error(
            await api.post("/client/import", params=query, files={"file": ("c.csv", over)}),
            413,
            too_big,
        )
        boundary = b'--b\r\nContent-Disposition: form-data; name="file"; filename="c.csv"\r\n\r\n'
        multipart = boundary + over + b"\r\n--b--\r\n"
        response = await api.post(
            "/client/import",
            params=query,
            content=_chunked(multipart),
            headers={"Content-Type": "multipart/form-data; boundary=b"},
        )
        assert_error(response, 413, too_big)
        for content in (over, _chunked(over)):
            response = await api.post(
                "/client/import",
                params=query,
                content=content,
                headers={"Content-Type": "text/csv"},
            )
            assert_error(response, 413, too_big)
        listed = assert_ok(await api.get("/client/list", params={"project": "010"}), 200)
        assert listed["total"] == 100, "only the import that fitted was stored"


# -- lists in request bodies -------------------------------------------------------------------


async def test_every_list_in_a_body_has_a_maximum(api: httpx.AsyncClient) -> None:
    project_id = await make_project(api)
    template_id = int(
        assert_ok(
            await api.post(
                "/template/create",
                json={"project_id": project_id, "name": "Т", "sms_text": "SMS"},
            )
        )["id"]
    )
    person = {"project": "010", "guid": "g", "first_name": "a", "last_name": "b"}
    person["email"] = "a@b.ru"
    mailing = {
        "name": "М",
        "project_id": project_id,
        "template_id": template_id,
        "status": 0,
        "channels": [1],
    }
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("/client/create", {**person, "tags": [f"t{i}" for i in range(101)]}, "tags"),
        (
            "/client/create",
            {**person, "attributes": {f"a{i}": i for i in range(201)}},
            "attributes",
        ),
        ("/mailing/create", {**mailing, "channels": ["email"] * 11}, "channels"),
        (
            "/mailing/create",
            {**mailing, "send_window": {"start": "09:00", "end": "18:00", "days": [1] * 8}},
            "send_window.days",
        ),
        (
            "/mailing/create",
            {**mailing, "audience": {"tags_any": [f"t{i}" for i in range(101)]}},
            "audience.tags_any",
        ),
        (
            "/mailing/create",
            {**mailing, "audience": {"attributes": {f"a{i}": 1 for i in range(101)}}},
            "audience.attributes",
        ),
        (
            "/webhook/create",
            # Nine statuses, "unsubscribed" and "*": 11 at most.
            {"project_id": project_id, "url": "http://127.0.0.1:9/h", "events": ["sent"] * 12},
            "events",
        ),
    ]
    for path, body, field in cases:
        details = assert_error(await api.post(path, json=body), 400, "Ошибка валидации")
        assert field in {detail["field"] for detail in details}, (path, details)


def test_the_stream_caller_is_the_auth_middlewares_caller_else_the_address() -> None:
    """The API-key middleware (built apart) names the caller in the scope's state; without
    it, the client's address is the caller."""
    base: dict[str, Any] = {"type": "http", "headers": [], "client": ("10.0.0.7", 5000)}
    assert caller_of(Request(base)) == "addr:10.0.0.7"
    keyed = {**base, "state": {"caller_id": "key:12"}}
    assert caller_of(Request(keyed)) == "key:12"


async def test_a_stored_sandbox_escape_fails_its_message_at_dispatch(
    api: httpx.AsyncClient, engine: AsyncEngine, smtp: SmtpPeer, start_worker: StartWorker
) -> None:
    """A template written before the trial render existed (straight to the table): the
    escape fails the message permanently with the sandbox's reason; nothing is sent."""
    await arrange(api, [client(1, "a@example.ru")], email_subject="Тема", email_text="Текст")
    async with engine.begin() as connection:
        await connection.execute(update(Template).values(email_text=ESCAPES["cycler-globals"]))
    await start_worker()
    await until(lambda: all_final(engine))
    failed = (await statuses(engine))["a@example.ru"]
    assert failed["status"] == "failed"
    assert failed["attempts"] == 1
    assert failed["reason"].startswith("Шаблон, поле email_text: недопустимая операция")
    assert "__init__" in failed["reason"]
    assert smtp.received == []
