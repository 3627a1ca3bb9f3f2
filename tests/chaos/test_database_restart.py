"""The database stopped and started again mid-mailing (issue 7, point 2).

Not the machine's PostgreSQL (other tests use it meanwhile): a private cluster, made with
``initdb`` in a temporary folder and served on a free port, that the test stops
(``pg_ctl stop -m fast``) for ~12 s while ``rassylka api`` and ``rassylka worker`` run on it.
While it is down the API answers 503 in the manual's envelope within seconds (no hang) and the
worker says so in a line or two (no tracebacks); once it is back both carry on by themselves
and the mailing completes, every message sent exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from harness import (
    CountingSink,
    Service,
    all_final,
    email_address,
    free_port,
    make_mailing,
    report,
    service_env,
    until,
    wait_for_http,
)
from rassylka import migrate
from rassylka.db import create_checked_engine

pytestmark = pytest.mark.chaos

TOTAL = 5_000
OUTAGE = 12.0


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster of this test's own (trust authentication, no fsync)."""

    bindir: Path
    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def run(self, *command: str) -> None:
        # initdb and postgres refuse to run as root: as the postgres user then (CI is root).
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        result = subprocess.run(
            [*prefix, str(self.bindir / command[0]), *command[1:]],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            log = self.root / "postgres.log"
            raise RuntimeError(
                f"{command[0]}: {result.stdout}{result.stderr}"
                f"{log.read_text() if log.exists() else ''}"
            )

    def initdb(self) -> None:
        self.run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        log = str(self.root / "postgres.log")
        self.run("pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "start")

    def stop(self) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")


def _bindir() -> Path | None:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda path: int(Path(path).parent.name)
    )
    return Path(found[-1]) if found and Path(found[-1], "initdb").exists() else None


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    bindir = _bindir()
    if bindir is None:
        if os.environ.get("RASSYLKA_TEST_REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL's server binaries (initdb, pg_ctl) are not installed")
        pytest.skip("PostgreSQL's server binaries (initdb, pg_ctl) are not installed")
    # Not under pytest's folder: the postgres user must be able to reach it.
    root = Path(tempfile.mkdtemp(prefix="rassylka-chaos-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    cluster = PrivatePostgres(bindir, root, free_port())
    try:
        cluster.initdb()
        cluster.start()
        yield cluster
    finally:
        with contextlib.suppress(RuntimeError):  # it was not running
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def private_engine(private_postgres: PrivatePostgres) -> AsyncIterator[AsyncEngine]:
    # Its pooled connections checked when taken: the server restarts under them.
    engine = create_checked_engine(private_postgres.url)
    await migrate.upgrade(engine)
    yield engine
    await engine.dispose()


async def test_a_database_restart_mid_mailing_is_ridden_out_by_the_api_and_the_worker(
    private_postgres: PrivatePostgres,
    private_engine: AsyncEngine,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sink = CountingSink().start()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = service_env(
        private_postgres.url,
        smtp_host="127.0.0.1",
        smtp_port=sink.port,
        email_rate_limit=400,  # ~12 s of sending, so the outage falls in the middle
        dispatch_poll_interval=0.2,
        dispatch_lease=60,
    )
    api_process = Service(("api", "--port", str(port)), env, tmp_path / "api.log")
    worker = Service(("worker",), env, tmp_path / "worker.log")
    answers: list[tuple[int, float]] = []
    try:
        await api_process.start()
        await wait_for_http(url, api_process)
        async with httpx.AsyncClient(base_url=url, timeout=30) as api:
            mailing_id = await make_mailing(api, TOTAL)
            started = time.monotonic()
            await worker.start()
            await worker.ready()
            await until(lambda: asyncio.sleep(0, sink.count() >= 1000), seconds=60, what="sends")
            quiet_from = len(worker.text())  # what the worker says from the stop on
            await asyncio.to_thread(private_postgres.stop)
            down_at = time.monotonic()
            sent_at_stop = sink.count()
            requests = [
                ("GET", f"/mailing/{mailing_id}/stats", None),
                (
                    "POST",
                    "/client/create",
                    {"project": "010", "guid": "new", "first_name": "И", "last_name": "И"},
                ),
            ]
            while time.monotonic() - down_at < OUTAGE:
                for method, path, body in requests:
                    asked = time.monotonic()
                    async with asyncio.timeout(10):  # not a hang
                        response = await api.request(method, path, json=body)
                    answers.append((response.status_code, time.monotonic() - asked))
                    assert response.status_code == 503, response.text
                    data = response.json()
                    assert data["code"] == 503
                    assert data["error"]["status"] == 503
                    assert data["error"]["message"] == "Сервис недоступен"
                await asyncio.sleep(0.5)
            during = worker.text()[quiet_from:]
            await asyncio.to_thread(private_postgres.start)
            outage = time.monotonic() - down_at
            back_at = time.monotonic()
            await until(
                lambda: all_final(private_engine, TOTAL), seconds=120, what="every message final"
            )
            completed = time.monotonic()
            stats = await api.get(f"/mailing/{mailing_id}/stats")
            assert stats.status_code == 200, stats.text
    finally:
        await worker.stop()
        await api_process.stop()
        sink.stop()
    missing = [n for n in range(TOTAL) if sink.received[email_address(n)] == 0]
    after = worker.text()[quiet_from:]
    report(
        capsys,
        "database restarted",
        messages=TOTAL,
        sent_at_stop=sent_at_stop,
        outage_s=round(outage, 1),
        answers_503=len(answers),
        slowest_503_s=round(max(seconds for _, seconds in answers), 2),
        completed_after_restart_s=round(completed - back_at, 1),
        total_s=round(completed - started, 1),
        worker_lines_during_outage=len(during.splitlines()),
        duplicates=sink.duplicates(),
        lost=len(missing),
    )
    assert sent_at_stop < TOTAL, "the outage came after the mailing was done"
    assert answers
    assert max(seconds for _, seconds in answers) < 6
    assert not missing
    assert sink.duplicates() == 0
    assert "Traceback" not in after, after[-3000:]
    assert len(during.splitlines()) <= 5, during
    assert "the database is unreachable" in after
    assert "the database is reachable again" in after
