"""Every query on the client table, the bulk upsert of imports among them."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol, cast

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import ColumnElement, Table, bindparam, case, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.sql.dml import Insert

from rassylka.clients.models import Client
from rassylka.db import connect_timeout, utcnow
from rassylka.projects.models import Project

CLIENT_TABLE = cast(Table, Client.__table__)
PROJECT_TABLE = cast(Table, Project.__table__)
CREATE_COLUMNS = (
    "guid",
    "first_name",
    "last_name",
    "middle_name",
    "email",
    "phone",
    "timezone",
    "tags",
    "attributes",
    "opted_out",
    "email_opted_out",
    "sms_opted_out",
    "email_consent",
    "email_consent_at",
    "email_consent_source",
    "sms_consent",
    "sms_consent_at",
    "sms_consent_source",
    "phone_timezone",
    "created_at",
    "updated_at",
)
# What an import may change in a client that exists: all but its key and its timestamps
# (updated_at is set on its own).
UPSERT_COLUMNS = tuple(c for c in CREATE_COLUMNS if c not in ("guid", "created_at", "updated_at"))


async def get(session: AsyncSession, client_id: int) -> Client | None:
    return await session.get(Client, client_id)


async def get_by_guid(session: AsyncSession, *, project_id: int, guid: str) -> Client | None:
    result = await session.execute(
        select(Client).where(Client.project_id == project_id, Client.guid == guid)
    )
    return result.scalar_one_or_none()


async def page(
    session: AsyncSession,
    *,
    project_id: int | None,
    guid: str | None,
    limit: int,
    offset: int,
    search: str | None = None,
    phone: str | None = None,
) -> tuple[Sequence[Client], int]:
    """A page of clients by id; ``search``: those whose name, guid, email or phone holds it,
    whatever the case (or whose phone is ``phone``, the search as an E.164 number)."""
    query = select(Client)
    if project_id is not None:
        query = query.where(Client.project_id == project_id)
    if guid is not None:
        query = query.where(Client.guid == guid)
    if search:
        query = query.where(_matches(session.get_bind().dialect.name, search, phone))
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    rows = await session.scalars(query.order_by(Client.id).limit(limit).offset(offset))
    return rows.all(), total or 0


SEARCHED = (
    Client.guid,
    Client.first_name,
    Client.last_name,
    Client.middle_name,
    Client.email,
    Client.phone,
)


def _matches(dialect: str, search: str, phone: str | None) -> ColumnElement[bool]:
    """A substring of any searched column, case folded (Cyrillic too: PostgreSQL's ``lower``
    folds it, SQLite's only folds ASCII, so there ``casefold``, registered by ``db``, does).

    A substring can use no B-tree index: this reads the project's rows (the unique index on
    ``(project_id, guid)`` finds them), which a page of a person's search can afford; the
    phone as a number is compared whole."""
    sqlite = dialect == "sqlite"
    needle = search.casefold() if sqlite else search.lower()
    fold = func.casefold if sqlite else func.lower
    found: list[ColumnElement[bool]] = [
        fold(column).contains(needle, autoescape=True) for column in SEARCHED
    ]
    if phone is not None:
        found.append(Client.phone == phone)
    return or_(*found)


async def insert_new(
    connection: AsyncConnection,
    *,
    project_code: str | None,
    project_id: int | None,
    fields: Mapping[str, Any],
) -> Mapping[str, Any] | None:
    """Insert a client into the project of that code (else of that id), in one statement.

    The stored row, or None when there is no such project or its guid is taken (the caller
    tells which: that costs queries only when the request fails). ``fields``: every column of
    ``CREATE_COLUMNS`` but the timestamps.
    """
    now = utcnow()
    params = {**fields, "created_at": now, "updated_at": now}
    params["project_code"], params["project_id"] = project_code, project_id
    result = await connection.execute(_insert_new(connection.dialect.name), params)
    row = result.mappings().first()
    return None if row is None else dict(row)


class NewClients(Protocol):
    """Where ``POST /client/create`` writes: ``insert`` has the contract of ``insert_new``."""

    async def insert(
        self, *, project_code: str | None, project_id: int | None, fields: Mapping[str, Any]
    ) -> Mapping[str, Any] | None: ...

    async def close(self) -> None: ...


class EngineNewClients:
    """Through SQLAlchemy, in a transaction of its own (SQLite; a PostgreSQL driver other than
    asyncpg)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def insert(
        self, *, project_code: str | None, project_id: int | None, fields: Mapping[str, Any]
    ) -> Mapping[str, Any] | None:
        async with self.engine.begin() as connection:
            return await insert_new(
                connection, project_code=project_code, project_id=project_id, fields=fields
            )

    async def close(self) -> None:
        """The engine is the app's: it closes it."""


