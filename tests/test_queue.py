"""The queue's SQL on both databases: claims are disjoint and leased, outcomes are stored even
when a peer's reply is not clean text."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from rassylka.db import create_sessionmaker, utcnow
from rassylka.engine.scheduler import Scheduler
from rassylka.messages import queue
from rassylka.messages.models import Message, MessageEvent
from test_dispatcher import arrange, client


async def test_claims_are_disjoint_leased_and_counted(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await arrange(api, [client(n, f"user{n}@example.ru") for n in range(5)])
    sessionmaker = create_sessionmaker(engine)
    await Scheduler(sessionmaker).tick()
    now = utcnow()
    lease = now + timedelta(minutes=5)
    async with sessionmaker() as session, session.begin():
        first = await queue.claim(session, channel=1, limit=3, now=now, lease_until=lease)
    async with sessionmaker() as session, session.begin():
        second = await queue.claim(session, channel=1, limit=3, now=now, lease_until=lease)
    async with sessionmaker() as session, session.begin():
        third = await queue.claim(session, channel=1, limit=3, now=now, lease_until=lease)
    assert len(first) == 3
    assert len(second) == 2
    assert third == []
    assert {m.id for m in first}.isdisjoint({m.id for m in second})
    assert {m.attempts for m in first + second} == {1}
    async with sessionmaker() as session, session.begin():
        nothing_sms = await queue.claim(session, channel=2, limit=3, now=now, lease_until=lease)
        released = [m.id for m in second]
        await queue.release(session, ids=released, now=now)
    assert nothing_sms == []
    async with engine.connect() as connection:
        rows = await connection.execute(select(Message.id, Message.status, Message.attempts))
        state = {row.id: (row.status, row.attempts) for row in rows}
    assert all(state[id] == ("queued", 0) for id in released)
    assert all(state[m.id] == ("sending", 1) for m in first)


async def test_replies_that_no_database_would_take_are_stored_cleaned(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await arrange(api, [client(1, "a@example.ru"), client(2, "b@example.ru")])
    sessionmaker = create_sessionmaker(engine)
    await Scheduler(sessionmaker).tick()
    now = utcnow()
    async with sessionmaker() as session, session.begin():
        first, second = await queue.claim(
            session, channel=1, limit=2, now=now, lease_until=now + timedelta(minutes=1)
        )
    poison = "250 ok\x00 \udcc7\udce5 end"
    async with sessionmaker() as session, session.begin():
        await queue.record(
            session,
            sent=[queue.SentResult(first.id, "x" * 300 + "\x00", poison, 1)],
            retries=[],
            failed=[queue.FailedResult(second.id, "550 \x00bad", "550 \x00bad")],
            now=now,
        )
    async with engine.connect() as connection:
        rows = {
            row.id: row
            for row in await connection.execute(
                select(Message.id, Message.status, Message.reply, Message.peer_message_id)
            )
        }
    assert rows[first.id].status == "sent"
    assert rows[first.id].reply == "250 ok ?? end"
    assert rows[first.id].peer_message_id == "x" * 255
    assert rows[second.id].status == "failed"
    assert rows[second.id].reply == "550 bad"


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_event_ids_become_visible_in_id_order(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """A reader resuming after the last event id it saw must miss nothing: a transaction
    whose events got later ids cannot commit before one holding earlier ids."""
    await arrange(api, [client(n, f"user{n}@example.ru") for n in range(2)])
    sessionmaker = create_sessionmaker(engine)
    await Scheduler(sessionmaker).tick()
    async with engine.connect() as connection:
        first_id, second_id = await connection.scalars(select(Message.id).order_by(Message.id))
    early = sessionmaker()
    await early.begin()
    await queue.log_events(early, ids=[first_id], old_status=None, now=utcnow())

    async def later() -> None:
        async with sessionmaker() as session, session.begin():
            await queue.log_events(session, ids=[second_id], old_status=None, now=utcnow())

    task = asyncio.create_task(later())
    try:
        done, _ = await asyncio.wait({task}, timeout=0.5)
        assert not done, "the later writer committed while the earlier one was open"
        await early.commit()
        await asyncio.wait_for(task, 10)
    finally:
        await early.close()
    async with engine.connect() as connection:
        order = (
            await connection.scalars(
                select(MessageEvent.message_id)
                .where(MessageEvent.old_status.is_(None), MessageEvent.status == "queued")
                .order_by(MessageEvent.id.desc())
                .limit(2)
            )
        ).all()
    assert order == [second_id, first_id]
