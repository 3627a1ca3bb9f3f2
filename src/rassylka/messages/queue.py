"""The message queue's SQL, all of it: claim with a lease, record outcomes, release, recover.

The claim is one statement (procrastinate's shape): a CTE picks due messages of one channel
whose mailing is active, oldest first — on PostgreSQL with ``FOR UPDATE SKIP LOCKED`` so any
number of workers take disjoint batches without waiting on each other — and an ``UPDATE …
FROM`` marks them ``sending`` with a lease and one more attempt, returning what the sender
needs. On SQLite the same statement runs under the database's single writer lock.

A claim whose lease runs out (its worker died) goes back to ``queued`` by ``recover``; its
attempt stays counted, because the send may have happened.

Every status change writes an event (``message_event``) in the same transaction, but for a
message's creation as ``queued`` (see ``repository.materialize``) and the claim: a message is
``sending`` for the milliseconds a send takes, and the event that ends it says ``old_status =
'sending'`` (an event per claim cost a third of all event rows and
made claims wait for the events lock below). Readers (the
live stream, webhooks) resume from the last event id they saw, so ids must become visible in
id order. SQLite has one writer, so they do. On PostgreSQL a sequence hands out ids before
commit, and a later id can commit first; so a transaction takes one advisory lock right before
it writes events and keeps it to its commit: event-writing transactions commit one at a time,
in id order. So event ids are drawn only under that lock (materialising a run takes it only
for its skipped messages' events, at its end: ``repository.materialize``). The rule that keeps
this free of deadlocks:
**events are the last rows a transaction writes** (all its message updates come first; after
the events only NOTIFY).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    String,
    Table,
    Text,
    any_,
    bindparam,
    case,
    delete,
    exists,
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
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from rassylka.clients.models import Client
from rassylka.db import UTCDateTime
from rassylka.mailings.models import Channel, Mailing, MailingStatus
from rassylka.messages.models import (
    Message,
    MessageEvent,
    MessagePart,
    MessageStatus,
    Run,
    RunStatus,
)
from rassylka.metrics import definitions as metrics

CLIENT = cast(Table, Client.__table__)
MESSAGE = cast(Table, Message.__table__)
PART = cast(Table, MessagePart.__table__)
EVENT = cast(Table, MessageEvent.__table__)
# Ids per statement when events are logged for a list of messages (SQLite binds ≤ 32,766).
EVENT_CHUNK = 5000
MAILING = cast(Table, Mailing.__table__)
RUN = cast(Table, Run.__table__)

# The channels that wake workers (PostgreSQL LISTEN/NOTIFY): new work is queued; a mailing's
# schedule or status changed.
NOTIFY_CHANNEL = "rassylka_work"
SCHEDULE_CHANNEL = "rassylka_schedule"
# New events were committed (the live stream's readers wake on it).
EVENTS_CHANNEL = "rassylka_events"
# The advisory lock that orders event-writing transactions on PostgreSQL (a key of its own:
# "rassylka" in ASCII).
EVENTS_LOCK = 0x7261737379_6C6B61
PEER_ID_LENGTH = 255
# The statuses a delivery receipt settles a sent SMS in.
SETTLED_BY_RECEIPT = (MessageStatus.DELIVERED, MessageStatus.UNDELIVERED, MessageStatus.EXPIRED)
# What an event row is made of, in the order every INSERT … SELECT of events selects it.
EVENT_COLUMNS = (
    "message_id",
    "mailing_id",
    "run_id",
    "client_id",
    "client_guid",
    "channel",
    "old_status",
    "status",
    "reason",
    "peer_message_id",
    "created_at",
)


@dataclass(frozen=True)
class Claimed:
    id: int
    run_id: int
    mailing_id: int
    client_id: int | None
    channel: int
    address: str
    attempts: int
    created_at: datetime
    timezone: str | None = None


@dataclass(frozen=True)
class SentResult:
    id: int
    peer_message_id: str | None
    reply: str
    parts: int
    # The peer's id of each part, for the delivery receipts that name them (SMS).
    part_ids: tuple[str, ...] = ()
    # Delivery receipts already in hand for the parts (SMS; the SMSC reports within
    # milliseconds): each part's (state, error), (None, None) where none came yet, and the
    # status and reason they give the message if final. Recorded with the ``sent`` itself:
    # one write of the row, both events (see ``record``).
    part_states: tuple[tuple[str | None, str | None], ...] = ()
    settled: tuple[str, str] | None = None


@dataclass(frozen=True)
class RetryResult:
    id: int
    reply: str
    next_attempt_at: datetime


@dataclass(frozen=True)
class FailedResult:
    id: int
    reason: str
    reply: str | None


def _is_postgresql(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def status_is(status: str) -> ColumnElement[bool]:
    """``message.status = '…'`` with the value in the SQL text, not bound: on PostgreSQL
    ``ix_message_due`` holds only queued and sending messages, and the planner can use it only
    when it sees which status is asked (a prepared statement's generic plan would not)."""
    return MESSAGE.c.status == literal(status, String, literal_execute=True)


def among(session: AsyncSession, column: Any, ids: Iterable[int]) -> ColumnElement[bool]:
    """``column IN ids``. On PostgreSQL ``column = ANY(:ids)``: one array parameter, so the
    statement compiles, caches and binds the same whatever the count (an expanded ``IN`` of a
    batch's 500 ids costs more to render and bind than the rest of the statement)."""
    if _is_postgresql(session):
        return cast(ColumnElement[bool], column == any_(_array(list(ids), BigInteger)))
    return cast(ColumnElement[bool], column.in_(list(ids)))


def _array(values: list[Any], item_type: Any) -> Any:
    return bindparam(None, values, type_=ARRAY(item_type))


async def claim(
    session: AsyncSession, *, channel: int, limit: int, now: datetime, lease_until: datetime
) -> list[Claimed]:
    """Take up to ``limit`` due messages of ``channel`` for this worker until ``lease_until``."""
    active = exists().where(
        MAILING.c.id == MESSAGE.c.mailing_id,
        MAILING.c.status == MailingStatus.ACTIVE,
        or_(MAILING.c.ends_at.is_(None), MAILING.c.ends_at > now),
    )
    due = (
        select(MESSAGE.c.id)
        .where(
            MESSAGE.c.channel == channel,
            status_is(MessageStatus.QUEUED),
            MESSAGE.c.next_attempt_at <= now,
            active,
        )
        .order_by(MESSAGE.c.next_attempt_at, MESSAGE.c.id)
        .limit(limit)
    )
    if _is_postgresql(session):
        due = due.with_for_update(skip_locked=True, of=MESSAGE)
    picked = due.cte("due")
    statement = (
        update(MESSAGE)
        .where(MESSAGE.c.id == picked.c.id, MESSAGE.c.status == MessageStatus.QUEUED)
        .values(
            status=MessageStatus.SENDING,
            attempts=MESSAGE.c.attempts + 1,
            leased_until=lease_until,
            updated_at=now,
        )
        .returning(
            MESSAGE.c.id,
            MESSAGE.c.run_id,
            MESSAGE.c.mailing_id,
            MESSAGE.c.client_id,
            MESSAGE.c.channel,
            MESSAGE.c.address,
            MESSAGE.c.attempts,
            MESSAGE.c.created_at,
            MESSAGE.c.timezone,
        )
    )
    rows = (await session.execute(statement)).all()
    # No event: ``sending`` is the claim's lease, which lasts as long as a send does; the event
    # that ends it (sent, failed, queued again) carries ``old_status = 'sending'``.
    return sorted((Claimed(*row) for row in rows), key=lambda message: message.id)


def storable(value: str | None, limit: int | None = None) -> str | None:
    """Text a peer sent, made safe to store: PostgreSQL refuses NUL, no database takes lone
    surrogates, and ``peer_message_id`` has a length. A write refused for such a detail would
    be retried forever and hold up every outcome behind it."""
    if value is None:
        return None
    value = value.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    return value[:limit] if limit is not None else value


def _by_id() -> Any:
    return (MESSAGE.c.id == bindparam("message_id")) & (MESSAGE.c.status == MessageStatus.SENDING)


async def record(
    session: AsyncSession,
    *,
    sent: Sequence[SentResult],
    retries: Sequence[RetryResult],
    failed: Sequence[FailedResult],
    now: datetime,
    unsent: Sequence[int] = (),
    deferrals: Sequence[Deferral] = (),
) -> set[int]:
    """Write a batch of outcomes, one executemany per kind, then their events; of the sent
    results that carry receipts (``SentResult.part_states``), the ids whose rows this batch
    recorded — their receipts are written; the others' are not, and go the usual way.

    Only rows still ``sending`` change: a claim whose lease ran out and that another worker
    took is that worker's to record. ``unsent`` are released (see ``release``), ``deferrals``
    deferred (see ``defer``), in the same transaction.

    A sent result whose receipts settle it (``SentResult.settled``) is written once, in its
    final status (``delivered``, ``undelivered``, ``expired``) with ``sent_at`` and the
    receipts' reason, and gets both events, ``sending → sent`` then ``sent → delivered``:
    what the stream and webhooks would have shown after two transactions, in one.
    """
    with_receipts: set[int] = set()
    if sent and _is_postgresql(session):
        changed = await _record_sent_unnest(session, sent, now)
        with_receipts = {r.id for r in sent if r.part_states and r.id in changed}
    elif sent:
        await session.execute(
            update(MESSAGE)
            .where(_by_id())
            .values(
                status=bindparam("status"),
                peer_message_id=bindparam("peer_message_id"),
                reply=bindparam("reply"),
                parts=bindparam("parts"),
                reason=func.coalesce(bindparam("reason", type_=Text), MESSAGE.c.reason),
                sent_at=now,
                leased_until=None,
                updated_at=now,
            ),
            [
                {
                    "message_id": result.id,
                    "status": result.settled[0] if result.settled else MessageStatus.SENT,
                    "peer_message_id": storable(result.peer_message_id, PEER_ID_LENGTH),
                    "reply": storable(result.reply),
                    "parts": result.parts,
                    "reason": storable(result.settled[1]) if result.settled else None,
                }
                for result in sent
            ],
        )
        asked = [r.id for r in sent if r.part_states]
        if asked:
            with_receipts = set(
                await session.scalars(
                    select(MESSAGE.c.id).where(
                        among(session, MESSAGE.c.id, asked), MESSAGE.c.updated_at == now
                    )
                )
            )
    if retries:
        await session.execute(
            update(MESSAGE)
            .where(_by_id())
            .values(
                status=MessageStatus.QUEUED,
                reply=bindparam("reply"),
                next_attempt_at=bindparam("next_attempt_at", type_=UTCDateTime),
                leased_until=None,
                updated_at=now,
            ),
            [
                {
                    "message_id": result.id,
                    "reply": storable(result.reply),
                    "next_attempt_at": result.next_attempt_at,
                }
                for result in retries
            ],
        )
    if failed:
        await session.execute(
            update(MESSAGE)
            .where(_by_id())
            .values(
                status=MessageStatus.FAILED,
                reason=bindparam("reason"),
                reply=bindparam("reply"),
                next_attempt_at=None,
                leased_until=None,
                updated_at=now,
            ),
            [
                {
                    "message_id": result.id,
                    "reason": storable(result.reason),
                    "reply": storable(result.reply),
                }
                for result in failed
            ],
        )
    await _release(session, unsent, now)
    await _defer(session, deferrals, now)
    await _add_parts(session, sent, with_receipts, now)
    # Events last (see the module's docstring).
    if any(r.settled and r.id in with_receipts for r in sent):
        await _log_sent_and_settled(session, [r.id for r in sent], now)
    else:
        await _log_changed(session, [r.id for r in sent], MessageStatus.SENT, now)
    await _log_changed(session, [r.id for r in retries], MessageStatus.QUEUED, now)
    await _log_changed(session, [r.id for r in failed], MessageStatus.FAILED, now)
    return with_receipts


async def _record_sent_unnest(
    session: AsyncSession, sent: Sequence[SentResult], now: datetime
) -> set[int]:
    """PostgreSQL: a batch marked sent (or settled, see ``record``) by one ``UPDATE … FROM
    unnest(arrays)``, one statement with array parameters rather than one execution per
    message; the ids it changed when any result carries receipts."""
    values = (
        func.unnest(
            _array([result.id for result in sent], BigInteger),
            _array([storable(r.peer_message_id, PEER_ID_LENGTH) for r in sent], String),
            _array([storable(result.reply) for result in sent], Text),
            _array([result.parts for result in sent], Integer),
            _array([r.settled[0] if r.settled else MessageStatus.SENT for r in sent], String),
            _array([storable(r.settled[1]) if r.settled else None for r in sent], Text),
        )
        .table_valued("id", "peer_message_id", "reply", "parts", "status", "reason")
        .render_derived(name="sent")
    )
    statement = (
        update(MESSAGE)
        .where(MESSAGE.c.id == values.c.id, MESSAGE.c.status == MessageStatus.SENDING)
        .values(
            status=values.c.status,
            peer_message_id=values.c.peer_message_id,
            reply=values.c.reply,
            parts=values.c.parts,
            reason=func.coalesce(values.c.reason, MESSAGE.c.reason),
            sent_at=now,
            leased_until=None,
            updated_at=now,
        )
    )
    if not any(result.part_states for result in sent):
        await session.execute(statement)
        return set()
    return set(await session.scalars(statement.returning(MESSAGE.c.id)))


async def _add_parts(
    session: AsyncSession, sent: Sequence[SentResult], with_receipts: set[int], now: datetime
) -> None:
    """The peer ids of the sent SMS parts, which delivery receipts will name, and the states
    of the receipts in hand for the messages of ``with_receipts``. A message the same batch
    could not mark sent (another worker's now) has its parts kept all the same: a receipt
    for them is still about that message (and is written the usual way)."""
    rows = []
    for result in sent:
        states = result.part_states if result.id in with_receipts else ()
        for number, peer_id in enumerate(result.part_ids, start=1):
            if stored := storable(peer_id, PEER_ID_LENGTH):
                state, error = states[number - 1] if states else (None, None)
                rows.append(
                    {
                        "message_id": result.id,
                        "part": number,
                        "peer_message_id": stored,
                        "state": state,
                        "error": error,
                        "receipt_at": now if state is not None else None,
                    }
                )
    if not rows:
        return
    if not _is_postgresql(session):
        await session.execute(delete(PART).where(PART.c.message_id.in_({r.id for r in sent})))
        await session.execute(insert(PART), rows)
        return
    # PostgreSQL: one statement each, array parameters, the same statement for every batch
    # (an executemany was one execution per part: ~30 µs of the server's time per SMS).
    await session.execute(
        delete(PART).where(among(session, PART.c.message_id, {r.id for r in sent}))
    )
    types = {
        "message_id": BigInteger,
        "part": Integer,
        "peer_message_id": String,
        "state": String,
        "error": String,
        "receipt_at": UTCDateTime,
    }
    values = (
        func.unnest(*(_array([row[name] for row in rows], type_) for name, type_ in types.items()))
        .table_valued(*types)
        .render_derived(name="part")
    )
    columns = tuple(types)
    await session.execute(
        insert(PART).from_select(columns, select(*(values.c[name] for name in columns)))
    )


async def release(session: AsyncSession, *, ids: Sequence[int], now: datetime) -> None:
    """Hand claimed messages that were never sent back to the queue, their attempt uncounted
    (no event: undoing a claim, which had none, changes nothing anyone was told)."""
    await _release(session, ids, now)


async def _release(session: AsyncSession, ids: Sequence[int], now: datetime) -> None:
    if not ids:
        return
    await session.execute(
        update(MESSAGE)
        .where(among(session, MESSAGE.c.id, ids), MESSAGE.c.status == MessageStatus.SENDING)
        .values(
            status=MessageStatus.QUEUED,
            attempts=MESSAGE.c.attempts - 1,
            leased_until=None,
            updated_at=now,
        )
    )


async def due_counts(session: AsyncSession, *, now: datetime) -> dict[int, int]:
    """Messages queued and due now, by channel (the metrics' queue depth): what the claims
    have yet to take, of paused mailings too (telling those apart would join every message
    to its mailing). On ``ix_message_due``, which on PostgreSQL holds only queued and sending
    messages: the count reads the queue, not the table."""
    rows = await session.execute(
        select(MESSAGE.c.channel, func.count())
        .where(status_is(MessageStatus.QUEUED), MESSAGE.c.next_attempt_at <= now)
        .group_by(MESSAGE.c.channel)
    )
    return {channel: count for channel, count in rows}


async def recover(session: AsyncSession, *, channel: int, now: datetime) -> int:
    """Return the claims of dead workers (lease run out) to the queue; how many there were."""
    result = await session.execute(
        update(MESSAGE)
        .where(
            MESSAGE.c.channel == channel,
            status_is(MessageStatus.SENDING),
            MESSAGE.c.leased_until < now,
        )
        .values(status=MessageStatus.QUEUED, leased_until=None, next_attempt_at=now, updated_at=now)
        .returning(MESSAGE.c.id)
    )
    # No event, as for any claim undone; the worker that recovers them logs how many.
    return len(result.all())


async def finish_runs(
    session: AsyncSession, *, now: datetime, run_ids: Iterable[int] | None = None
) -> list[int]:
    """Close running runs (all, or those of ``run_ids``) with nothing left queued or sending,
    and complete the active mailings that have no run left and no next one; the runs closed."""
    # By mailing, run and status: ix_message_mailing_run_status (no index leads with run_id).
    pending = exists().where(
        MESSAGE.c.mailing_id == RUN.c.mailing_id,
        MESSAGE.c.run_id == RUN.c.id,
        MESSAGE.c.status.in_([MessageStatus.QUEUED, MessageStatus.SENDING]),
    )
    where = [RUN.c.status == RunStatus.RUNNING, ~pending]
    if run_ids is not None:
        where.append(RUN.c.id.in_(set(run_ids)))
    finished = (
        await session.execute(
            update(RUN)
            .where(*where)
            .values(status=RunStatus.FINISHED, finished_at=now)
            .returning(RUN.c.id, RUN.c.mailing_id)
        )
    ).all()
    if finished:
        running = exists().where(
            RUN.c.mailing_id == MAILING.c.id, RUN.c.status == RunStatus.RUNNING
        )
        await session.execute(
            update(MAILING)
            .where(
                MAILING.c.id.in_({mailing_id for _, mailing_id in finished}),
                MAILING.c.status == MailingStatus.ACTIVE,
                MAILING.c.next_run_at.is_(None),
                ~running,
            )
            .values(status=MailingStatus.COMPLETED, updated_at=now)
        )
    return [run_id for run_id, _ in finished]


async def pause_mailing(
    session: AsyncSession, *, mailing_id: int, reason: str, now: datetime
) -> bool:
    """Pause an active mailing with the reason shown on its read; False if it was not active."""
    result = await session.execute(
        update(MAILING)
        .where(MAILING.c.id == mailing_id, MAILING.c.status == MailingStatus.ACTIVE)
        .values(status=MailingStatus.PAUSED, status_reason=reason, updated_at=now)
        .returning(MAILING.c.id)
    )
    return result.first() is not None


async def notify_work(session: AsyncSession) -> None:
    """Wake the workers listening (PostgreSQL, delivered at commit); nothing on SQLite."""
    if _is_postgresql(session):
        await session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": NOTIFY_CHANNEL})


async def notify_schedule(session: AsyncSession) -> None:
    """Tell the schedulers a mailing changed (PostgreSQL, at commit)."""
    if _is_postgresql(session):
        await session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": SCHEDULE_CHANNEL})


async def expire_queued(
    session: AsyncSession, *, mailing_id: int | None = None, reason: str, now: datetime
) -> int:
    """Expire the queued messages of one mailing, or (``mailing_id`` None) of every mailing
    whose ``ends_at`` has passed; how many."""
    where = [MESSAGE.c.status == MessageStatus.QUEUED]
    if mailing_id is not None:
        where.append(MESSAGE.c.mailing_id == mailing_id)
    else:
        ended = select(MAILING.c.id).where(MAILING.c.ends_at <= now)
        where.append(MESSAGE.c.mailing_id.in_(ended))
    result = await session.execute(
        update(MESSAGE)
        .where(*where)
        .values(
            status=MessageStatus.EXPIRED,
            reason=reason,
            next_attempt_at=None,
            updated_at=now,
        )
        .returning(MESSAGE.c.id, MESSAGE.c.channel)
    )
    rows = result.all()
    metrics.on_commit(session, ((channel, MessageStatus.EXPIRED) for _, channel in rows))
    ids = [row[0] for row in rows]
    await log_events(session, ids=ids, old_status=MessageStatus.QUEUED, now=now)
    return len(ids)


@dataclass(frozen=True)
class Deferral:
    id: int
    until: datetime


async def defer(session: AsyncSession, *, deferrals: Sequence[Deferral], now: datetime) -> None:
    """Claimed messages that may not go yet (their recipient's window is shut) wait until
    ``until``, their attempt uncounted (no event, as for ``release``)."""
    await _defer(session, deferrals, now)


async def _defer(session: AsyncSession, deferrals: Sequence[Deferral], now: datetime) -> None:
    if not deferrals:
        return
    await session.execute(
        update(MESSAGE)
        .where(_by_id())
        .values(
            status=MessageStatus.QUEUED,
            attempts=MESSAGE.c.attempts - 1,
            next_attempt_at=bindparam("until", type_=UTCDateTime),
            leased_until=None,
            updated_at=now,
        ),
        [{"message_id": deferral.id, "until": deferral.until} for deferral in deferrals],
    )


async def not_sending(
    session: AsyncSession, *, mailing_ids: Iterable[int], now: datetime
) -> set[int]:
    """Which of these mailings may not send now: paused, cancelled, completed, or ended."""
    ids = set(mailing_ids)
    if not ids:
        return set()
    rows = await session.scalars(
        select(MAILING.c.id).where(
            MAILING.c.id.in_(ids),
            or_(
                MAILING.c.status != MailingStatus.ACTIVE,
                MAILING.c.ends_at <= now,
            ),
        )
    )
    return set(rows)


async def mark_skipped(
    session: AsyncSession,
    *,
    project_id: int,
    reason: str,
    now: datetime,
    address: str | None = None,
    opted_out: bool = False,
    client_id: int | None = None,
    channel: int | None = None,
    or_clients: Sequence[int] = (),
) -> list[int]:
    """Mark skipped the queued messages of a project that may no longer go: to a newly suppressed
    ``address``, or (``opted_out``) to clients who opted out — one client or all of them; with
    ``channel``, only that channel's messages, and opted out means out of that channel. With
    ``or_clients``, the messages to ``address`` or to those clients. Their ids; no events
    (``skip_queued`` writes them): a transaction that skips for several reasons writes all its
    events once, after every message update."""
    of_project = select(MAILING.c.id).where(MAILING.c.project_id == project_id)
    where = [MESSAGE.c.status == MessageStatus.QUEUED, MESSAGE.c.mailing_id.in_(of_project)]
    if address is not None:
        to_address = func.lower(MESSAGE.c.address) == address
        if or_clients:
            to_address = or_(to_address, among(session, MESSAGE.c.client_id, or_clients))
        where.append(to_address)
    if channel is not None:
        where.append(MESSAGE.c.channel == channel)
    if opted_out:
        out = CLIENT.c.opted_out
        if channel is not None:
            out = CLIENT.c.email_opted_out if channel == Channel.EMAIL else CLIENT.c.sms_opted_out
        clients = select(CLIENT.c.id).where(CLIENT.c.project_id == project_id, out.is_(True))
        if client_id is not None:
            clients = clients.where(CLIENT.c.id == client_id)
        where.append(MESSAGE.c.client_id.in_(clients))
    result = await session.execute(
        update(MESSAGE)
        .where(*where)
        .values(status=MessageStatus.SKIPPED, reason=reason, next_attempt_at=None, updated_at=now)
        .returning(MESSAGE.c.id, MESSAGE.c.channel)
    )
    rows = result.all()
    metrics.on_commit(session, ((channel, MessageStatus.SKIPPED) for _, channel in rows))
    return [row[0] for row in rows]


async def skip_queued(
    session: AsyncSession,
    *,
    project_id: int,
    reason: str,
    now: datetime,
    address: str | None = None,
    opted_out: bool = False,
    client_id: int | None = None,
    channel: int | None = None,
    or_clients: Sequence[int] = (),
) -> int:
    """``mark_skipped``, then the skipped messages' events (the transaction's last rows)."""
    ids = await mark_skipped(
        session,
        project_id=project_id,
        reason=reason,
        now=now,
        address=address,
        opted_out=opted_out,
        client_id=client_id,
        channel=channel,
        or_clients=or_clients,
    )
    await log_events(session, ids=ids, old_status=MessageStatus.QUEUED, now=now)
    return len(ids)


async def log_events(
    session: AsyncSession,
    *,
    now: datetime,
    old_status: str | None,
    ids: Sequence[int] | None = None,
    where: Sequence[ColumnElement[bool]] = (),
) -> None:
    """One event per message picked (by ``ids`` and/or ``where``), carrying its status now,
    in the caller's transaction: INSERT … SELECT, in message order."""
    if ids is not None:
        for start in range(0, len(ids), EVENT_CHUNK):
            chunk = list(ids[start : start + EVENT_CHUNK])
            await _insert_events(
                session,
                [*where, among(session, MESSAGE.c.id, chunk)],
                old_status=old_status,
                now=now,
            )
        return
    await _insert_events(session, where, old_status=old_status, now=now)


async def _log_changed(
    session: AsyncSession, ids: Sequence[int], status: str, now: datetime
) -> None:
    """Events for the messages of ``ids`` this very statement moved from ``sending`` (now
    ``status``, stamped ``now``); rows another worker had taken over are left out."""
    if ids:
        await log_events(
            session,
            ids=ids,
            old_status=MessageStatus.SENDING,
            where=[MESSAGE.c.status == status, MESSAGE.c.updated_at == now],
            now=now,
        )


async def _log_sent_and_settled(session: AsyncSession, ids: Sequence[int], now: datetime) -> None:
    """The events of messages this very statement recorded sent, some of them settled at once
    by their receipts: ``sending → sent`` for each, then ``sent → <final>`` for the settled —
    one INSERT … SELECT that reads each row once (a row per step: ``step.n`` 1 and 2)."""
    step = (
        select(literal(1, Integer).label("n"))
        .union_all(select(literal(2, Integer)))
        .subquery("step")
    )
    first = step.c.n == 1
    for start in range(0, len(ids), EVENT_CHUNK):
        chunk = list(ids[start : start + EVENT_CHUNK])
        rows = (
            select(
                *_event_of_message(),
                case((first, literal(MessageStatus.SENDING, String)), else_=MessageStatus.SENT),
                case((first, literal(MessageStatus.SENT, String)), else_=MESSAGE.c.status),
                case(
                    (first & (MESSAGE.c.status != MessageStatus.SENT), null()),
                    else_=MESSAGE.c.reason,
                ),
                MESSAGE.c.peer_message_id,
                literal(now, UTCDateTime),
            )
            .select_from(MESSAGE.join(step, true()))
            .where(
                among(session, MESSAGE.c.id, chunk),
                MESSAGE.c.status.in_([MessageStatus.SENT, *SETTLED_BY_RECEIPT]),
                MESSAGE.c.updated_at == now,
                first | (MESSAGE.c.status != MessageStatus.SENT),
            )
            .order_by(step.c.n, MESSAGE.c.id)
        )
        await _lock_events(session)
        await session.execute(insert(EVENT).from_select(EVENT_COLUMNS, rows))


async def _lock_events(session: AsyncSession) -> None:
    if _is_postgresql(session):
        # Held to commit: event ids become visible in order (see the module's docstring).
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": EVENTS_LOCK})
        await session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": EVENTS_CHANNEL})


def _event_of_message() -> list[ColumnElement[Any]]:
    """An event's first columns (``EVENT_COLUMNS``' order), read from its message row."""
    return [
        MESSAGE.c.id,
        MESSAGE.c.mailing_id,
        MESSAGE.c.run_id,
        MESSAGE.c.client_id,
        # A lookup by key per event, not a join: a join lets the planner hash the whole
        # client table when its statistics are stale (right after an import).
        select(CLIENT.c.guid).where(CLIENT.c.id == MESSAGE.c.client_id).scalar_subquery(),
        MESSAGE.c.channel,
    ]


async def _insert_events(
    session: AsyncSession,
    where: Sequence[ColumnElement[bool]],
    *,
    old_status: str | None,
    now: datetime,
) -> None:
    rows = (
        select(
            *_event_of_message(),
            literal(old_status, String),
            MESSAGE.c.status,
            MESSAGE.c.reason,
            MESSAGE.c.peer_message_id,
            literal(now, UTCDateTime),
        )
        .where(*where)
        .order_by(MESSAGE.c.id)
    )
    await _lock_events(session)
    await session.execute(insert(EVENT).from_select(EVENT_COLUMNS, rows))


async def log_note(
    session: AsyncSession, *, message_id: int, status: str, reason: str | None, now: datetime
) -> None:
    """An event on a message that does not change it: ``status`` is the note's word (e.g.
    ``unsubscribed``), ``old_status`` the message's status. Like every event, the last rows
    its transaction writes."""
    rows = select(
        *_event_of_message(),
        MESSAGE.c.status,
        literal(status, String),
        literal(reason, Text),
        MESSAGE.c.peer_message_id,
        literal(now, UTCDateTime),
    ).where(MESSAGE.c.id == message_id)
    await _lock_events(session)
    await session.execute(insert(EVENT).from_select(EVENT_COLUMNS, rows))


@dataclass(frozen=True)
class Verdict:
    """What a peer said later of a message it had accepted: a delivery receipt, a bounce, a
    provider's callback. ``status`` is the new status (delivered, undelivered, expired,
    bounced) or ``sent`` for a note that changes nothing but the reason (a soft bounce)."""

    id: int
    status: str
    reason: str | None = None


# What a later verdict may move a message to; only a ``sent`` message takes one (a duplicate
# receipt, or one for a message already bounced or delivered, changes nothing).
VERDICTS = frozenset(
    {
        MessageStatus.SENT,
        MessageStatus.DELIVERED,
        MessageStatus.UNDELIVERED,
        MessageStatus.EXPIRED,
        MessageStatus.BOUNCED,
    }
)


async def settle(session: AsyncSession, *, verdicts: Sequence[Verdict], now: datetime) -> list[int]:
    """Apply later verdicts to ``sent`` messages, each with its event; the ids that changed."""
    verdicts = [verdict for verdict in verdicts if verdict.status in VERDICTS]
    if not verdicts:
        return []
    ids = sorted({verdict.id for verdict in verdicts})
    changes: list[tuple[int, int]]  # (id, channel) of the rows that changed
    if _is_postgresql(session) and len(ids) == len(verdicts):
        changes = await _settle_unnest(session, verdicts, now)
    else:
        await session.execute(
            update(MESSAGE)
            .where(MESSAGE.c.id == bindparam("message_id"), MESSAGE.c.status == MessageStatus.SENT)
            .values(status=bindparam("status"), reason=bindparam("reason"), updated_at=now),
            [
                {"message_id": v.id, "status": v.status, "reason": storable(v.reason)}
                for v in verdicts
            ],
        )
        changes = []
        for start in range(0, len(ids), EVENT_CHUNK):
            chunk = ids[start : start + EVENT_CHUNK]
            rows = await session.execute(
                select(MESSAGE.c.id, MESSAGE.c.channel).where(
                    among(session, MESSAGE.c.id, chunk), MESSAGE.c.updated_at == now
                )
            )
            changes += [(row[0], row[1]) for row in rows]
    _count_settled(session, verdicts, changes)
    changed = [message_id for message_id, _ in changes]
    await log_events(
        session,
        ids=changed,
        old_status=MessageStatus.SENT,
        where=[MESSAGE.c.updated_at == now],
        now=now,
    )
    return changed


def _count_settled(
    session: AsyncSession, verdicts: Sequence[Verdict], changes: Sequence[tuple[int, int]]
) -> None:
    """Count the status changes of ``settle`` (at commit; a soft bounce's note is none)."""
    if not changes:
        return
    status_of = {verdict.id: verdict.status for verdict in verdicts}
    metrics.on_commit(
        session,
        (
            (channel, status_of[message_id])
            for message_id, channel in changes
            if status_of.get(message_id, MessageStatus.SENT) != MessageStatus.SENT
        ),
    )


async def _settle_unnest(
    session: AsyncSession, verdicts: Sequence[Verdict], now: datetime
) -> list[tuple[int, int]]:
    """PostgreSQL, one verdict per message: one ``UPDATE … FROM unnest(arrays) RETURNING``
    rather than one execution per message and a query for those that changed; (id, channel)
    of each that changed, by id."""
    values = (
        func.unnest(
            _array([verdict.id for verdict in verdicts], BigInteger),
            _array([verdict.status for verdict in verdicts], String),
            _array([storable(verdict.reason) for verdict in verdicts], Text),
        )
        .table_valued("id", "status", "reason")
        .render_derived(name="verdict")
    )
    changed = await session.execute(
        update(MESSAGE)
        .where(MESSAGE.c.id == values.c.id, MESSAGE.c.status == MessageStatus.SENT)
        .values(status=values.c.status, reason=values.c.reason, updated_at=now)
        .returning(MESSAGE.c.id, MESSAGE.c.channel)
    )
    return sorted((row[0], row[1]) for row in changed)
