"""Every query on runs and messages; materialising is set-wise, an INSERT … SELECT per channel."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    SmallInteger,
    String,
    Table,
    and_,
    case,
    delete,
    distinct,
    func,
    literal,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from rassylka.clients.models import Client
from rassylka.db import UTCDateTime
from rassylka.mailings.models import Channel
from rassylka.messages import queue
from rassylka.messages.models import Message, MessageEvent, MessageStatus, Run, RunStatus
from rassylka.scheduling import SendWindow, opening_at_or_after, zone_or_utc
from rassylka.suppressions.models import Suppression

MESSAGE = cast(Table, Message.__table__)
EVENT = cast(Table, MessageEvent.__table__)
RUN = cast(Table, Run.__table__)
SUPPRESSION = cast(Table, Suppression.__table__)
NO_CONTACT = {
    Channel.EMAIL: "У клиента нет email",
    Channel.SMS: "У клиента нет телефона",
}
OPTED_OUT = "Клиент отказался от рассылок"
SUPPRESSED = "Адрес в списке подавления"


def _insert(session: AsyncSession, table: Table) -> postgresql.Insert | sqlite.Insert:
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


async def create_run(
    session: AsyncSession, *, mailing_id: int, scheduled_at: datetime, now: datetime
) -> int | None:
    """A new run's id, or None when this occurrence already has one (another worker won)."""
    statement = (
        _insert(session, RUN)
        .values(
            mailing_id=mailing_id,
            scheduled_at=scheduled_at,
            status="running",
            started_at=now,
        )
        .on_conflict_do_nothing(index_elements=[RUN.c.mailing_id, RUN.c.scheduled_at])
        .returning(RUN.c.id)
    )
    run_id: int | None = (await session.execute(statement)).scalar_one_or_none()
    return run_id


async def materialize(
    session: AsyncSession,
    *,
    run_id: int,
    mailing_id: int,
    project_id: int,
    channels: Sequence[int],
    audience: Mapping[str, Any] | None,
    mailing_timezone: str,
    now: datetime,
) -> None:
    """One message per client of the project in the ``audience`` per channel, inside the
    database.

    A client the message cannot or must not go to gets a ``skipped`` message with the first
    reason that applies: no contact for the channel, opted out, the address suppressed in the
    project. So the mailing's statistics account for every client of its audience. Each
    message keeps the recipient's zone: the client's own, else the phone's, else the
    mailing's. Re-running adds nothing (unique run, client, channel), so a crash between two
    channels is mended by running it again.
    """
    moment = literal(now, UTCDateTime)
    dialect = session.get_bind().dialect.name
    chosen = audience_filter(dialect, audience)
    zone = func.coalesce(Client.timezone, Client.phone_timezone, literal(mailing_timezone, String))
    for channel in channels:
        address = Client.email if channel == Channel.EMAIL else Client.phone
        # ": reason", or "" for a suppression without one, or NULL when the address is not
        # suppressed (and then so is the reason below: NULL || text is NULL). A lookup in the
        # unique (project_id, address) index per client rather than a join: a join's plan
        # rests on statistics, and right after a big import PostgreSQL has none and loops
        # over every suppression for every client (13 s instead of 0.2 s for 50,000).
        suppression_note = (
            select(func.coalesce(literal(": ", String) + SUPPRESSION.c.reason, literal("", String)))
            .where(
                SUPPRESSION.c.project_id == project_id,
                SUPPRESSION.c.address == func.lower(address),
            )
            .scalar_subquery()
        )
        skip_reason = case(
            (address.is_(None), literal(NO_CONTACT[Channel(channel)], String)),
            (Client.opted_out, literal(OPTED_OUT, String)),
            else_=literal(SUPPRESSED, String) + suppression_note,
        )
        recipient = (
            select(
                Client.id.label("client_id"),
                address.label("address"),
                zone.label("timezone"),
                skip_reason.label("reason"),
            )
            .where(Client.project_id == project_id, *chosen)
            # A fence (PostgreSQL does not inline a subquery with an OFFSET): the reason's
            # suppression lookup runs once per client, not once per column that reads it.
            .offset(0)
            .subquery("recipient")
        )
        sendable = recipient.c.reason.is_(None)
        rows = select(
            literal(run_id, Integer),
            literal(mailing_id, Integer),
            recipient.c.client_id,
            literal(channel, SmallInteger),
            recipient.c.address,
            recipient.c.timezone,
            case(
                (sendable, literal(MessageStatus.QUEUED.value, String)),
                else_=MessageStatus.SKIPPED.value,
            ),
            recipient.c.reason,
            literal(0, Integer),
            case((sendable, moment), else_=None),
            moment,
            moment,
        ).where(true())  # SQLite reads "FROM x ON CONFLICT" as a join's ON without a WHERE
        columns = [
            "run_id",
            "mailing_id",
            "client_id",
            "channel",
            "address",
            "timezone",
            "status",
            "reason",
            "attempts",
            "next_attempt_at",
            "created_at",
            "updated_at",
        ]
        statement = (
            _insert(session, MESSAGE)
            .from_select(columns, rows)
            .on_conflict_do_nothing(
                index_elements=[MESSAGE.c.run_id, MESSAGE.c.client_id, MESSAGE.c.channel]
            )
        )
        await session.execute(statement)


