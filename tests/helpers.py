"""Assertions and small arrangements shared by the tests."""

from __future__ import annotations

import os
from typing import Any, NoReturn

import httpx
import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from rassylka.db import utcnow
from rassylka.projects.models import Project
from rassylka.templates.models import Template


def assert_ok(response: httpx.Response, status: int = 201) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status
    assert body["message"] == "Ok"
    data: dict[str, Any] = body["data"]
    return data


def assert_error(response: httpx.Response, status: int, message: str) -> list[dict[str, str]]:
    """The manual's envelope, exactly; returns its details (empty when there are none)."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "error"}, body
    assert body["code"] == status
    assert body["error"]["message"] == message
    assert body["error"]["status"] == status
    assert set(body["error"]) <= {"message", "status", "details"}
    details: list[dict[str, str]] = body["error"].get("details", [])
    return details


def fields(details: list[dict[str, str]]) -> set[str]:
    return {detail["field"] for detail in details}


async def make_project(api: httpx.AsyncClient, code: str = "010", name: str = "OCM") -> int:
    data = assert_ok(await api.post("/project/create", json={"name": name, "code": code}))
    return int(data["id"])


async def make_template(api: httpx.AsyncClient, project_id: int, **texts: str) -> int:
    body: dict[str, Any] = {"project_id": project_id, "name": "Шаблон"}
    body.update(
        texts
        or {
            "email_subject": "Здравствуйте, {{ first_name }}",
            "email_text": "Текст для {{ first_name }} {{ last_name }}",
            "sms_text": "{{ first_name }}, привет",
        }
    )
    data = assert_ok(await api.post("/template/create", json=body))
    return int(data["id"])


async def insert_project(engine: AsyncEngine, *, id: int, code: str, name: str = "Проект") -> None:
    """A project with a chosen id, as the manual's examples reference ids that no API assigns."""
    now = utcnow()
    async with engine.begin() as connection:
        await connection.execute(
            insert(Project).values(id=id, code=code, name=name, created_at=now, updated_at=now)
        )


async def insert_template(engine: AsyncEngine, *, id: int, project_id: int) -> None:
    now = utcnow()
    async with engine.begin() as connection:
        await connection.execute(
            insert(Template).values(
                id=id,
                project_id=project_id,
                name="Письмо",
                email_subject="Тема",
                email_text="Текст",
                created_at=now,
                updated_at=now,
            )
        )


def missing_peer(reason: str) -> NoReturn:
    """Skip a test whose real peer is not installed here; CI (``RASSYLKA_TEST_REQUIRE_PEERS``)
    fails instead, so no peer's tests go silently missing there."""
    if os.environ.get("RASSYLKA_TEST_REQUIRE_PEERS"):
        pytest.fail(f"{reason} (run tests/peers/install.sh)")
    pytest.skip(f"{reason} (run tests/peers/install.sh)")
