"""The API description at /openapi.json and /docs: the manual's tags, summaries and envelopes.

The manual (§3.1) prints each operation as an OpenAPI fragment: its tag, Russian summary and
description, and its error responses in the ``{"code", "error"}`` envelope. Validation errors are
400 here, so no operation may document FastAPI's 422.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

ENVELOPE_REF = "#/components/schemas/ErrorEnvelope"
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}

# (method, path) → (tag, summary, description), as the manual prints them.
MANUAL = {
    ("post", "/project/create"): (
        "Projects",
        "Добавление нового проекта",
        "Экшен для создания нового проекта",
    ),
    ("put", "/project/{id}/update"): (
        "Projects",
        "Обновление данных проекта",
        "Экшен для обновления данных проекта",
    ),
    ("post", "/client/create"): (
        "Clients",
        "Создание нового клиента",
        "Экшен для создания нового клиента",
    ),
    ("post", "/mailing/create"): ("Mailing", "Создание рассылки", "Создание рассылки"),
}

# The properties of each manual body (§3.1.1, §3.1.7, §3.1.14, §3.1.17).
MANUAL_PROPERTIES = {
    ("post", "/project/create"): {"name", "code"},
    ("put", "/project/{id}/update"): {"primary key", "name"},
    ("post", "/client/create"): {"project", "guid", "first_name", "last_name", "middle_name"},
    ("post", "/mailing/create"): {
        "name",
        "project_id",
        "template_id",
        "status",
        "channels",
        "event",
    },
}

# The error responses the manual prints for each operation, and its messages for them.
MANUAL_ERRORS = {
    ("post", "/project/create"): {400, 403, 405, 500},
    ("put", "/project/{id}/update"): {400, 403, 404, 405, 500},
    ("post", "/client/create"): {500},
    ("post", "/mailing/create"): {500},
}
MANUAL_MESSAGES = {
    400: "Ошибка валидации",
    403: "Доступ запрещен",
    404: "Страница не найдена",
    405: "Метод не поддерживается",
    500: "Внутренняя ошибка сервера",
}

TAG_OF_PREFIX = {
    "/project/": "Projects",
    "/client/": "Clients",
    "/template/": "Templates",
    "/mailing/": "Mailing",
}


@pytest.fixture
async def schema(api: httpx.AsyncClient) -> dict[str, Any]:
    response = await api.get("/openapi.json")
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def _operations(schema: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield method, path, operation


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        prefix = "#/components/schemas/"
        ref: str = node["$ref"]
        assert ref.startswith(prefix), ref
        node = schema["components"]["schemas"][ref.removeprefix(prefix)]
    return node


def _error_codes(operation: dict[str, Any]) -> set[int]:
    return {int(code) for code in operation["responses"] if code.isdigit() and int(code) >= 400}


def _body_schema(schema: dict[str, Any], operation: dict[str, Any]) -> dict[str, Any]:
    content = operation["requestBody"]["content"]
    assert "application/json" in content, content
    return _resolve(schema, content["application/json"]["schema"])


async def test_openapi_json_answers(api: httpx.AsyncClient) -> None:
    response = await api.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    document = response.json()
    assert document["openapi"].startswith("3.")
    assert document["info"]["title"] == "Rassylka"
    assert document["paths"]


async def test_docs_answer(api: httpx.AsyncClient) -> None:
    response = await api.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "swagger-ui" in response.text.lower()
    assert "/openapi.json" in response.text


async def test_the_manual_tags_are_declared(schema: dict[str, Any]) -> None:
    declared = {tag["name"] for tag in schema.get("tags", [])}
    assert {"Projects", "Clients", "Mailing", "Templates"} <= declared


async def test_operations_are_grouped_by_tag(schema: dict[str, Any]) -> None:
    used: set[str] = set()
    for method, path, operation in _operations(schema):
        tags = operation.get("tags", [])
        assert len(tags) == 1, (method, path, tags)
        used.update(tags)
        for prefix, tag in TAG_OF_PREFIX.items():
            if path.startswith(prefix):
                assert tags == [tag], (method, path, tags)
    assert {"Projects", "Clients", "Mailing", "Templates"} <= used
    declared = {tag["name"] for tag in schema.get("tags", [])}
    assert used <= declared, used - declared


async def test_manual_operations_carry_the_manual_texts(schema: dict[str, Any]) -> None:
    for (method, path), (tag, summary, description) in MANUAL.items():
        assert path in schema["paths"], path
        operation = schema["paths"][path].get(method)
        assert operation is not None, (method, path)
        assert operation["tags"] == [tag], (method, path)
        assert operation["summary"] == summary, (method, path)
        assert operation["description"] == description, (method, path)
        assert "201" in operation["responses"], (method, path)
        assert operation["requestBody"]["required"] is True, (method, path)


async def test_manual_operations_document_the_manual_errors(schema: dict[str, Any]) -> None:
    for (method, path), codes in MANUAL_ERRORS.items():
        responses = schema["paths"][path][method]["responses"]
        for code in codes:
            assert str(code) in responses, (method, path, code)
            assert responses[str(code)]["description"] == MANUAL_MESSAGES[code], (method, path)


async def test_manual_bodies_have_the_manual_properties(schema: dict[str, Any]) -> None:
    for (method, path), properties in MANUAL_PROPERTIES.items():
        body = _body_schema(schema, schema["paths"][path][method])
        assert properties <= set(body["properties"]), (method, path, set(body["properties"]))


async def test_update_body_has_primary_key_with_a_space(schema: dict[str, Any]) -> None:
    body = _body_schema(schema, schema["paths"]["/project/{id}/update"]["put"])
    assert "primary key" in body["properties"]
    assert "primary_key" not in body["properties"]
    kinds = {
        variant.get("type")
        for variant in body["properties"]["primary key"].get(
            "anyOf", [body["properties"]["primary key"]]
        )
    }
    assert "integer" in kinds  # the manual: "type": "integer"


async def test_no_operation_documents_422(schema: dict[str, Any]) -> None:
    for method, path, operation in _operations(schema):
        assert "422" not in operation["responses"], (method, path)
    components = schema.get("components", {}).get("schemas", {})
    assert "HTTPValidationError" not in components
    assert "ValidationError" not in components


async def test_error_envelope_schema(schema: dict[str, Any]) -> None:
    envelope = _resolve(schema, {"$ref": ENVELOPE_REF})
    assert set(envelope["required"]) == {"code", "error"}
    assert envelope["properties"]["code"]["type"] == "integer"
    error = _resolve(schema, envelope["properties"]["error"])
    assert {"message", "status"} <= set(error["required"])
    assert set(error["properties"]) == {"message", "status", "details"}


async def test_every_error_response_is_the_envelope(schema: dict[str, Any]) -> None:
    for method, path, operation in _operations(schema):
        for code in _error_codes(operation):
            response = operation["responses"][str(code)]
            assert response.get("description"), (method, path, code)
            content = response.get("content", {})
            assert set(content) == {"application/json"}, (method, path, code)
            assert content["application/json"]["schema"] == {"$ref": ENVELOPE_REF}, (
                method,
                path,
                code,
            )


async def test_every_api_operation_documents_its_errors(schema: dict[str, Any]) -> None:
    checked = 0
    for method, path, operation in _operations(schema):
        if path == "/health":
            continue  # see test_health_documents_its_503
        codes = _error_codes(operation)
        expected = {403, 500}  # API keys may be required; any handler may fail
        if "requestBody" in operation:
            expected |= {400, 413}  # invalid or oversized body
        if "{" in path:
            expected.add(404)  # an id that names nothing
        assert expected <= codes, (method, path, sorted(expected - codes))
        checked += 1
    assert checked >= len(MANUAL)


async def test_every_operation_with_a_body_documents_400(schema: dict[str, Any]) -> None:
    with_body = [(m, p, o) for m, p, o in _operations(schema) if "requestBody" in o]
    assert {(m, p) for m, p, _ in with_body} >= set(MANUAL)
    for method, path, operation in with_body:
        response = operation["responses"].get("400")
        assert response is not None, (method, path)
        assert response["content"]["application/json"]["schema"] == {"$ref": ENVELOPE_REF}


async def test_health_documents_its_503(schema: dict[str, Any]) -> None:
    operation = schema["paths"]["/health"]["get"]
    response = operation["responses"].get("503")
    assert response is not None
    assert response["content"]["application/json"]["schema"] == {"$ref": ENVELOPE_REF}