def audience_filter(dialect: str, audience: Mapping[str, Any] | None) -> list[ColumnElement[bool]]:
    """Conditions on ``client`` that select a mailing's audience (see ``mailings.audience``).

    Tags: any of ``tags_any``, all of ``tags_all``. Attributes: each equal to its value, with
    JSON's types: a number matches a number of the same value (3 and 3.0), a string only a
    string, a boolean only that boolean. Empty or missing filters narrow nothing.
    """
    audience = audience or {}
    tags_any = list(dict.fromkeys(audience.get("tags_any") or ()))
    tags_all = list(dict.fromkeys(audience.get("tags_all") or ()))
    attributes: Mapping[str, Any] = audience.get("attributes") or {}
    if dialect == "postgresql":
        return _postgresql_filter(tags_any, tags_all, attributes)
    return _sqlite_filter(tags_any, tags_all, attributes)


def _postgresql_filter(
    tags_any: list[str], tags_all: list[str], attributes: Mapping[str, Any]
) -> list[ColumnElement[bool]]:
    # The columns are json (not jsonb): cast, for jsonb's ?| ?& and @>, which compare with
    # JSON's types (3 = 3.0, "3" ≠ 3, true only true).
    tags = Client.tags.cast(postgresql.JSONB)
    conditions: list[ColumnElement[bool]] = []
    if tags_any:
        conditions.append(tags.has_any(postgresql.array(tags_any)))
    if tags_all:
        conditions.append(tags.has_all(postgresql.array(tags_all)))
    if attributes:
        wanted = literal(dict(attributes), postgresql.JSONB)
        conditions.append(Client.attributes.cast(postgresql.JSONB).contains(wanted))
    return conditions


def _sqlite_filter(
    tags_any: list[str], tags_all: list[str], attributes: Mapping[str, Any]
) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if tags_any:
        tag = func.json_each(Client.tags).table_valued("value")
        conditions.append(select(tag.c.value).where(tag.c.value.in_(tags_any)).exists())
    if tags_all:
        tag = func.json_each(Client.tags).table_valued("value")
        found = select(func.count(distinct(tag.c.value))).where(tag.c.value.in_(tags_all))
        conditions.append(found.scalar_subquery() == len(tags_all))
    if attributes:
        # One pass over the client's attributes counting the entries that match; keys of a
        # JSON object are unique, so all match when the count is the number asked for.
        entry = func.json_each(Client.attributes).table_valued("key", "type", "atom")
        matches = or_(
            *(
                and_(entry.c.key == name, _sqlite_json_equals(entry.c.type, entry.c.atom, value))
                for name, value in attributes.items()
            )
        )
        found = select(func.count()).select_from(entry).where(matches)
        conditions.append(found.scalar_subquery() == len(attributes))
    return conditions


def _sqlite_json_equals(
    kind: ColumnElement[Any], atom: ColumnElement[Any], value: Any
) -> ColumnElement[bool]:
    """``json_each``'s type and atom of an entry equal ``value``, with JSON's types."""
    if isinstance(value, bool):
        return kind == ("true" if value else "false")
    if isinstance(value, int | float):
        return and_(kind.in_(("integer", "real")), atom == value)
    if isinstance(value, str):
        return and_(kind == "text", atom == value)
    return ~true()  # the schema admits only scalars; anything else matches nothing


async def hold_for_window(
    session: AsyncSession, *, run_id: int, window: SendWindow, scheduled_at: datetime
) -> int:
    """Move each queued message of a run to its recipient's window: one UPDATE per zone the
    run's recipients live in (a few hundred at most, whatever the audience), so memory stays
    constant. Returns how many zones had to wait."""
    zones = await session.scalars(
        select(MESSAGE.c.timezone)
        .where(MESSAGE.c.run_id == run_id, MESSAGE.c.status == MessageStatus.QUEUED)
        .distinct()
    )
    waiting = 0
    for name in list(zones):
        zone = zone_or_utc(name)
        opening = opening_at_or_after(window, scheduled_at, zone)
        if opening <= scheduled_at:
            continue
        waiting += 1
        await session.execute(
            update(MESSAGE)
            .where(
                MESSAGE.c.run_id == run_id,
                MESSAGE.c.status == MessageStatus.QUEUED,
                MESSAGE.c.timezone == name if name is not None else MESSAGE.c.timezone.is_(None),
            )
            .values(next_attempt_at=opening)
        )
    return waiting


