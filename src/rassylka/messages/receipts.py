"""Delivery receipts to messages: store what the peer reported, match it to the SMS part it
names, and settle the message once its parts tell how it ended.

A receipt is stored first (table ``receipt``) and matched by the peer's id against the parts
recorded when the message was sent (``message_part``). A receipt can come before its part is
recorded — the SMSC answers submit_sm and reports delivery at once, while the writer batches
— and from another connection or process than the one that sent; it waits in ``receipt``
until a later ``match`` finds its part. Matched receipts are deleted; receipts that match
nothing for a long time are dropped by ``drop_unmatched`` (and logged by the caller).

How parts settle a message: any part undelivered, rejected or deleted → ``undelivered``;
else any expired → ``expired``; else every part delivered → ``delivered``. The state and the
peer's error code are the message's reason (``UNDELIV err:005``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    String,
    Table,
    any_,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnClause

from rassylka.channels.base import DeliveryReport
from rassylka.messages import queue
from rassylka.messages.models import MessagePart, MessageStatus, Receipt

PART = cast(Table, MessagePart.__table__)
RECEIPT = cast(Table, Receipt.__table__)
STATE_LENGTH = 16
ERROR_LENGTH = 64
# Receipts matched per statement batch.
MATCH_BATCH = 1000

DELIVERED = "DELIVRD"
EXPIRED = "EXPIRED"
NOT_DELIVERED = frozenset({"UNDELIV", "REJECTD", "DELETED"})
# A final state is never overwritten by a later intermediate one (ENROUTE, ACCEPTD, …).
FINAL_STATES = NOT_DELIVERED | {DELIVERED, EXPIRED}


@dataclass(frozen=True)
class Matched:
    receipts: int
    """Receipts that found their part (and were deleted)."""
    settled: list[int]
    """Messages whose status changed."""


def _among(
    session: AsyncSession, column: ColumnClause[Any], values: Sequence[object]
) -> ColumnElement[bool]:
    """``column IN values``: on PostgreSQL as ``= ANY(array)``, one parameter, so the statement
    is the same for every batch (compiled and prepared once) rather than one with a parameter
    per value."""
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(bindparam(None, list(values), type_=ARRAY(column.type)))
    return column.in_(values)


def _received(reports: Sequence[DeliveryReport]) -> list[tuple[str, str, str | None]]:
    """Each report as it is kept: (peer id, state, error), made storable; reports without a
    peer id are left out (nothing could ever match them)."""
    return [
        (peer_id, report.state.upper()[:STATE_LENGTH], queue.storable(report.error, ERROR_LENGTH))
        for report in reports
        if (peer_id := queue.storable(report.peer_message_id.strip(), queue.PEER_ID_LENGTH))
    ]


PartState = tuple[str | None, str | None]
"""A part's receipt state as SMPP spells it and the peer's error code; (None, None) unreported."""


def in_hand(
    part_ids: Sequence[str], reports: Mapping[str, Sequence[DeliveryReport]]
) -> tuple[tuple[PartState, ...], tuple[str, str] | None]:
    """What receipts already in hand say of a message about to be recorded ``sent``: the
    state of each of its parts (in ``part_ids``' order, a part without a receipt unreported)
    and the status and reason its parts give it, if final — the same rules as ``apply``
    (a final state is not undone by a later intermediate one; the message settles by all its
    parts), so the writer can record ``sent`` and the outcome in one transaction."""
    states: list[PartState] = []
    for peer_id in part_ids:
        state: str | None = None
        error: str | None = None
        for _, new_state, new_error in _received(reports.get(peer_id, ())):
            if state in FINAL_STATES:
                break  # a duplicate, or a late intermediate report
            state, error = new_state, new_error
        states.append((state, error))
    return tuple(states), verdict_of(states)


async def store(session: AsyncSession, *, reports: Sequence[DeliveryReport], now: datetime) -> None:
    """Keep receipts until ``match`` finds their parts; one statement."""
    await _store(session, _received(reports), now)


async def _store(
    session: AsyncSession, received: Sequence[tuple[str, str, str | None]], now: datetime
) -> None:
    if received:
        await session.execute(
            insert(RECEIPT),
            [
                {"peer_message_id": peer_id, "state": state, "error": error, "received_at": now}
                for peer_id, state, error in received
            ],
        )


async def apply(
    session: AsyncSession, *, reports: Sequence[DeliveryReport], now: datetime
) -> Matched:
    """Apply receipts in hand to their parts straight away, and settle the messages whose
    parts now tell how they ended; a receipt whose part is not recorded (yet) is stored for
    a later ``match``. The same outcome as ``store`` then ``match``, without writing and
    deleting a ``receipt`` row for every receipt that finds its part.

    The parts of the messages named are read once, locked on PostgreSQL (``FOR UPDATE``, in id
    order), so a verdict taken from them sees the parts another process is settling at the
    same time (the parts of a long SMS may be reported on different connections).
    """
    received = _received(reports)
    matched = 0
    touched: set[int] = set()
    unmatched: list[tuple[str, str, str | None]] = []
    parts: dict[int, list[Any]] = {}  # part id → [message id, part number, state, error]
    changes: dict[int, tuple[str, str | None]] = {}
    for start in range(0, len(received), MATCH_BATCH):
        chunk = received[start : start + MATCH_BATCH]
        newest = await _parts_of_messages(
            session, sorted({peer_id for peer_id, *_ in chunk}), parts
        )
        for peer_id, state, error in chunk:
            part_id = newest.get(peer_id)
            if part_id is None:
                unmatched.append((peer_id, state, error))
                continue
            matched += 1
            part = parts[part_id]
            if part[2] in FINAL_STATES:
                continue  # a duplicate, or a late intermediate report
            part[2], part[3] = state, error
            changes[part_id] = (state, error)
            touched.add(part[0])
    await _update_parts(session, changes, now)
    await _store(session, unmatched, now)
    siblings: dict[int, list[tuple[int, str | None, str | None]]] = defaultdict(list)
    for message_id, number, state, error in parts.values():
        if message_id in touched:
            siblings[message_id].append((number, state, error))
    verdicts = []
    for message_id in sorted(siblings):
        verdict = verdict_of([(state, error) for _, state, error in sorted(siblings[message_id])])
        if verdict is not None:
            verdicts.append(queue.Verdict(message_id, *verdict))
    settled = await queue.settle(session, verdicts=verdicts, now=now)
    return Matched(matched, settled)


async def _parts_of_messages(
    session: AsyncSession, peer_ids: list[str], parts: dict[int, list[Any]]
) -> dict[str, int]:
    """Read into ``parts`` every part of the messages whose parts bear ``peer_ids``; the
    newest part of each peer id (an SMSC may reuse ids after a long while)."""
    named = PART.alias("named")
    messages = select(named.c.message_id).where(_among(session, named.c.peer_message_id, peer_ids))
    statement = select(
        PART.c.id, PART.c.message_id, PART.c.part, PART.c.peer_message_id, PART.c.state
    ).add_columns(PART.c.error)
    if session.get_bind().dialect.name == "postgresql":
        # ``= ANY(ARRAY(subquery))``: the message ids first, then their parts by the
        # (message_id, part) key. ``IN (subquery)`` was planned as a hash join over a scan of
        # the whole table, for every batch.
        statement = statement.where(
            PART.c.message_id == any_(func.array(messages.scalar_subquery()))
        ).with_for_update(of=PART)
    else:
        statement = statement.where(PART.c.message_id.in_(messages))
    statement = statement.order_by(PART.c.id)
    wanted = set(peer_ids)
    newest: dict[str, int] = {}
    for part_id, message_id, number, peer_id, state, error in await session.execute(statement):
        parts.setdefault(part_id, [message_id, number, state, error])
        if peer_id in wanted:
            newest[peer_id] = part_id
    return newest


async def _update_parts(
    session: AsyncSession, changes: dict[int, tuple[str, str | None]], now: datetime
) -> None:
    """Write the receipts' states to their parts: on PostgreSQL one ``UPDATE … FROM
    unnest(arrays)``, elsewhere one execution per part."""
    if not changes:
        return
    if session.get_bind().dialect.name == "postgresql":
        values = (
            func.unnest(
                bindparam(None, list(changes), type_=ARRAY(BigInteger)),
                bindparam(None, [state for state, _ in changes.values()], type_=ARRAY(String)),
                bindparam(None, [error for _, error in changes.values()], type_=ARRAY(String)),
            )
            .table_valued("id", "state", "error")
            .render_derived(name="receipt_state")
        )
        await session.execute(
            update(PART)
            .where(PART.c.id == values.c.id)
            .values(state=values.c.state, error=values.c.error, receipt_at=now)
        )
        return
    await session.execute(
        update(PART)
        .where(PART.c.id == bindparam("part_id"))
        .values(state=bindparam("state"), error=bindparam("error"), receipt_at=bindparam("at")),
        [
            {"part_id": part_id, "state": state, "error": error, "at": now}
            for part_id, (state, error) in changes.items()
        ],
    )


async def match(
    session: AsyncSession, *, now: datetime, peer_ids: Sequence[str] | None = None
) -> Matched:
    """Match waiting receipts (those naming ``peer_ids``, or all) to their parts, and settle
    the messages whose parts now tell how they ended (events last, by ``queue.settle``)."""
    matched = 0
    touched: set[int] = set()
    if peer_ids is not None:
        wanted = sorted(set(peer_ids))
        for start in range(0, len(wanted), MATCH_BATCH):
            count, messages = await _match_batch(session, now, wanted[start : start + MATCH_BATCH])
            matched += count
            touched |= messages
    else:
        after = 0
        while True:
            page = (
                await session.execute(
                    select(RECEIPT.c.id, RECEIPT.c.peer_message_id)
                    .where(RECEIPT.c.id > after)
                    .order_by(RECEIPT.c.id)
                    .limit(MATCH_BATCH)
                )
            ).all()
            if not page:
                break
            after = page[-1].id
            count, messages = await _match_batch(
                session, now, sorted({row.peer_message_id for row in page})
            )
            matched += count
            touched |= messages
    settled = await queue.settle(session, verdicts=await _verdicts(session, touched), now=now)
    return Matched(matched, settled)


async def _match_batch(
    session: AsyncSession, now: datetime, peer_ids: list[str]
) -> tuple[int, set[int]]:
    """Apply the waiting receipts of these peer ids to their parts; how many receipts found
    a part, and the messages of the parts that changed."""
    receipts = (
        await session.execute(
            select(RECEIPT.c.id, RECEIPT.c.peer_message_id, RECEIPT.c.state, RECEIPT.c.error)
            .where(_among(session, RECEIPT.c.peer_message_id, peer_ids))
            .order_by(RECEIPT.c.id)
        )
    ).all()
    if not receipts:
        return 0, set()
    # An SMSC may reuse ids after a long while: a receipt is about the newest part named so.
    parts = {
        peer_id: (part_id, message_id, state)
        for part_id, message_id, peer_id, state in (
            await session.execute(
                select(PART.c.id, PART.c.message_id, PART.c.peer_message_id, PART.c.state)
                .where(
                    _among(
                        session,
                        PART.c.peer_message_id,
                        sorted({row.peer_message_id for row in receipts}),
                    )
                )
                .order_by(PART.c.id)
            )
        ).all()
    }
    changes: dict[int, tuple[str, str | None]] = {}
    done: list[int] = []
    touched: set[int] = set()
    for receipt_id, peer_id, state, error in receipts:
        if peer_id not in parts:
            continue
        done.append(receipt_id)
        part_id, message_id, current = parts[peer_id]
        if part_id in changes:
            current = changes[part_id][0]
        if current in FINAL_STATES:
            continue  # a duplicate, or a late intermediate report
        changes[part_id] = (state, error)
        touched.add(message_id)
    await _update_parts(session, changes, now)
    if done:
        await session.execute(delete(RECEIPT).where(_among(session, RECEIPT.c.id, done)))
    return len(done), touched


async def _verdicts(session: AsyncSession, message_ids: set[int]) -> list[queue.Verdict]:
    if not message_ids:
        return []
    states: dict[int, list[tuple[str | None, str | None]]] = defaultdict(list)
    ids = sorted(message_ids)
    for start in range(0, len(ids), MATCH_BATCH):
        rows = await session.execute(
            select(PART.c.message_id, PART.c.state, PART.c.error)
            .where(_among(session, PART.c.message_id, ids[start : start + MATCH_BATCH]))
            .order_by(PART.c.message_id, PART.c.part)
        )
        for message_id, state, error in rows:
            states[message_id].append((state, error))
    verdicts = []
    for message_id, parts in states.items():
        verdict = verdict_of(parts)
        if verdict is not None:
            verdicts.append(queue.Verdict(message_id, *verdict))
    return verdicts


def verdict_of(parts: Sequence[tuple[str | None, str | None]]) -> tuple[str, str] | None:
    """The status and reason that a message's parts (state, error) give it, if final."""

    def reason(state: str, error: str | None) -> str:
        return f"{state} err:{error}" if error else state

    for state, error in parts:
        if state in NOT_DELIVERED:
            return MessageStatus.UNDELIVERED, reason(state, error)
    for state, error in parts:
        if state == EXPIRED:
            return MessageStatus.EXPIRED, reason(state, error)
    if parts and all(state == DELIVERED for state, _ in parts):
        return MessageStatus.DELIVERED, reason(DELIVERED, parts[-1][1])
    return None


async def drop_unmatched(session: AsyncSession, *, before: datetime) -> list[str]:
    """Drop receipts that have waited since before ``before`` for a part that never came;
    the peer ids they named."""
    rows = await session.execute(
        delete(RECEIPT).where(RECEIPT.c.received_at < before).returning(RECEIPT.c.peer_message_id)
    )
    return [row[0] for row in rows]


async def waiting(session: AsyncSession) -> int:
    """How many receipts wait for their part."""
    return int(await session.scalar(select(func.count()).select_from(RECEIPT)) or 0)
