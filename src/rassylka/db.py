"""Metadata and its naming convention, the declarative base, the engine, the request session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import BigInteger, DateTime, Integer, MetaData, event
from sqlalchemy.engine import URL, Dialect, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
Id = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = metadata


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A moment stored in UTC and always read back timezone-aware.

    SQLite keeps no offset, so naive values are written as UTC and marked UTC on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where a UTC moment is required")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


CONNECT_TIMEOUT = 5.0
"""Seconds for a new PostgreSQL connection to be made (TCP, TLS, startup), unless the URL says
``?timeout=N``: a server that accepts and never answers (overloaded, half restarted) costs a
request this long and then a 503, instead of asyncpg's default of a minute."""


def connect_timeout(url: str | URL) -> float:
    """The connect timeout for ``url``: its ``timeout`` query parameter, else the default."""
    given = make_url(url).query.get("timeout")
    return float(given if isinstance(given, str) else CONNECT_TIMEOUT)


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    if make_url(url).get_driver_name() == "asyncpg":
        # Passed as a number: from the URL's query asyncpg would get the string.
        kwargs["connect_args"] = {"timeout": connect_timeout(url), **kwargs.get("connect_args", {})}
    engine = create_async_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
    return engine


def create_checked_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An engine for a long-running process, whose pooled connections are checked when taken
    from the pool. With asyncpg without a round trip (SQLAlchemy's pre-ping costs BEGIN, ';'
    and ROLLBACK on every checkout): asyncpg sees a server that closed the connection (a
    restart, a terminated backend) as soon as the socket says so, and the pool then opens a
    new one. Other drivers keep the pre-ping."""
    asyncpg = make_url(url).get_driver_name() == "asyncpg"
    engine = create_engine(url, pool_pre_ping=not asyncpg, **kwargs)
    if asyncpg:
        event.listen(engine.sync_engine.pool, "checkout", _closed_is_gone)
    return engine


def _closed_is_gone(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    if dbapi_connection.driver_connection.is_closed():
        raise DisconnectionError("the server closed this pooled connection")


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the API read while the dispatcher writes; foreign keys are off by default.
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()
    # Unicode case folding for searches (clients.repository): SQLite's lower() and LIKE fold
    # ASCII only, and most names here are Cyrillic.
    dbapi_connection.create_function("casefold", 1, _casefold, deterministic=True)
    # The driver's own implicit BEGIN is turned off; _sqlite_begin says BEGIN IMMEDIATE instead.
    dbapi_connection.isolation_level = None


def _casefold(value: Any) -> Any:
    return value.casefold() if isinstance(value, str) else value


def _sqlite_begin(connection: Any) -> None:
    """Every transaction takes SQLite's one write lock at its start, waiting (busy_timeout) for
    it: a deferred transaction that read first and then writes while the API, the scheduler
    or the dispatcher has just written fails at once with SQLITE_BUSY instead of waiting."""
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One transaction per request: committed when the endpoint returns, before the response."""
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    async with sessionmaker() as session, session.begin():
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