# ``_insert_new`` for asyncpg, written out: every parameter cast (an INSERT … SELECT gives its
# parameters no column types), the JSON columns as their text, created_at also updated_at.
_INSERTED = tuple(c for c in CREATE_COLUMNS if c != "updated_at")
_PG_TYPES = {
    "tags": "json",
    "attributes": "json",
    "opted_out": "boolean",
    "email_opted_out": "boolean",
    "sms_opted_out": "boolean",
    "email_consent_at": "timestamptz",
    "sms_consent_at": "timestamptz",
    "created_at": "timestamptz",
}
_ARRAY_TYPES = {"tags": "text", "attributes": "text"}
_COLUMN_LIST = f"client (project_id, {', '.join(_INSERTED)}, updated_at)"
_PROJECT = (
    "SELECT project.id FROM project WHERE project.code = {code} OR project.id = {id}"
    " ORDER BY CASE WHEN project.code = {code} THEN 0 ELSE 1 END LIMIT 1"
)
_INSERT_ONE_PG = (
    f"INSERT INTO {_COLUMN_LIST} SELECT p.id, "
    + ", ".join(
        f"${number}::{_PG_TYPES.get(name, 'text')}" for number, name in enumerate(_INSERTED, 3)
    )
    + f", ${2 + _INSERTED.index('created_at') + 1}::timestamptz"
    + f" FROM ({_PROJECT.format(code='$1::text', id='$2::bigint')}) AS p"
    " ON CONFLICT (project_id, guid) DO NOTHING RETURNING guid, id, project_id"
)
# Many clients in one statement: a column an array; each row finds its own project. The guids
# of one batch are distinct, so each row returned names the request it answers.
_INSERT_MANY_PG = (
    f"INSERT INTO {_COLUMN_LIST} SELECT p.id, "
    + ", ".join(
        f"r.{name}::{_PG_TYPES[name]}" if name in _ARRAY_TYPES else f"r.{name}"
        for name in _INSERTED
    )
    + ", r.created_at FROM unnest($1::text[], $2::bigint[], "
    + ", ".join(
        f"${number}::{_ARRAY_TYPES.get(name, _PG_TYPES.get(name, 'text'))}[]"
        for number, name in enumerate(_INSERTED, 3)
    )
    + f") AS r(project_code, project_id, {', '.join(_INSERTED)})"
    f" CROSS JOIN LATERAL ({_PROJECT.format(code='r.project_code', id='r.project_id')}) AS p"
    " ON CONFLICT (project_id, guid) DO NOTHING RETURNING guid, id, project_id"
)
# Clients one statement writes at most.
BATCH_LIMIT = 200


@dataclass
class _Asked:
    """One create waiting for its statement: the project reference, the parameters, the
    answer."""

    project_code: str | None
    project_id: int | None
    values: list[Any]
    row: dict[str, Any]
    answer: asyncio.Future[Mapping[str, Any] | None]


