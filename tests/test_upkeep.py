"""Planner statistics kept fresh by the worker (engine/upkeep.py), on a real database."""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from rassylka.db import create_sessionmaker
from rassylka.engine.upkeep import Statistics


async def test_tables_changed_in_bulk_are_analyzed_once(engine: AsyncEngine) -> None:
    statistics = Statistics(create_sessionmaker(engine))
    if engine.dialect.name != "postgresql":
        assert await statistics.refresh(now=True) == []  # SQLite: nothing to do
        return
    async with engine.begin() as connection:
        project_id = (
            await connection.execute(
                text(
                    "INSERT INTO project (code, name, created_at, updated_at)"
                    " VALUES ('stats', 'Статистика', now(), now()) RETURNING id"
                )
            )
        ).scalar_one()
        await connection.execute(
            text(
                "INSERT INTO client (project_id, guid, first_name, last_name, middle_name, tags,"
                " attributes, opted_out, created_at, updated_at)"
                " SELECT :project, 'g' || n, 'Имя', 'Фамилия', '', '[]', '{}', false, now(), now()"
                " FROM generate_series(1, 5000) AS n"
            ),
            {"project": project_id},
        )

    # A backend reports its changes to the statistics collector within a second or so.
    for _ in range(100):
        analyzed = await statistics.refresh(now=True)
        if analyzed:
            break
        await asyncio.sleep(0.1)
    assert analyzed == ["client"]

    async with engine.connect() as connection:
        tuples = await connection.scalar(
            text("SELECT reltuples FROM pg_class WHERE relname = 'client'")
        )
    assert tuples == 5000  # the planner now knows the table's size
    # Fresh now, and a look within the interval is skipped altogether.
    assert await statistics.refresh(now=True) == []
    assert await statistics.refresh() == []
