"""An active mailing whose moment has come becomes one message per client per channel."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from helpers import assert_ok, make_project, make_template
from rassylka.db import create_sessionmaker
from rassylka.messages import service
from rassylka.messages.models import Message, Run

CLIENTS: list[dict[str, Any]] = [
    {
        "guid": "both",
        "first_name": "А",
        "last_name": "А",
        "email": "a@example.com",
        "phone": "+79160000001",
    },
    {"guid": "mail", "first_name": "Б", "last_name": "Б", "email": "b@example.com"},
    {"guid": "phone", "first_name": "В", "last_name": "В", "phone": "+79160000003"},
]


async def arrange(api: httpx.AsyncClient, **mailing: Any) -> int:
    project_id = await make_project(api, code="010")
    await make_project(api, code="other")
    template_id = await make_template(api, project_id)
    data = assert_ok(await api.post("/client/import", json={"project": "010", "clients": CLIENTS}))
    assert data["created"] == 3
    outsider = {**CLIENTS[0], "project": "other"}
    assert_ok(await api.post("/client/create", json=outsider))
    body = {
        "name": "m",
        "project_id": project_id,
        "template_id": template_id,
        "status": 1,
        "channels": [1, 2],
        "event": "2020-08-02",
    }
    body.update(mailing)
    return int(assert_ok(await api.post("/mailing/create", json=body))["id"])


async def start(engine: AsyncEngine) -> list[int]:
    async with create_sessionmaker(engine)() as session, session.begin():
        return await service.start_due_mailings(session)


async def messages(engine: AsyncEngine) -> dict[tuple[str | None, int], tuple[str, str | None]]:
    """(address or guid, channel) → (status, reason) of every message."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(
                Message.address, Message.channel, Message.status, Message.reason, Message.client_id
            )
        )
        return {
            (row.address or f"client {row.client_id}", row.channel): (row.status, row.reason)
            for row in rows
        }


async def test_a_due_mailing_becomes_messages(api: httpx.AsyncClient, engine: AsyncEngine) -> None:
    mailing_id = await arrange(api)
    [run_id] = await start(engine)
    found = await messages(engine)
    assert len(found) == 6, (
        "3 clients of the project × 2 channels; the other project's client is not in"
    )
    assert found[("a@example.com", 1)] == ("queued", None)
    assert found[("+79160000001", 2)] == ("queued", None)
    assert found[("b@example.com", 1)] == ("queued", None)
    assert found[("+79160000003", 2)] == ("queued", None)
    skipped = {key: value for key, value in found.items() if value[0] == "skipped"}
    assert sorted(reason for _, reason in skipped.values()) == [
        "У клиента нет email",
        "У клиента нет телефона",
    ]
    async with engine.connect() as connection:
        run = (await connection.execute(select(Run))).one()
        assert (run.id, run.mailing_id, run.status) == (run_id, mailing_id, "running")
        due = await connection.scalars(
            select(Message.next_attempt_at).where(Message.status == "queued")
        )
        assert all(moment is not None for moment in due)


async def test_starting_twice_makes_nothing_twice(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await arrange(api)
    assert len(await start(engine)) == 1
    assert await start(engine) == []
    assert len(await messages(engine)) == 6


async def test_only_one_channel(api: httpx.AsyncClient, engine: AsyncEngine) -> None:
    await arrange(api, channels=["sms"])
    await start(engine)
    found = await messages(engine)
    assert {channel for _, channel in found} == {2}
    assert len(found) == 3


async def test_not_yet_due_or_not_active_starts_nothing(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    mailing_id = await arrange(api, event="2999-01-01")
    assert await start(engine) == []
    for status in (0, 2, 3, 4):
        assert_ok(
            await api.put(
                f"/mailing/{mailing_id}/update", json={"status": status, "event": "2020-01-01"}
            )
        )
        assert await start(engine) == [], status
    assert await messages(engine) == {}
    assert_ok(await api.put(f"/mailing/{mailing_id}/update", json={"status": 1}))
    assert len(await start(engine)) == 1