class PoolNewClients:
    """PostgreSQL with asyncpg: creates written by up to ``writers`` tasks at once, each on a
    connection of asyncpg's own pool, in autocommit (each statement is atomic). A writer takes
    every create waiting when it is free, so under load one statement (one round trip, one
    commit) writes many clients, and when the load is light each create has its statement at
    once. This skips SQLAlchemy's pool, connection and result layers, which cost a create more
    than its statement's round trip. The statements are prepared once a connection (asyncpg's
    statement cache); a connection that the server closed (a restart, a terminated backend) is
    replaced when it is next taken."""

    def __init__(self, pool: asyncpg.Pool, *, writers: int) -> None:
        self.pool = pool
        self.writers = writers
        self.waiting: deque[_Asked] = deque()
        self.writing = 0  # writers that will still look at ``waiting``
        self.active: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(cls, engine: AsyncEngine, *, writers: int) -> PoolNewClients:
        """A pool of ``writers`` connections to the engine's database, with the engine's
        connect arguments."""
        _, options = engine.dialect.create_connect_args(engine.url)
        for sqlalchemy_only in ("prepared_statement_cache_size", "prepared_statement_name_func"):
            options.pop(sqlalchemy_only, None)
        options["timeout"] = connect_timeout(engine.url)
        pool = await asyncpg.create_pool(
            min_size=0,
            max_size=writers,
            # Nothing to reset: a writer runs single statements outside a transaction and
            # changes no session state (asyncpg's default reset is a round trip each release).
            reset=_nothing_to_reset,
            max_inactive_connection_lifetime=0,
            **options,
        )
        return cls(pool, writers=writers)

    async def insert(
        self, *, project_code: str | None, project_id: int | None, fields: Mapping[str, Any]
    ) -> Mapping[str, Any] | None:
        now = utcnow()
        row = {**fields, "created_at": now, "updated_at": now}
        values = [
            json.dumps(row[name]) if name in _ARRAY_TYPES else row[name] for name in _INSERTED
        ]
        answer: asyncio.Future[Mapping[str, Any] | None] = (
            asyncio.get_running_loop().create_future()
        )
        self.waiting.append(_Asked(project_code, project_id, values, row, answer))
        if self.writing < self.writers:
            self.writing += 1
            writer = asyncio.create_task(self._write(), name="client-writer")
            self.active.add(writer)
            writer.add_done_callback(self.active.discard)
        return await answer

    async def _write(self) -> None:
        """Statements until no create waits."""
        counted = True
        try:
            async with self.pool.acquire() as connection:
                while batch := self._take():
                    await self._run(connection, batch)
                # Uncounted before the connection's release awaits: a create asked meanwhile
                # starts a writer of its own instead of waiting for this one.
                self.writing -= 1
                counted = False
        except BaseException as error:
            # No connection (the server is down, say): the creates waiting fail, as each
            # would have on its own connection; later ones start writers anew. (A failed
            # release, after this writer stopped looking, concerns no create.)
            for asked in self._take_all() if counted else ():
                _answer(asked, error=error)
            if not isinstance(error, Exception):
                raise
        finally:
            if counted:
                self.writing -= 1

    def _take(self) -> list[_Asked]:
        """The creates waiting, oldest first, up to ``BATCH_LIMIT``, a guid at most once (a
        repeated one waits for the next statement, which then finds it taken)."""
        batch: list[_Asked] = []
        guids: set[str] = set()
        later: list[_Asked] = []
        while self.waiting and len(batch) < BATCH_LIMIT:
            asked = self.waiting.popleft()
            if asked.answer.done():  # its request was cancelled
                continue
            if asked.row["guid"] in guids:
                later.append(asked)
                continue
            guids.add(asked.row["guid"])
            batch.append(asked)
        self.waiting.extendleft(reversed(later))
        # Rows in one order in every statement: two statements that both meet guids still
        # being written by the other wait for each other in the same order, not in a cycle.
        batch.sort(
            key=lambda asked: (asked.row["guid"], asked.project_code or "", asked.project_id or 0)
        )
        return batch

    def _take_all(self) -> list[_Asked]:
        taken = list(self.waiting)
        self.waiting.clear()
        return taken

    async def _run(self, connection: asyncpg.Connection, batch: list[_Asked]) -> None:
        try:
            if len(batch) == 1:
                asked = batch[0]
                stored = await connection.fetch(
                    _INSERT_ONE_PG, asked.project_code, asked.project_id, *asked.values
                )
            else:
                stored = await connection.fetch(
                    _INSERT_MANY_PG,
                    [asked.project_code for asked in batch],
                    [asked.project_id for asked in batch],
                    *([asked.values[i] for asked in batch] for i in range(len(_INSERTED))),
                )
        except Exception as error:
            if len(batch) == 1 or connection.is_closed():
                for asked in batch:
                    _answer(asked, error=error)
                return
            # One row the database refused fails only its own request.
            for asked in batch:
                await self._run(connection, [asked])
            return
        written = {record[0]: record for record in stored}
        for asked in batch:
            record = written.get(asked.row["guid"])
            _answer(
                asked,
                None if record is None else {"id": record[1], "project_id": record[2], **asked.row},
            )

    async def close(self) -> None:
        await asyncio.gather(*self.active, return_exceptions=True)
        await self.pool.close()


