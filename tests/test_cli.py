"""The installed ``rassylka`` command, run as a real subprocess.

``serve`` is started on a free loopback port, polled until it answers (at most ~20 s) and always
terminated. The environment handed to the command carries no ``RASSYLKA_*`` variable except the
ones a test sets, so the defaults (a SQLite file in the working directory) are what is tested.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import httpx
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

import rassylka.models  # noqa: F401  (every table onto the metadata)
from conftest import require_postgres
from rassylka import migrate
from rassylka.db import metadata

if TYPE_CHECKING:
    from conftest import PostgresServer

RASSYLKA = Path(sys.executable).with_name("rassylka")
MODEL_TABLES = set(metadata.tables)
START_TIMEOUT = 20.0


def _head() -> str:
    head = ScriptDirectory.from_config(migrate.alembic_config()).get_current_head()
    assert head is not None
    return head


def _env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("RASSYLKA_")}
    # Plain, wide help output: no colours or boxes cut to a narrow terminal.
    env.update({"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def _run(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RASSYLKA), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _sqlite_state(path: Path) -> tuple[set[str], list[str]]:
    """The tables of a SQLite file and the revision(s) recorded in it, read synchronously."""
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as connection:
            tables = set(inspect(connection).get_table_names())
            versions = []
            if "alembic_version" in tables:
                versions = list(
                    connection.execute(text("SELECT version_num FROM alembic_version")).scalars()
                )
            return tables, versions
    finally:
        engine.dispose()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Served:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


StartServer = Callable[[Path, dict[str, str]], Served]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[StartServer]:
    """Starts ``rassylka serve`` in a working directory; stops every server it started."""
    started: list[subprocess.Popen[bytes]] = []

    def start(workdir: Path, env: dict[str, str]) -> Served:
        port = _free_port()
        log = tmp_path / f"serve-{port}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [str(RASSYLKA), "serve", "--host", "127.0.0.1", "--port", str(port)],
                cwd=workdir,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        started.append(process)
        served = Served(f"http://127.0.0.1:{port}", process, log)
        _wait_until_up(served)
        return served

    try:
        yield start
    finally:
        for process in started:
            _stop(process)


def _wait_until_up(served: Served) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last: object = None
    while time.monotonic() < deadline:
        if served.process.poll() is not None:
            pytest.fail(
                f"rassylka serve exited with {served.process.returncode}:\n{served.output()}"
            )
        try:
            response = httpx.get(f"{served.url}/health", timeout=2)
        except httpx.TransportError as error:
            last = error
        else:
            if response.status_code == 200:
                return
            last = response
        time.sleep(0.1)
    pytest.fail(f"rassylka serve not up after {START_TIMEOUT} s ({last!r}):\n{served.output()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _check_api(served: Served) -> None:
    health = httpx.get(f"{served.url}/health", timeout=10)
    assert health.status_code == 200, health.text
    assert health.json() == {"status": 200, "message": "Ok", "data": {"database": "ok"}}
    created = httpx.post(
        f"{served.url}/project/create", json={"name": "OCM", "code": "010"}, timeout=10
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["status"], body["message"]) == (201, "Ok")
    assert body["data"]["code"] == "010"
    assert isinstance(body["data"]["id"], int)
    listed = httpx.get(f"{served.url}/project/list", timeout=10)
    assert listed.status_code == 200, listed.text
    assert "010" in listed.text  # the project was committed, not only echoed


def test_the_console_script_is_installed() -> None:
    assert RASSYLKA.is_file(), f"{RASSYLKA} missing: is the package installed in this venv?"
    assert os.access(RASSYLKA, os.X_OK)


def test_help_lists_serve_and_db(tmp_path: Path) -> None:
    result = _run("--help", cwd=tmp_path, env=_env())
    assert result.returncode == 0, result.stderr
    commands = set(re.findall(r"^\W*(\w+)\s", result.stdout, flags=re.MULTILINE))
    assert {"serve", "db"} <= commands, result.stdout


def test_db_help_lists_upgrade_and_downgrade(tmp_path: Path) -> None:
    result = _run("db", "--help", cwd=tmp_path, env=_env())
    assert result.returncode == 0, result.stderr
    commands = set(re.findall(r"^\W*(\w+)\s", result.stdout, flags=re.MULTILINE))
    assert {"upgrade", "downgrade"} <= commands, result.stdout


def test_unknown_command_fails(tmp_path: Path) -> None:
    result = _run("no-such-command", cwd=tmp_path, env=_env())
    assert result.returncode != 0


def test_db_upgrade_creates_the_tables(tmp_path: Path) -> None:
    path = tmp_path / "new" / "schema.db"
    path.parent.mkdir()
    env = _env(RASSYLKA_DATABASE_URL=f"sqlite+aiosqlite:///{path}")
    result = _run("db", "upgrade", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert path.is_file()
    tables, versions = _sqlite_state(path)
    assert tables == MODEL_TABLES | {"alembic_version"}
    assert versions == [_head()]
    assert not (tmp_path / "rassylka.db").exists()  # the URL from the environment was used

    again = _run("db", "upgrade", cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert _sqlite_state(path) == (tables, versions)


def test_db_downgrade_base_removes_the_tables(tmp_path: Path) -> None:
    path = tmp_path / "schema.db"
    env = _env(RASSYLKA_DATABASE_URL=f"sqlite+aiosqlite:///{path}")
    assert _run("db", "upgrade", cwd=tmp_path, env=env).returncode == 0
    result = _run("db", "downgrade", "base", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    tables, versions = _sqlite_state(path)
    assert tables <= {"alembic_version"}
    assert versions == []


def test_db_downgrade_minus_one_as_documented(tmp_path: Path) -> None:
    path = tmp_path / "schema.db"
    env = _env(RASSYLKA_DATABASE_URL=f"sqlite+aiosqlite:///{path}")
    assert _run("db", "upgrade", cwd=tmp_path, env=env).returncode == 0
    result = _run("db", "downgrade", "-1", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    revisions = list(ScriptDirectory.from_config(migrate.alembic_config()).walk_revisions())
    below = revisions[0].down_revision
    assert _sqlite_state(path)[1] == ([] if below is None else [below])


def test_serve_on_the_default_sqlite_file(tmp_path: Path, serve: StartServer) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    served = serve(workdir, _env())
    database = workdir / "rassylka.db"
    assert database.is_file(), served.output()
    tables, versions = _sqlite_state(database)
    assert tables == MODEL_TABLES | {"alembic_version"}
    assert versions == [_head()]
    _check_api(served)


async def _postgres_tables(url: str) -> tuple[set[str], list[str]]:
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn, timeout=5)
    try:
        rows = await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        tables = {row["tablename"] for row in rows}
        versions: list[str] = []
        if "alembic_version" in tables:
            versions = [
                r["version_num"] for r in await connection.fetch("SELECT * FROM alembic_version")
            ]
        return tables, versions
    finally:
        await connection.close()


@pytest.fixture
def empty_postgres_database(postgres: PostgresServer) -> Iterator[str]:
    """A new, empty PostgreSQL database (no schema at all), dropped afterwards."""
    require_postgres(postgres)
    name = f"rassylka_cli_{uuid.uuid4().hex[:12]}"
    asyncio.run(postgres.execute(f'CREATE DATABASE "{name}"'))
    try:
        yield postgres.database_url(name)
    finally:
        asyncio.run(postgres.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_serve_on_postgresql(
    tmp_path: Path,
    serve: StartServer,
    empty_postgres_database: str,
) -> None:
    assert asyncio.run(_postgres_tables(empty_postgres_database)) == (set(), [])
    served = serve(tmp_path, _env(RASSYLKA_DATABASE_URL=empty_postgres_database))
    tables, versions = asyncio.run(_postgres_tables(empty_postgres_database))
    assert tables == MODEL_TABLES | {"alembic_version"}
    assert versions == [_head()]
    assert not (tmp_path / "rassylka.db").exists(), "served SQLite instead of PostgreSQL"
    _check_api(served)


def test_db_upgrade_on_postgresql(tmp_path: Path, empty_postgres_database: str) -> None:
    env = _env(RASSYLKA_DATABASE_URL=empty_postgres_database)
    result = _run("db", "upgrade", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    tables, versions = asyncio.run(_postgres_tables(empty_postgres_database))
    assert tables == MODEL_TABLES | {"alembic_version"}
    assert versions == [_head()]
