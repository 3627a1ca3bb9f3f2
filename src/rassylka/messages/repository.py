"""Every query on runs and messages; materialising is set-wise, an INSERT … SELECT per channel."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
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
    insert,
    literal,
    null,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from rassylka.clients.models import Client, Consent
from rassylka.db import UTCDateTime
from rassylka.mailings.models import Channel, Mailing, MailingKind
from rassylka.messages import queue
from rassylka.messages.models import Message, MessageEvent, MessageStatus, Run, RunStatus
from rassylka.metrics import definitions as metrics
from rassylka.scheduling import SendWindow, opening_at_or_after, zone_or_utc
from rassylka.suppressions.models import Suppression

MESSAGE = cast(Table, Message.__table__)
EVENT = cast(Table, MessageEvent.__table__)
RUN = cast(Table, Run.__table__)
MAILING = cast(Table, Mailing.__table__)
SUPPRESSION = cast(Table, Suppression.__table__)
NO_CONTACT = {
    Channel.EMAIL: "У клиента нет email",
    Channel.SMS: "У клиента нет телефона",
}
OPTED_OUT = "Клиент отказался от рассылок"
OPTED_OUT_OF = {
    Channel.EMAIL: "Клиент отписался от писем проекта",
    Channel.SMS: "Клиент отписался от SMS проекта",
}
SUPPRESSED = "Адрес в списке подавления"
NO_CONSENT = {
    Channel.EMAIL: "Нет согласия на рекламу по email",
    Channel.SMS: "Нет согласия на рекламу по SMS",
}
FREQUENCY_CAPPED = {
    Channel.EMAIL: "Превышен лимит частоты: не более {} email за 24 часа",
    Channel.SMS: "Превышен лимит частоты: не более {} SMS за 24 часа",
}
CAP_PERIOD = timedelta(hours=24)
CAP_COUNTED = (
    MessageStatus.QUEUED,
    MessageStatus.SENDING,
    MessageStatus.SENT,
    MessageStatus.DELIVERED,
    MessageStatus.UNDELIVERED,
    MessageStatus.BOUNCED,
)
"""The messages a frequency cap counts: those that went, or may still go, to the peer; not
the skipped, failed or expired ones, which never left (docs/consent.md)."""


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
    window: SendWindow | None = None,
    kind: str = MailingKind.SERVICE,
    caps: Mapping[int, int | None] | None = None,
) -> None:
    """One message per client of the project in the ``audience`` per channel, inside the
    database; the ``skipped`` ones with their creation event (``None`` → ``skipped``).

    A message made ``queued`` has no stored creation event: its history starts with one read
    from the message row (``history``), and the live stream and webhooks hear nothing of it
    until it changes — a run of a million no longer writes a million events (a quarter of
    the statement's time and 40 % of its WAL) nor pushes them to every reader before its
    first send. A ``skipped`` message is already in its end state, so the CRM hears of it.

    With a send ``window``, each message is due when the window next opens in its recipient's
    zone (now if it is open): the zones the audience lives in are read first (a few hundred at
    most, whatever its size) and each one's opening is computed once, in Python; the insert
    picks its zone's moment — no second pass that rewrites the messages.

    A client the message cannot or must not go to gets a ``skipped`` message with the first
    reason that applies: no contact for the channel, opted out (of all mailings, then of the
    channel), the address suppressed in the project, no consent to advertising for the
    channel (an ``advertising`` ``kind`` only), the project's frequency cap for the channel
    (``caps``, channel → messages per 24 hours) reached. So the mailing's statistics account
    for every client of its audience. Each
    message keeps the recipient's zone: the client's own, else the phone's, else the
    mailing's. Call it once per run, in the transaction that created the run: nothing checks
    for copies (the run is new, its clients distinct), which is what makes it fast.

    One plain ``INSERT … SELECT`` per channel writes the messages (ids from the sequence's
    default); then one more statement writes the skipped messages' events, read back through
    ``ix_message_mailing_run_status`` (a few per cent of the run). Only that statement takes
    the events lock (``queue.log_events``, see ``messages.queue``), so other workers' event
    writes wait for it and the commit, not for the whole materialisation.
    """
    postgres = session.get_bind().dialect.name == "postgresql"
    chosen = audience_filter("postgresql" if postgres else "sqlite", audience)
    zone = _zone(mailing_timezone)
    due: ColumnElement[Any] = literal(now, UTCDateTime)
    if window is not None:
        openings = await _openings(
            session, window, zone=zone, project_id=project_id, chosen=chosen, now=now
        )
        if openings:
            due = case(
                {name: literal(moment, UTCDateTime) for name, moment in openings.items()},
                value=zone,
                else_=due,
            )
    if postgres:
        # The suppressions are joined by hash, whatever the statistics say: right after a big
        # import PostgreSQL may have none and would loop over every suppression per client
        # (13 s instead of 0.2 s for 50,000); a lookup per client in the unique index instead
        # cost 4 s per million.
        await session.execute(text("SET LOCAL enable_nestloop = off"))
    made: dict[int, int] = {}
    recent_runs = await _recent_runs(
        session, project_id=project_id, run_id=run_id, caps=caps or {}, now=now
    )
    for channel in channels:
        cap = (caps or {}).get(channel)
        capped = (
            _capped(channel=channel, cap=cap, runs=recent_runs)
            if cap is not None and recent_runs
            else None
        )
        recipients = _recipients(
            channel=channel,
            project_id=project_id,
            chosen=chosen,
            zone=zone,
            due=due,
            advertising=kind == MailingKind.ADVERTISING,
            capped=(capped, cap) if capped is not None and cap is not None else None,
        )
        rows = _message_rows(
            recipients.subquery("recipient"),
            channel=channel,
            run_id=run_id,
            mailing_id=mailing_id,
            now=now,
        )
        result = await session.execute(insert(MESSAGE).from_select(MESSAGE_COLUMNS, rows))
        made[channel] = max(0, cast(Any, result).rowcount or 0)
    if postgres:
        await session.execute(text("SET LOCAL enable_nestloop TO DEFAULT"))
    await _count_made(session, mailing_id=mailing_id, run_id=run_id, made=made)
    # Events last (see messages.queue): the skipped messages' only, in message order.
    await queue.log_events(
        session,
        where=[
            MESSAGE.c.mailing_id == mailing_id,
            MESSAGE.c.run_id == run_id,
            MESSAGE.c.status == MessageStatus.SKIPPED,
        ],
        old_status=None,
        now=now,
    )


async def _count_made(
    session: AsyncSession, *, mailing_id: int, run_id: int, made: Mapping[int, int]
) -> None:
    """Count a run's new messages, queued and skipped, by channel (at commit): the skipped
    ones by the index on (mailing, run, status), a range as long as they are few."""
    if not any(made.values()):
        return
    rows = await session.execute(
        select(MESSAGE.c.channel, func.count())
        .where(
            MESSAGE.c.mailing_id == mailing_id,
            MESSAGE.c.run_id == run_id,
            MESSAGE.c.status == MessageStatus.SKIPPED,
        )
        .group_by(MESSAGE.c.channel)
    )
    skipped = {channel: count for channel, count in rows}
    metrics.on_commit_counts(
        session,
        [
            count
            for channel, total in made.items()
            for count in (
                (channel, MessageStatus.QUEUED.value, total - skipped.get(channel, 0)),
                (channel, MessageStatus.SKIPPED.value, skipped.get(channel, 0)),
            )
        ],
    )


# What materialising writes of a message, in this order (its id comes from the sequence).
MESSAGE_COLUMNS = [
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


async def _recent_runs(
    session: AsyncSession,
    *,
    project_id: int,
    run_id: int,
    caps: Mapping[int, int | None],
    now: datetime,
) -> list[tuple[int, int]]:
    """(mailing id, run id) of the project's other runs started in the last 24 hours, when a
    channel has a cap (else nothing is read): a run's messages are made when it starts, so
    these hold every message of the project made since. Few (one per occurrence), so their
    ids go into the count's query as values, and it reads their messages through
    ``ix_message_mailing_run_status`` however the planner is told to join."""
    if all(cap is None for cap in caps.values()):
        return []
    rows = await session.execute(
        select(RUN.c.mailing_id, RUN.c.id)
        .join(MAILING, MAILING.c.id == RUN.c.mailing_id)
        .where(
            MAILING.c.project_id == project_id,
            RUN.c.started_at > now - CAP_PERIOD,
            RUN.c.id != run_id,
        )
    )
    return [(mailing_id, run) for mailing_id, run in rows]


def _capped(*, channel: int, cap: int, runs: Sequence[tuple[int, int]]) -> Any:
    """The clients with ``cap`` or more counted messages of ``channel`` in ``runs``: one row
    each (a subquery ``client_id``), to join to the audience by hash."""
    mailing_ids = sorted({mailing_id for mailing_id, _ in runs})
    run_ids = sorted(run for _, run in runs)
    # mailing_id narrows the index's range; run_id alone names the runs (its ids are unique).
    return (
        select(MESSAGE.c.client_id)
        .where(
            MESSAGE.c.mailing_id.in_(mailing_ids),
            MESSAGE.c.run_id.in_(run_ids),
            MESSAGE.c.status.in_([status.value for status in CAP_COUNTED]),
            MESSAGE.c.channel == channel,
            MESSAGE.c.client_id.is_not(None),
        )
        .group_by(MESSAGE.c.client_id)
        .having(func.count() >= cap)
        .subquery("capped")
    )


def _recipients(
    *,
    channel: int,
    project_id: int,
    chosen: list[ColumnElement[bool]],
    zone: ColumnElement[Any],
    due: ColumnElement[Any],
    advertising: bool = False,
    capped: tuple[Any, int] | None = None,
) -> Select[Any]:
    """The audience's clients for ``channel``: client id, address, zone, when it is due and
    the reason to skip (NULL: send). ``advertising``: only with consent for the channel;
    ``capped``: the subquery of ``_capped`` and its cap."""
    client = cast(Table, Client.__table__)
    email = channel == Channel.EMAIL
    address = client.c.email if email else client.c.phone
    opted_out = client.c.email_opted_out if email else client.c.sms_opted_out
    consent = client.c.email_consent if email else client.c.sms_consent
    suppressed = SUPPRESSION.alias("suppressed")
    whens: list[tuple[ColumnElement[bool], ColumnElement[Any]]] = [
        (address.is_(None), literal(NO_CONTACT[Channel(channel)], String)),
        (client.c.opted_out, literal(OPTED_OUT, String)),
        (opted_out, literal(OPTED_OUT_OF[Channel(channel)], String)),
        (
            suppressed.c.id.is_not(None),
            literal(SUPPRESSED, String)
            + func.coalesce(literal(": ", String) + suppressed.c.reason, literal("", String)),
        ),
    ]
    if advertising:
        whens.append(
            (consent != Consent.GRANTED.value, literal(NO_CONSENT[Channel(channel)], String))
        )
    if capped is not None:
        over, cap = capped
        whens.append(
            (
                over.c.client_id.is_not(None),
                literal(FREQUENCY_CAPPED[Channel(channel)].format(cap), String),
            )
        )
    reason = case(*whens, else_=null())
    columns: list[ColumnElement[Any]] = [
        client.c.id.label("client_id"),
        address.label("address"),
        zone.label("timezone"),
        due.label("due"),
        reason.label("reason"),
    ]
    # One suppression at most per client: (project_id, address) is unique.
    joined = client.outerjoin(
        suppressed,
        and_(suppressed.c.project_id == project_id, suppressed.c.address == func.lower(address)),
    )
    if capped is not None:
        joined = joined.outerjoin(capped[0], capped[0].c.client_id == client.c.id)
    return select(*columns).select_from(joined).where(client.c.project_id == project_id, *chosen)


def _zone(mailing_timezone: str) -> ColumnElement[Any]:
    """A recipient's zone: the client's own, else the phone's, else the mailing's."""
    client = cast(Table, Client.__table__)
    return func.coalesce(
        client.c.timezone, client.c.phone_timezone, literal(mailing_timezone, String)
    )


async def _openings(
    session: AsyncSession,
    window: SendWindow,
    *,
    zone: ColumnElement[Any],
    project_id: int,
    chosen: list[ColumnElement[bool]],
    now: datetime,
) -> dict[str, datetime]:
    """Each zone of the audience whose window is shut at ``now``, with when it opens."""
    client = cast(Table, Client.__table__)
    names = await session.scalars(
        select(zone).distinct().where(client.c.project_id == project_id, *chosen)
    )
    openings = {}
    for name in list(names):
        opening = opening_at_or_after(window, now, zone_or_utc(name))
        if opening > now:
            openings[name] = opening
    return openings


def _status(sendable: ColumnElement[bool]) -> ColumnElement[Any]:
    return case(
        (sendable, literal(MessageStatus.QUEUED.value, String)),
        else_=literal(MessageStatus.SKIPPED.value, String),
    )


def _message_rows(
    recipient: Any, *, channel: int, run_id: int, mailing_id: int, now: datetime
) -> Select[Any]:
    """The message rows of ``recipient`` (a subquery of ``_recipients``) in
    ``MESSAGE_COLUMNS``' order."""
    moment = literal(now, UTCDateTime)
    sendable = recipient.c.reason.is_(None)
    return select(
        literal(run_id, BigInteger),
        literal(mailing_id, BigInteger),
        recipient.c.client_id,
        literal(channel, SmallInteger),
        recipient.c.address,
        recipient.c.timezone,
        _status(sendable),
        recipient.c.reason,
        literal(0, Integer),
        case((sendable, recipient.c.due), else_=None),
        moment,
        moment,
    )


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
            .where(MESSAGE.c.mailing_id == mailing_id, MESSAGE.c.run_id.in_(list(counts)))
            .group_by(MESSAGE.c.run_id, MESSAGE.c.status)
        )
        for run_id, status, count in rows:
            counts[run_id][status] = count
    return runs, int(total or 0), counts