async def runs_page(
    session: AsyncSession, *, mailing_id: int, limit: int, offset: int
) -> tuple[list[Run], int, dict[int, dict[str, int]]]:
    """A mailing's runs, newest first, with each run's message count per status."""
    runs = list(
        await session.scalars(
            select(Run)
            .where(Run.mailing_id == mailing_id)
            .order_by(Run.scheduled_at.desc(), Run.id.desc())
            .limit(limit)
            .offset(offset)
        )
    )
    total = await session.scalar(
        select(func.count()).select_from(Run).where(Run.mailing_id == mailing_id)
    )
    counts: dict[int, dict[str, int]] = {run.id: {} for run in runs}
    if runs:
        rows = await session.execute(
            select(MESSAGE.c.run_id, MESSAGE.c.status, func.count())
            .where(MESSAGE.c.run_id.in_(list(counts)))
            .group_by(MESSAGE.c.run_id, MESSAGE.c.status)
        )
        for run_id, status, count in rows:
            counts[run_id][status] = count
    return runs, int(total or 0), counts


async def messages_page(
    session: AsyncSession,
    *,
    mailing_id: int | None = None,
    client_id: int | None = None,
    status: str | None = None,
    channel: int | None = None,
    limit: int,
    offset: int,
) -> tuple[list[Message], int, dict[int, list[MessageEvent]]]:
    """A mailing's or a client's messages in id order, filtered, with each one's events
    oldest first."""
    query = select(Message)
    if mailing_id is not None:
        query = query.where(Message.mailing_id == mailing_id)
    if client_id is not None:
        query = query.where(Message.client_id == client_id)
    if status is not None:
        query = query.where(Message.status == status)
    if channel is not None:
        query = query.where(Message.channel == channel)
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    found = list(await session.scalars(query.order_by(Message.id).limit(limit).offset(offset)))
    history: dict[int, list[MessageEvent]] = {message.id: [] for message in found}
    if found:
        events = await session.scalars(
            select(MessageEvent)
            .where(MessageEvent.message_id.in_(list(history)))
            .order_by(MessageEvent.id)
        )
        for event in events:
            history[event.message_id].append(event)
    return found, int(total or 0), history


async def stats(session: AsyncSession, *, mailing_id: int, since: datetime) -> dict[str, Any]:
    """Counts per run (with its moment), channel and status; SMS parts; first and last send;
    sends since ``since``."""
    rows = await session.execute(
        select(
            MESSAGE.c.run_id,
            RUN.c.scheduled_at,
            MESSAGE.c.channel,
            MESSAGE.c.status,
            func.count(),
            func.coalesce(func.sum(MESSAGE.c.parts), 0),
            func.min(MESSAGE.c.sent_at),
            func.max(MESSAGE.c.sent_at),
        )
        .join(RUN, RUN.c.id == MESSAGE.c.run_id)
        .where(MESSAGE.c.mailing_id == mailing_id)
        .group_by(MESSAGE.c.run_id, RUN.c.scheduled_at, MESSAGE.c.channel, MESSAGE.c.status)
    )
    recent = await session.scalar(
        select(func.count()).where(MESSAGE.c.mailing_id == mailing_id, MESSAGE.c.sent_at >= since)
    )
    return {"groups": [tuple(row) for row in rows], "recent": int(recent or 0)}


async def retry_failed(
    session: AsyncSession, *, mailing_id: int, now: datetime
) -> tuple[int, list[int]]:
    """Queue the failed and undelivered messages of a mailing again, attempts from zero; how
    many, and the ids of their runs, which are running again."""
    run_ids: set[int] = set()
    requeued: dict[str, list[int]] = {}
    count = 0
    for old in (MessageStatus.FAILED, MessageStatus.UNDELIVERED):
        result = await session.execute(
            update(MESSAGE)
            .where(MESSAGE.c.mailing_id == mailing_id, MESSAGE.c.status == old)
            .values(
                status=MessageStatus.QUEUED,
                attempts=0,
                next_attempt_at=now,
                leased_until=None,
                reason=None,
                updated_at=now,
            )
            .returning(MESSAGE.c.id, MESSAGE.c.run_id)
        )
        rows = result.all()
        requeued[old] = sorted(row[0] for row in rows)
        run_ids.update(row[1] for row in rows)
        count += len(rows)
    if run_ids:
        await session.execute(
            update(RUN)
            .where(RUN.c.id.in_(run_ids))
            .values(status=RunStatus.RUNNING, finished_at=None)
        )
    # Events last (see messages.queue).
    for status, ids in requeued.items():
        await queue.log_events(session, ids=ids, old_status=status, now=now)
    return count, sorted(run_ids)


async def forget_mailings(session: AsyncSession, *, mailing_ids: Select[Any]) -> None:
    """Delete the messages and events of these mailings (a mailing or a project being
    deleted): they have no foreign keys to cascade by (see ``Message``)."""
    await session.execute(delete(EVENT).where(EVENT.c.mailing_id.in_(mailing_ids)))
    await session.execute(delete(MESSAGE).where(MESSAGE.c.mailing_id.in_(mailing_ids)))


async def forget_client(session: AsyncSession, *, client_id: int) -> None:
    """A client being deleted: its messages stay, for the mailings' history, without it."""
    await session.execute(
        update(MESSAGE).where(MESSAGE.c.client_id == client_id).values(client_id=None)
    )
