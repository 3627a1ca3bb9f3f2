"""What a request may not do with its strings (issue 7, points 6 and 8), on both databases,
against a real server: every string field is held to its column's length (400 naming the
field, never a database error), NUL is refused everywhere, SQL-looking text is stored as it
is, a contact cannot name a second recipient, and client data with CRLF in it never becomes a
header of the message the real SMTP peer receives."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from conftest import StartWorker
from helpers import assert_error, assert_ok, make_project, make_template
from smtp_peer import SmtpPeer
from test_dispatcher import all_final, arrange, client, statuses, until


@dataclass
class Ids:
    project: int
    template: int
    client: int
    mailing: int
    webhook: int


@pytest.fixture
async def ids(api: httpx.AsyncClient) -> Ids:
    project = await make_project(api)
    template = await make_template(api, project)
    created = await api.post(
        "/client/create",
        json={
            "project": "010",
            "guid": "c0",
            "first_name": "А",
            "last_name": "Б",
            "email": "a@b.ru",
        },
    )
    mailing = await api.post(
        "/mailing/create",
        json={
            "name": "М",
            "project_id": project,
            "template_id": template,
            "status": 0,
            "channels": [1],
        },
    )
    webhook = await api.post(
        "/webhook/create", json={"project_id": project, "url": "http://127.0.0.1:9/hook"}
    )
    return Ids(
        project,
        template,
        assert_ok(created)["id"],
        assert_ok(mailing)["id"],
        assert_ok(webhook)["id"],
    )


def _bodies(ids: Ids) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """Endpoint name → (method, path, a valid body)."""
    new_client = {"project": "010", "guid": "c1", "first_name": "И", "last_name": "П"}
    new_client["email"] = "x@y.ru"
    mailing = {
        "name": "М",
        "project_id": ids.project,
        "template_id": ids.template,
        "status": 0,
        "channels": [1],
    }
    return {
        "project": ("POST", "/project/create", {"name": "П", "code": "p1"}),
        "project-update": ("PUT", f"/project/{ids.project}/update", {"name": "П"}),
        "client": ("POST", "/client/create", new_client),
        "client-update": ("PUT", f"/client/{ids.client}/update", {"first_name": "И"}),
        "template": (
            "POST",
            "/template/create",
            {"project_id": ids.project, "name": "Т", "sms_text": "SMS"},
        ),
        "template-update": ("PUT", f"/template/{ids.template}/update", {"name": "Т"}),
        "mailing": ("POST", "/mailing/create", mailing),
        "mailing-update": ("PUT", f"/mailing/{ids.mailing}/update", {"name": "М"}),
        "webhook": (
            "POST",
            "/webhook/create",
            {"project_id": ids.project, "url": "http://127.0.0.1:9/h"},
        ),
        "webhook-update": ("PUT", f"/webhook/{ids.webhook}/update", {"description": "о"}),
        "suppression": (
            "POST",
            "/suppression/create",
            {"project": "010", "address": "s@y.ru", "reason": "р"},
        ),
    }


def _set(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    body = copy.deepcopy(body)
    *parents, last = path.split(".")
    node: Any = body
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return body


# (endpoint, field, longest accepted, a value of that length or None when only the value one
# longer is tried: fields whose own syntax bounds them, e.g. an email)
PLAIN = "я"  # two bytes in UTF-8: a VARCHAR(n) counts characters, not bytes
LENGTHS: list[tuple[str, str, int, bool]] = [
    ("project", "name", 255, True),
    ("project", "code", 64, True),
    ("project-update", "name", 255, True),
    ("project-update", "code", 64, True),
    ("client", "guid", 255, True),
    ("client", "first_name", 255, True),
    ("client", "last_name", 255, True),
    ("client", "middle_name", 255, True),
    ("client", "email", 254, False),
    ("client", "phone", 32, False),
    ("client", "timezone", 64, False),
    ("client", "tags", 64, True),
    ("client", "attribute-name", 255, True),
    ("client-update", "guid", 255, True),
    ("client-update", "first_name", 255, True),
    ("client-update", "last_name", 255, True),
    ("client-update", "middle_name", 255, True),
    ("client-update", "email", 254, False),
    ("client-update", "phone", 32, False),
    ("client-update", "timezone", 64, False),
    ("template", "name", 255, True),
    ("template-update", "name", 255, True),
    ("mailing", "name", 255, True),
    ("mailing", "timezone", 64, False),
    ("mailing", "event", 64, False),
    ("mailing", "schedule.cron", 255, False),
    ("mailing", "schedule.rrule", 2000, False),
    ("mailing", "send_window.start", 8, False),
    ("mailing-update", "name", 255, True),
    ("webhook", "url", 2048, True),
    ("webhook", "secret", 255, True),
    ("webhook", "description", 1000, True),
    ("webhook-update", "url", 2048, True),
    ("webhook-update", "description", 1000, True),
    ("suppression", "address", 320, False),
    ("suppression", "reason", 1000, True),
]


def _value(field: str, length: int) -> Any:
    if field == "email":
        return "a" * 64 + "@" + ".".join(["b" * 60] * 4)[: length - 65]
    if field == "url":
        return "http://127.0.0.1:9/" + "p" * (length - len("http://127.0.0.1:9/"))
    if field == "code":
        return "c" * length
    return PLAIN * length


@pytest.mark.parametrize(
    ("endpoint", "field", "limit", "at_limit"),
    LENGTHS,
    ids=[f"{endpoint}-{field}" for endpoint, field, _, _ in LENGTHS],
)
async def test_each_string_one_too_long_is_a_400_on_its_field(
    api: httpx.AsyncClient, ids: Ids, endpoint: str, field: str, limit: int, at_limit: bool
) -> None:
    method, path, body = _bodies(ids)[endpoint]

    def with_length(length: int) -> tuple[dict[str, Any], str]:
        value = _value(field, length)
        if field == "tags":
            return _set(body, "tags", [value]), "tags.0"
        if field == "attribute-name":
            return _set(body, "attributes", {value: 1}), "attributes"
        if field.startswith("schedule."):
            base = _set(body, "event", "2030-01-01")
            return _set(base, field, value), field
        if field.startswith("send_window."):
            return _set(_set(body, "send_window.end", "21:00"), field, value), field
        return _set(body, field, value), field

    too_long, reported = with_length(limit + 1)
    details = assert_error(await api.request(method, path, json=too_long), 400, "Ошибка валидации")
    assert reported in {detail["field"] for detail in details}, details
    if at_limit:
        fits, _ = with_length(limit)
        data = assert_ok(await api.request(method, path, json=fits))
        if field not in ("secret", "tags", "attribute-name"):
            assert data[field] == fits[field], "stored whole, as sent"


NUL_FIELDS = [
    ("project", "name"),
    ("client", "first_name"),
    ("client", "attributes.city"),
    ("client-update", "last_name"),
    ("template", "sms_text"),
    ("template", "project"),
    ("mailing", "name"),
    ("webhook", "description"),
    ("suppression", "reason"),
]


@pytest.mark.parametrize(("endpoint", "field"), NUL_FIELDS)
async def test_nul_in_any_string_is_a_400_on_its_field(
    api: httpx.AsyncClient, ids: Ids, endpoint: str, field: str
) -> None:
    method, path, body = _bodies(ids)[endpoint]
    sent = _set(body, field, "a\x00b")
    if field == "project":
        sent.pop("project_id")
    details = assert_error(await api.request(method, path, json=sent), 400, "Ошибка валидации")
    assert details == [{"field": field, "message": "Недопустимый символ NUL (\\u0000)"}]


async def test_nul_in_a_query_or_an_import_row_is_never_a_500(
    api: httpx.AsyncClient, ids: Ids
) -> None:
    response = await api.get("/client/list", params={"project": "a\x00b"})
    assert response.status_code == 400, response.text
    rows = [
        {"guid": "ok", "first_name": "И", "last_name": "П", "email": "ok@y.ru"},
        {"guid": "bad\x00", "first_name": "И", "last_name": "П", "email": "bad@y.ru"},
    ]
    result = assert_ok(await api.post("/client/import", json={"project": "010", "clients": rows}))
    assert (result["created"], result["rejected"]) == (1, 1)
    assert result["errors"] == [
        {"row": 1, "field": "guid", "message": "Недопустимый символ NUL (\\u0000)"}
    ]


SQLISH = ["'; DROP TABLE client; --", "%s", "%(name)s", ":name", "?", "\\'", '" OR 1=1 --']


@pytest.mark.parametrize("value", SQLISH)
async def test_sql_looking_text_is_stored_verbatim(
    api: httpx.AsyncClient, ids: Ids, value: str
) -> None:
    created = assert_ok(
        await api.post(
            "/client/create",
            json={
                "project": "010",
                "guid": value,
                "first_name": value,
                "last_name": value,
                "middle_name": value,
                "email": "sql@y.ru",
                "tags": [value],
                "attributes": {value: value},
            },
        )
    )
    read = assert_ok(await api.get(f"/client/{created['id']}"), 200)
    for name in ("guid", "first_name", "last_name", "middle_name"):
        assert read[name] == value
    assert read["tags"] == [value]
    assert read["attributes"] == {value: value}
    project = assert_ok(await api.post("/project/create", json={"name": value, "code": value}))
    assert (project["name"], project["code"]) == (value, value)
    found = assert_ok(await api.get("/client/list", params={"project": "010"}), 200)
    assert found["total"] == 2, "the table is still there, with both clients"


SMUGGLED = {
    "email": ["a@x.ru, b@y.ru", "a@x.ru\r\nBcc: b@y.ru", "<a@x.ru>b@y.ru", "a@x.ru;b@y.ru"],
    "phone": ["+79161234567,+79161234568", "+79161234567;+79161234568", "+79161234567\n+7916"],
}


@pytest.mark.parametrize(
    ("field", "value"), [(field, value) for field, values in SMUGGLED.items() for value in values]
)
async def test_a_contact_cannot_name_a_second_recipient(
    api: httpx.AsyncClient, ids: Ids, field: str, value: str
) -> None:
    body = {"project": "010", "guid": "two", "first_name": "И", "last_name": "П", field: value}
    details = assert_error(await api.post("/client/create", json=body), 400, "Ошибка валидации")
    assert [detail["field"] for detail in details] == [field]
    update = await api.put(f"/client/{ids.client}/update", json={field: value})
    assert_error(update, 400, "Ошибка валидации")
    suppression = {"project": "010", "address": value}
    assert_error(await api.post("/suppression/create", json=suppression), 400, "Ошибка валидации")


async def test_crlf_in_client_data_never_becomes_a_header_at_the_smtp_peer(
    api: httpx.AsyncClient, engine: AsyncEngine, smtp: SmtpPeer, start_worker: StartWorker
) -> None:
    evil = "Иван\r\nBcc: spy@evil.ru\r\nX-Injected: 1"
    plain_evil = "Ivan\r\nBcc: spy@evil.ru\nX-Injected: 1"
    await arrange(
        api,
        [
            client(1, "one@example.ru", first_name=evil),
            client(2, "two@example.ru", first_name=plain_evil, attributes={"s": "\rBcc: x@e.ru"}),
        ],
        email_subject="Привет, {{ first_name }}{{ attributes.s | default('') }}",
        email_text="Текст {{ first_name }}",
    )
    await start_worker()
    await until(lambda: all_final(engine))
    found = await statuses(engine)
    assert {found[a]["status"] for a in ("one@example.ru", "two@example.ru")} == {"sent"}
    assert set(smtp.rcpt_attempts) == {"one@example.ru", "two@example.ru"}
    assert all(count == 1 for count in smtp.rcpt_attempts.values())
    for message in smtp.received:
        assert message["Bcc"] is None
        assert message["X-Injected"] is None
        assert [str(to) for to in message.get_all("To")] in (
            ["one@example.ru"],
            ["two@example.ru"],
        )
        assert "Bcc: spy@evil.ru" in str(message["Subject"]), "kept as text of the subject"