@dataclass(frozen=True)
class Created:
    """A message's creation as ``queued``, which is not stored (see ``materialize``): read from
    the message row. It has no event id — it never was an event of the stream or webhooks."""

    created_at: datetime
    id: None = None
    old_status: None = None
    status: str = MessageStatus.QUEUED.value
    reason: None = None
    peer_message_id: None = None


def history(message: Message, events: Sequence[MessageEvent]) -> list[MessageEvent | Created]:
    """A message's status changes, oldest first, from its creation: its stored ``events``
    (oldest first), after a ``None`` → ``queued`` read from the row when none of them is a
    creation (the message was made ``queued`` by a run that stores no such event; one made
    ``skipped``, or made by earlier versions, has its creation stored)."""
    if events and events[0].old_status is None:
        return list(events)
    return [Created(created_at=message.created_at), *events]


async def messages_page(
    session: AsyncSession,
    *,
    mailing_id: int | None = None,
    client_id: int | None = None,
    status: str | None = None,
    channel: int | None = None,
    limit: int,
    offset: int,
) -> tuple[list[Message], int, dict[int, list[MessageEvent | Created]]]:
    """A mailing's or a client's messages in id order, filtered, with each one's ``history``
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
    stored: dict[int, list[MessageEvent]] = {message.id: [] for message in found}
    if found:
        events = await session.scalars(
            select(MessageEvent)
            .where(MessageEvent.message_id.in_(list(stored)))
            .order_by(MessageEvent.id)
        )
        for event in events:
            stored[event.message_id].append(event)
    return (
        found,
        int(total or 0),
        {message.id: history(message, stored[message.id]) for message in found},
    )


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


async def counts_by_mailing(
    session: AsyncSession, *, mailing_ids: Sequence[int]
) -> dict[int, dict[str, int]]:
    """Messages per status of each of ``mailing_ids`` (a page of a list): one grouped query."""
    if not mailing_ids:
        return {}
    rows = await session.execute(
        select(MESSAGE.c.mailing_id, MESSAGE.c.status, func.count())
        .where(MESSAGE.c.mailing_id.in_(list(mailing_ids)))
        .group_by(MESSAGE.c.mailing_id, MESSAGE.c.status)
    )
    counts: dict[int, dict[str, int]] = {}
    for mailing_id, status, count in rows:
        counts.setdefault(int(mailing_id), {})[str(status)] = int(count)
    return counts


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
            .returning(MESSAGE.c.id, MESSAGE.c.run_id, MESSAGE.c.channel)
        )
        rows = result.all()
        metrics.on_commit(session, ((row[2], metrics.REQUEUED) for row in rows))
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
