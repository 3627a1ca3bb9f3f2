"""The SQL of ``idempotency_key``: claiming a key, storing its answer, letting it go, purging.

Each call is its own short transaction on the engine (SQLAlchemy Core): the row must be visible
to a concurrent request with the same key before the first one is answered, and it must not
be held inside the endpoint's own transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Table, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from rassylka.idempotency.models import IdempotencyRecord

TABLE = cast(Table, IdempotencyRecord.__table__)
PATH_LENGTH = 2048  # the column's; a longer path is stored cut (it is only informational)


@dataclass(frozen=True)
class Claimed:
    """The key is this request's: answer it, then ``store`` or ``release``."""

    record_id: int


@dataclass(frozen=True)
class Answered:
    """The key was answered before, for the same request: give that answer again."""

    status_code: int
    body: bytes


@dataclass(frozen=True)
class InProgress:
    """The first request with the key is still being answered."""


@dataclass(frozen=True)
class OtherRequest:
    """The key was used with another request (method, path, query or body)."""


Outcome = Claimed | Answered | InProgress | OtherRequest


async def claim(
    engine: AsyncEngine,
    *,
    scope: str,
    key: str,
    method: str,
    path: str,
    request_hash: str,
    now: datetime,
    ttl: float,
    takeover_after: float,
) -> Outcome:
    """Take the key for this request, or say what became of it.

    The unique (scope, key) decides between two requests at once: the one whose insert
    succeeds answers; the other reads the row. A row older than ``ttl`` is as if absent (the
    upkeep deletes it later; here it is deleted before trying again). A row still in progress
    after ``takeover_after`` seconds was left by a process that died while answering: this
    request takes it over (its ``created_at`` moved to now, so only one retry wins it)."""
    for _ in range(4):
        try:
            async with engine.begin() as connection:
                record_id = (
                    await connection.execute(
                        insert(TABLE)
                        .values(
                            scope=scope,
                            key=key,
                            method=method,
                            path=path[:PATH_LENGTH],
                            request_hash=request_hash,
                            status_code=None,
                            response_body=None,
                            created_at=now,
                        )
                        .returning(TABLE.c.id)
                    )
                ).scalar_one()
            return Claimed(record_id)
        except IntegrityError:
            pass  # the key is taken: see by whom
        async with engine.connect() as connection:
            row = (
                await connection.execute(
                    select(
                        TABLE.c.id,
                        TABLE.c.request_hash,
                        TABLE.c.status_code,
                        TABLE.c.response_body,
                        TABLE.c.created_at,
                    ).where(TABLE.c.scope == scope, TABLE.c.key == key)
                )
            ).first()
        if row is None:
            continue  # released or purged meanwhile: insert again
        if row.created_at < now - timedelta(seconds=ttl):
            async with engine.begin() as connection:
                await connection.execute(
                    delete(TABLE).where(TABLE.c.id == row.id, TABLE.c.created_at == row.created_at)
                )
            continue
        if row.request_hash != request_hash:
            return OtherRequest()
        if row.status_code is not None:
            return Answered(row.status_code, row.response_body or b"")
        if row.created_at >= now - timedelta(seconds=takeover_after):
            return InProgress()
        async with engine.begin() as connection:
            taken = await connection.execute(
                update(TABLE)
                .where(
                    TABLE.c.id == row.id,
                    TABLE.c.status_code.is_(None),
                    TABLE.c.created_at == row.created_at,
                )
                .values(created_at=now)
            )
        if taken.rowcount == 1:
            return Claimed(row.id)
    # Four rounds lost to other requests with the same key: one of them is answering it.
    return InProgress()


async def store(engine: AsyncEngine, record_id: int, *, status_code: int, body: bytes) -> None:
    """The answer of the claimed key, for its retries."""
    async with engine.begin() as connection:
        await connection.execute(
            update(TABLE)
            .where(TABLE.c.id == record_id)
            .values(status_code=status_code, response_body=body)
        )


async def release(engine: AsyncEngine, record_id: int) -> None:
    """Forget the claimed key (no answer worth keeping): a retry runs the request again."""
    async with engine.begin() as connection:
        await connection.execute(
            delete(TABLE).where(TABLE.c.id == record_id, TABLE.c.status_code.is_(None))
        )


async def purge(engine: AsyncEngine, *, before: datetime) -> int:
    """Delete the keys made before ``before``; how many."""
    async with engine.begin() as connection:
        result = await connection.execute(delete(TABLE).where(TABLE.c.created_at < before))
    return int(result.rowcount)