def _answer(
    asked: _Asked, row: Mapping[str, Any] | None = None, *, error: BaseException | None = None
) -> None:
    if asked.answer.done():
        return
    if isinstance(error, Exception):
        asked.answer.set_exception(error)
    elif error is not None:  # the writer was cancelled (a shutdown)
        asked.answer.cancel()
    else:
        asked.answer.set_result(row)


async def _nothing_to_reset(_connection: asyncpg.Connection) -> None:
    return None


@cache
def _insert_new(dialect: str) -> Insert:
    """``INSERT … SELECT`` from the project row, ``ON CONFLICT DO NOTHING`` and ``RETURNING``:
    built once, so SQLAlchemy compiles it once and the driver prepares it once a connection."""
    code = bindparam("project_code", type_=PROJECT_TABLE.c.code.type)
    source = (
        select(
            PROJECT_TABLE.c.id,
            *(bindparam(name, type_=CLIENT_TABLE.c[name].type) for name in CREATE_COLUMNS),
        )
        .where(
            or_(
                PROJECT_TABLE.c.code == code,
                PROJECT_TABLE.c.id == bindparam("project_id", type_=PROJECT_TABLE.c.id.type),
            )
        )
        .order_by(case((PROJECT_TABLE.c.code == code, 0), else_=1))  # a code before an id
        .limit(1)
    )
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return (
        insert(CLIENT_TABLE)
        .from_select(["project_id", *CREATE_COLUMNS], source)
        .on_conflict_do_nothing(index_elements=[CLIENT_TABLE.c.project_id, CLIENT_TABLE.c.guid])
        .returning(*CLIENT_TABLE.c)
    )


async def delete(session: AsyncSession, client: Client) -> None:
    await session.delete(client)
    await session.flush()


COPY_COLUMNS = (*UPSERT_COLUMNS, "guid", "batch")
"""The import's staging table (PostgreSQL): a client's columns and the batch of rows that
carry the same fields (they change the same columns of an existing client)."""
_COPIED = (*UPSERT_COLUMNS, "guid")
_COPY_TYPES = {
    "opted_out": "boolean",
    "email_opted_out": "boolean",
    "sms_opted_out": "boolean",
    "email_consent_at": "timestamptz",
    "sms_consent_at": "timestamptz",
    "batch": "integer",
}


def _assignments(update: Collection[str]) -> list[str]:
    """``SET`` items of an upsert for the columns a batch carries (see ``stamped_moments``)."""
    assignments = [f"{column} = excluded.{column}" for column in UPSERT_COLUMNS if column in update]
    for moment, consent in stamped_moments(update):
        assignments.append(
            f"{moment} = CASE WHEN client.{consent} = excluded.{consent}"
            f" THEN client.{moment} ELSE excluded.{moment} END"
        )
    return assignments


