"""The one opt-out every unsubscribe goes through: the client out of one channel of one project,
the address suppressed, what is queued for it skipped, one ``unsubscribed`` event."""

from __future__ import annotations

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from rassylka.clients.models import Client
from rassylka.clients.optout import opt_out
from rassylka.db import create_sessionmaker, utcnow
from rassylka.mailings.models import Channel
from rassylka.messages.models import Message, MessageEvent
from rassylka.projects.models import Project
from rassylka.suppressions.models import Suppression
from test_materialize import arrange, messages, start


async def _message_id(engine: AsyncEngine, address: str) -> int:
    async with engine.connect() as connection:
        found = await connection.scalar(select(Message.id).where(Message.address == address))
    assert found is not None
    return int(found)


async def test_opting_out_of_email_skips_email_only_and_is_idempotent(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await arrange(api)
    await start(engine)
    message_id = await _message_id(engine, "a@example.com")
    sessionmaker = create_sessionmaker(engine)
    async with sessionmaker() as session, session.begin():
        project_id = await session.scalar(select(Project.id).where(Project.code == "010"))
        assert project_id is not None
        done = await opt_out(
            session,
            project_id=project_id,
            channel=Channel.EMAIL,
            address=" A@Example.com ",
            source="отписка по ссылке",
            now=utcnow(),
            message_id=message_id,
        )
    assert done.changed
    assert done.address == "a@example.com"
    assert done.message_id == message_id
    found = await messages(engine)
    assert found[("a@example.com", 1)][0] == "skipped"
    assert "отписка по ссылке" in (found[("a@example.com", 1)][1] or "")
    assert found[("+79160000001", 2)] == ("queued", None)  # SMS is another channel
    assert found[("b@example.com", 1)] == ("queued", None)
    async with engine.connect() as connection:
        client = (
            await connection.execute(
                select(Client).where(Client.guid == "both", Client.project_id == project_id)
            )
        ).one()
        assert client.email_opted_out
        assert not client.sms_opted_out
        assert not client.opted_out
        assert client.email_consent == "denied"
        assert client.email_consent_source == "отписка по ссылке"
        assert client.sms_consent == "unknown"
        # The same guid in another project is another client, untouched.
        other = await connection.scalar(
            select(func.count()).where(Client.guid == "both", Client.email_opted_out.is_(True))
        )
        assert other == 1
        suppressed = (await connection.execute(select(Suppression.address))).scalars().all()
        assert suppressed == ["a@example.com"]
        notes = (
            await connection.execute(
                select(MessageEvent.message_id, MessageEvent.old_status, MessageEvent.reason).where(
                    MessageEvent.status == "unsubscribed"
                )
            )
        ).all()
        assert notes == [(message_id, "skipped", "отписка по ссылке")]

    async with sessionmaker() as session, session.begin():
        again = await opt_out(
            session,
            project_id=project_id,
            channel=Channel.EMAIL,
            address="a@example.com",
            source="отписка по ссылке",
            now=utcnow(),
            message_id=message_id,
        )
    assert not again.changed
    assert again.message_id is None
    async with engine.connect() as connection:
        count = await connection.scalar(
            select(func.count()).where(MessageEvent.status == "unsubscribed")
        )
    assert count == 1


async def test_an_sms_opt_out_without_a_message_notes_the_latest_one(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await arrange(api)
    await start(engine)
    message_id = await _message_id(engine, "+79160000003")
    async with create_sessionmaker(engine)() as session, session.begin():
        project_id = await session.scalar(select(Project.id).where(Project.code == "010"))
        assert project_id is not None
        done = await opt_out(
            session,
            project_id=project_id,
            channel=Channel.SMS,
            address="8 916 000-00-03",
            source="SMS «СТОП»",
            now=utcnow(),
        )
    assert done.address == "+79160000003"
    assert done.message_id == message_id
    found = await messages(engine)
    assert found[("+79160000003", 2)][0] == "skipped"
    async with engine.connect() as connection:
        client = (await connection.execute(select(Client).where(Client.guid == "phone"))).one()
    assert client.sms_opted_out
    assert client.sms_consent == "denied"
