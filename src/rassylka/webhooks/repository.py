"""Every query on webhooks and their deliveries: the API's reads and writes, the outbox fill
(events after a webhook's cursor become delivery rows, the cursor moving in the same
transaction), and the sender's claim with a lease and its outcome writes.

The claim has procrastinate's shape: one statement picks due pending deliveries (on
PostgreSQL ``FOR UPDATE SKIP LOCKED``, so workers take disjoint sets) and stamps them with a
lease and one more attempt. A delivery is due only when no earlier event of the same message
is still pending for the same webhook: that keeps the order per message. The attempt count
stamped by a claim is its token: an outcome is written only if no later claim took the row
(its lease ran out and another worker tried again).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import ColumnElement, Table, bindparam, exists, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from rassylka.db import UTCDateTime
from rassylka.events import repository as events_repository
from rassylka.webhooks.models import DeliveryStatus, Webhook, WebhookDelivery
from rassylka.webhooks.schemas import delivery_body

WEBHOOK = cast(Table, Webhook.__table__)
DELIVERY = cast(Table, WebhookDelivery.__table__)


def _is_postgresql(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


# -- the API ---------------------------------------------------------------------------------


async def add(session: AsyncSession, webhook: Webhook) -> Webhook:
    session.add(webhook)
    await session.flush()
    return webhook


async def get(session: AsyncSession, webhook_id: int) -> Webhook | None:
    return await session.get(Webhook, webhook_id)


async def page(
    session: AsyncSession, *, project_id: int | None, limit: int, offset: int
) -> tuple[Sequence[Webhook], int]:
    query = select(Webhook)
    if project_id is not None:
        query = query.where(Webhook.project_id == project_id)
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    rows = await session.scalars(query.order_by(Webhook.id).limit(limit).offset(offset))
    return rows.all(), total or 0


async def delete(session: AsyncSession, webhook: Webhook) -> None:
    await session.delete(webhook)
    await session.flush()


async def deliveries(
    session: AsyncSession, *, webhook_id: int, status: str | None, limit: int, offset: int
) -> tuple[Sequence[WebhookDelivery], int]:
    query = select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id)
    if status is not None:
        query = query.where(WebhookDelivery.status == status)
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    rows = await session.scalars(query.order_by(WebhookDelivery.id).limit(limit).offset(offset))
    return rows.all(), total or 0


# -- the outbox fill -------------------------------------------------------------------------


@dataclass(frozen=True)
class Filled:
    webhooks: int
    """Active webhooks seen (0: nothing to do until one is created)."""
    deliveries: int
    """Delivery rows written."""
    more: bool
    """Some webhook has more events waiting than one fill takes."""


async def fill(session: AsyncSession, *, limit: int, now: datetime) -> Filled:
    """Turn the events after each active webhook's cursor into delivery rows (up to ``limit``
    per webhook) and move the cursor, in the caller's transaction.

    On PostgreSQL the webhooks are locked ``SKIP LOCKED``: a webhook another worker is filling
    is left to it. The cursor may move past events that do not match (another project's, a
    status not asked for) only up to an id every smaller one of which is visible: the newest
    id read *before* the events (event ids become visible in id order; messages/queue.py).
    """
    query = select(Webhook).where(Webhook.active.is_(True)).order_by(Webhook.id)
    if _is_postgresql(session):
        query = query.with_for_update(skip_locked=True)
    webhooks = list(await session.scalars(query))
    if not webhooks:
        return Filled(0, 0, more=False)
    head = await events_repository.last_id(session)
    written = 0
    more = False
    for webhook in webhooks:
        if webhook.last_event_id >= head:
            continue
        events = await events_repository.after(
            session,
            cursor=webhook.last_event_id,
            limit=limit,
            project_id=webhook.project_id,
            statuses=webhook.events or None,
        )
        if events:
            await _insert_deliveries(
                session,
                [
                    {
                        "webhook_id": webhook.id,
                        "event_id": event.id,
                        "message_id": event.message_id,
                        "status": DeliveryStatus.PENDING,
                        "attempts": 0,
                        "next_attempt_at": now,
                        "body": delivery_body(event),
                        "created_at": now,
                        "updated_at": now,
                    }
                    for event in events
                ],
            )
            written += len(events)
        if len(events) == limit:
            cursor = events[-1].id
            more = True
        else:
            cursor = max(head, events[-1].id if events else 0)
        await session.execute(
            update(WEBHOOK).where(WEBHOOK.c.id == webhook.id).values(last_event_id=cursor)
        )
    return Filled(len(webhooks), written, more)


async def _insert_deliveries(session: AsyncSession, rows: list[dict[str, object]]) -> None:
    # DO NOTHING: a cursor that moved back (never, but cheaply safe) repeats no delivery.
    insert = postgresql.insert if _is_postgresql(session) else sqlite.insert
    await session.execute(
        insert(DELIVERY).on_conflict_do_nothing(
            index_elements=[DELIVERY.c.webhook_id, DELIVERY.c.event_id]
        ),
        rows,
    )


# -- the sender ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    id: int
    webhook_id: int
    event_id: int
    attempts: int
    created_at: datetime
    body: str
    url: str
    secret: str


async def claim(
    session: AsyncSession, *, limit: int, now: datetime, lease_until: datetime
) -> list[Claimed]:
    """Take up to ``limit`` due deliveries of active webhooks until ``lease_until``."""
    earlier = DELIVERY.alias("earlier")
    earlier_pending = exists().where(
        earlier.c.webhook_id == DELIVERY.c.webhook_id,
        earlier.c.message_id == DELIVERY.c.message_id,
        earlier.c.event_id < DELIVERY.c.event_id,
        earlier.c.status == DeliveryStatus.PENDING,
    )
    active = exists().where(WEBHOOK.c.id == DELIVERY.c.webhook_id, WEBHOOK.c.active.is_(True))
    due = (
        select(DELIVERY.c.id)
        .where(
            DELIVERY.c.status == DeliveryStatus.PENDING,
            DELIVERY.c.next_attempt_at <= now,
            or_(DELIVERY.c.leased_until.is_(None), DELIVERY.c.leased_until < now),
            active,
            ~earlier_pending,
        )
        .order_by(DELIVERY.c.next_attempt_at, DELIVERY.c.id)
        .limit(limit)
    )
    if _is_postgresql(session):
        due = due.with_for_update(skip_locked=True, of=DELIVERY)
    picked = due.cte("due")
    statement = (
        update(DELIVERY)
        .where(
            DELIVERY.c.id == picked.c.id,
            DELIVERY.c.status == DeliveryStatus.PENDING,
            or_(DELIVERY.c.leased_until.is_(None), DELIVERY.c.leased_until < now),
        )
        .values(attempts=DELIVERY.c.attempts + 1, leased_until=lease_until, updated_at=now)
        .returning(
            DELIVERY.c.id,
            DELIVERY.c.webhook_id,
            DELIVERY.c.event_id,
            DELIVERY.c.attempts,
            DELIVERY.c.created_at,
            DELIVERY.c.body,
        )
    )
    rows = (await session.execute(statement)).all()
    if not rows:
        return []
    targets = {
        row.id: (row.url, row.secret)
        for row in await session.execute(
            select(WEBHOOK.c.id, WEBHOOK.c.url, WEBHOOK.c.secret).where(
                WEBHOOK.c.id.in_({row.webhook_id for row in rows})
            )
        )
    }
    claimed = [
        Claimed(
            id=row.id,
            webhook_id=row.webhook_id,
            event_id=row.event_id,
            attempts=row.attempts,
            created_at=row.created_at,
            body=row.body,
            url=targets[row.webhook_id][0],
            secret=targets[row.webhook_id][1],
        )
        for row in rows
    ]
    claimed.sort(key=lambda delivery: delivery.event_id)
    return claimed


@dataclass(frozen=True)
class Attempt:
    """What one POST of a claimed delivery came to."""

    id: int
    attempts: int
    http_status: int | None
    error: str | None
    duration_ms: int
    next_attempt_at: datetime | None = None
    """For a failure: when to try again; None gives up (status failed)."""


def _claimed_row() -> ColumnElement[bool]:
    return (
        (DELIVERY.c.id == bindparam("delivery_id"))
        & (DELIVERY.c.status == DeliveryStatus.PENDING)
        & (DELIVERY.c.attempts == bindparam("claimed_attempts"))
    )


async def record(
    session: AsyncSession, *, delivered: Sequence[Attempt], failed: Sequence[Attempt], now: datetime
) -> None:
    """Write a batch of outcomes, one executemany per kind; rows re-claimed since (their
    lease ran out) belong to the newer claim and are left alone."""
    if delivered:
        await session.execute(
            update(DELIVERY)
            .where(_claimed_row())
            .values(
                status=DeliveryStatus.DELIVERED,
                last_http_status=bindparam("http_status"),
                last_error=None,
                duration_ms=bindparam("duration_ms"),
                delivered_at=now,
                next_attempt_at=None,
                leased_until=None,
                updated_at=now,
            ),
            [_params(attempt) for attempt in delivered],
        )
    if failed:
        await session.execute(
            update(DELIVERY)
            .where(_claimed_row())
            .values(
                status=bindparam("new_status"),
                last_http_status=bindparam("http_status"),
                last_error=bindparam("error"),
                duration_ms=bindparam("duration_ms"),
                next_attempt_at=bindparam("next_attempt_at", type_=UTCDateTime),
                leased_until=None,
                updated_at=now,
            ),
            [
                {
                    **_params(attempt),
                    "error": attempt.error,
                    "next_attempt_at": attempt.next_attempt_at,
                    "new_status": DeliveryStatus.PENDING
                    if attempt.next_attempt_at is not None
                    else DeliveryStatus.FAILED,
                }
                for attempt in failed
            ],
        )


def _params(attempt: Attempt) -> dict[str, object]:
    return {
        "delivery_id": attempt.id,
        "claimed_attempts": attempt.attempts,
        "http_status": attempt.http_status,
        "duration_ms": attempt.duration_ms,
    }