def stamped_moments(update: Collection[str]) -> list[tuple[str, str]]:
    """(moment column, consent column) of each consent a batch carries without its moment:
    its rows hold the moment they were checked (``importing.check_rows``), which replaces
    the stored one only when the consent changes, so a CRM that sends the same consent again
    does not move when it was given."""
    return [
        (f"{channel}_consent_at", f"{channel}_consent")
        for channel in ("email", "sms")
        if f"{channel}_consent" in update and f"{channel}_consent_at" not in update
    ]


async def copy_upsert(
    session: AsyncSession,
    *,
    project_id: int,
    batches: Sequence[tuple[Collection[str], Sequence[Sequence[Any]]]],
) -> int:
    """PostgreSQL: ``COPY`` the rows into a temporary table, then one ``INSERT … SELECT … ON
    CONFLICT DO UPDATE`` a batch; the number of clients inserted.

    Each batch: the columns to update on an existing client, and its rows, each the values of
    ``COPY_COLUMNS`` but ``batch`` in that order, ``tags`` and ``attributes`` as JSON text (a
    guid at most once in all batches). Runs in the session's transaction; the table goes
    with it.
    """
    connection = await session.connection()
    raw = (await connection.get_raw_connection()).driver_connection
    assert raw is not None
    await raw.execute(
        "CREATE TEMPORARY TABLE client_import ("
        + ", ".join(f"{name} {_COPY_TYPES.get(name, 'text')}" for name in COPY_COLUMNS)
        + ") ON COMMIT DROP"
    )
    await raw.copy_records_to_table(
        "client_import",
        columns=COPY_COLUMNS,
        records=((*row, number) for number, (_, rows) in enumerate(batches) for row in rows),
    )
    created = 0
    now = utcnow()
    for number, (update, _) in enumerate(batches):
        assignments = ", ".join(_assignments(update))
        created += await raw.fetchval(
            "WITH stored AS ("
            f" INSERT INTO client (project_id, {', '.join(_COPIED)}, created_at, updated_at)"
            " SELECT $1::bigint, "
            + ", ".join(f"{name}::json" if name in _ARRAY_TYPES else name for name in _COPIED)
            + ", $2::timestamptz, $2::timestamptz"
            " FROM client_import WHERE batch = $3::integer"
            " ON CONFLICT (project_id, guid) DO UPDATE SET"
            f" {assignments + ', ' if assignments else ''}updated_at = excluded.updated_at"
            " RETURNING created_at)"
            " SELECT count(*) FROM stored WHERE created_at = $2::timestamptz",
            project_id,
            now,
            number,
        )
    await raw.execute("DROP TABLE client_import")
    return created


async def upsert_many(
    session: AsyncSession,
    *,
    project_id: int,
    rows: Sequence[dict[str, Any]],
    update: Collection[str],
) -> set[str]:
    """Insert ``rows`` (each a client's fields with its guid), or update the ``update`` columns
    of the clients that exist; returns the guids inserted.

    One statement for all rows (batched by the driver). ``rows`` must not repeat a guid: one
    statement may not touch a row twice. A row is new when its ``created_at`` comes back as
    the moment this call stamped: an update keeps the old ``created_at``.
    """
    if not rows:
        return set()
    now = utcnow()
    values = [
        {**row, "project_id": project_id, "created_at": now, "updated_at": now} for row in rows
    ]
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(CLIENT_TABLE)
    upsert = statement.on_conflict_do_update(
        index_elements=[CLIENT_TABLE.c.project_id, CLIENT_TABLE.c.guid],
        set_={
            **{column: statement.excluded[column] for column in UPSERT_COLUMNS if column in update},
            **{
                moment: case(
                    (
                        CLIENT_TABLE.c[consent] == statement.excluded[consent],
                        CLIENT_TABLE.c[moment],
                    ),
                    else_=statement.excluded[moment],
                )
                for moment, consent in stamped_moments(update)
            },
            "updated_at": statement.excluded.updated_at,
        },
    ).returning(CLIENT_TABLE.c.guid, CLIENT_TABLE.c.created_at)
    result = await session.execute(upsert, values)
    return {guid for guid, created_at in result if created_at == now}
