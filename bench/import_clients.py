"""How fast POST /client/import stores clients, against the database's own insert speed.

Starts ``rassylka serve`` on 127.0.0.1 (a subprocess, as in production) on a scratch database,
imports N generated clients in one request as CSV and as JSON (each into its own project), then
imports them again changed (all updates), and prints rows/s for each phase. The yardstick is
a plain Core ``INSERT`` of the same N rows (SQLAlchemy ``executemany``, one transaction) on the
same database: the ratio says which share of that physical limit the whole import path reaches.

    .venv/bin/python bench/import_clients.py [--rows N] [--database-url URL] [--budget S]

Without ``--database-url`` it runs on a temporary SQLite file and, if reachable, on a database
of its own created (and dropped) on the PostgreSQL server at ``--postgres-url``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import asyncpg
import httpx
from sqlalchemy import Table, insert, text
from sqlalchemy.engine import make_url

from peers import free_port, postgres
from rassylka.clients.models import Client
from rassylka.db import create_engine, utcnow

DEFAULT_ROWS = 100_000
DEFAULT_POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
DEFAULT_BUDGET = 70.0
"""Seconds of import phases per database; past it the rows are cut and phases skipped."""
PROBE_ROWS = 5_000
PHASES = ("csv create", "json create", "csv update", "json update")
CLIENT_TABLE = cast(Table, Client.__table__)
CSV_COLUMNS = (
    "guid,first_name,last_name,middle_name,email,phone,timezone,tags,attributes.city,attributes.n"
)


# -- the clients --------------------------------------------------------------------------------


def clients(count: int, version: int, start: int = 0) -> list[dict[str, Any]]:
    """Clients as a CRM sends them, already in the form they are stored (E.164, lower domain).

    ``version`` changes the name and the tags, so a second import really updates every row.
    """
    suffix = "" if version == 0 else f"-{version}"
    return [
        {
            "guid": f"b{i:07d}",
            "first_name": f"Имя{i}{suffix}",
            "last_name": "Фамилия",
            "middle_name": "Отчество",
            "email": f"user{i}@example.com",
            "phone": f"+7916{i:07d}",
            "timezone": "Europe/Moscow",
            "tags": ["bench", f"v{version}"],
            "attributes": {"city": "Москва", "n": str(i)},
        }
        for i in range(start, start + count)
    ]


def as_csv(rows: list[dict[str, Any]]) -> bytes:
    lines = [CSV_COLUMNS]
    lines += [
        ",".join(
            (
                row["guid"],
                row["first_name"],
                row["last_name"],
                row["middle_name"],
                row["email"],
                row["phone"],
                row["timezone"],
                "|".join(row["tags"]),
                row["attributes"]["city"],
                row["attributes"]["n"],
            )
        )
        for row in rows
    ]
    return ("\n".join(lines) + "\n").encode()


def as_json(project: str, rows: list[dict[str, Any]]) -> bytes:
    return json.dumps({"project": project, "clients": rows}, ensure_ascii=False).encode()


# -- the server ---------------------------------------------------------------------------------


@contextmanager
def running_server(
    database_url: str, rows: int, workdir: Path, api_workers: int = 0
) -> Iterator[httpx.Client]:
    """``rassylka serve`` on ``database_url`` (migrated on start), and a client for it; with
    ``api_workers``, ``rassylka api --workers N`` instead (the schema must be there)."""
    port = free_port()
    env = {
        **os.environ,
        "RASSYLKA_DATABASE_URL": database_url,
        "RASSYLKA_API_KEYS": "",
        "RASSYLKA_MAX_IMPORT_ROWS": str(max(rows, DEFAULT_ROWS)),
        "RASSYLKA_MAX_IMPORT_BYTES": str(max(64 * 1024 * 1024, rows * 1024)),
    }
    log_path = workdir / f"server-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "rassylka", "serve", "--port", str(port)]
            if not api_workers
            else [
                *(sys.executable, "-m", "rassylka", "api", "--port", str(port)),
                *("--workers", str(api_workers)),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=None) as http:
            deadline = time.monotonic() + 60
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"the server exited:\n{log_path.read_text()[-3000:]}")
                with suppress(httpx.TransportError):
                    if http.get("/health").status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.1)
            yield http
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def make_project(http: httpx.Client, code: str) -> int:
    response = http.post("/project/create", json={"name": f"Бенчмарк {code}", "code": code})
    if response.status_code != 201:
        raise RuntimeError(f"cannot create project {code}: {response.text}")
    return int(response.json()["data"]["id"])


# -- the measurements ---------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    rows: int
    seconds: float | None = None
    problem: str | None = None
    peak_rss_mb: float | None = None

    @property
    def rate(self) -> float | None:
        return self.rows / self.seconds if self.seconds else None


@dataclass
class Report:
    backend: str
    version: str = ""
    phases: list[Phase] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def import_request(
    http: httpx.Client, *, kind: str, project: str, body: bytes
) -> tuple[float, dict[str, Any]]:
    """Seconds from sending the request to its answer, and the answer's data."""
    start = time.perf_counter()
    if kind == "csv":
        response = http.post(
            "/client/import",
            params={"project": project},
            files={"file": ("clients.csv", body, "text/csv")},
        )
    else:
        response = http.post(
            "/client/import", content=body, headers={"Content-Type": "application/json"}
        )
    seconds = time.perf_counter() - start
    if response.status_code != 201:
        raise RuntimeError(f"{kind} import answered {response.status_code}: {response.text[:500]}")
    data: dict[str, Any] = response.json()["data"]
    return seconds, data


def check_counts(data: dict[str, Any], *, created: int, updated: int) -> str | None:
    got = (data["created"], data["updated"], data["rejected"])
    if got != (created, updated, 0):
        first = data["errors"][:1]
        return f"expected created/updated/rejected {created}/{updated}/0, got {got} {first}"
    return None


async def core_insert_seconds(database_url: str, rows: list[dict[str, Any]]) -> float:
    """A plain INSERT of ``rows`` (executemany, one transaction, committed): the yardstick."""
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))  # connected before the clock starts
            await connection.commit()
            start = time.perf_counter()
            async with connection.begin():
                await connection.execute(insert(CLIENT_TABLE), rows)
            return time.perf_counter() - start
    finally:
        await engine.dispose()


def planned_rows(rows: int, probe_rate: float, budget: float) -> int:
    """As many rows as the phases can import within ``budget`` at the probe's pace."""
    if budget <= 0 or len(PHASES) * rows / probe_rate <= budget:
        return rows
    return min(rows, max(1_000, int(budget * probe_rate / len(PHASES)) // 1_000 * 1_000))


def measure(
    database_url: str,
    report: Report,
    *,
    rows: int,
    budget: float,
    workdir: Path,
    clean_up: bool,
) -> None:
    """Fill ``report`` with the phases; ``clean_up`` deletes the bench's projects at the end."""
    tag = uuid.uuid4().hex[:6]
    codes = {name: f"bench-{tag}-{name}" for name in ("probe", "core", "csv", "json")}
    with running_server(database_url, rows, workdir) as http:
        ids = {name: make_project(http, code) for name, code in codes.items()}
        try:
            probe = clients(min(rows, PROBE_ROWS), 0)
            seconds, _ = import_request(
                http, kind="csv", project=codes["probe"], body=as_csv(probe)
            )
            rows_now = planned_rows(rows, len(probe) / seconds, budget)
            if rows_now < rows:
                report.notes.append(
                    f"{report.backend}: a probe of {len(probe):,} rows ran at"
                    f" {len(probe) / seconds:,.0f} rows/s, so {rows_now:,} rows instead of"
                    f" {rows:,} to stay within --budget {budget:.0f} s"
                )
            first, second = clients(rows_now, 0), clients(rows_now, 1)

            stored = [
                {**row, "project_id": ids["core"], "created_at": utcnow(), "updated_at": utcnow()}
                for row in first
            ]
            core = Phase("core INSERT", rows_now)
            core.seconds = asyncio.run(core_insert_seconds(database_url, stored))
            report.phases.append(core)
            _progress(report.backend, core)

            bodies = {
                "csv create": ("csv", codes["csv"], as_csv(first)),
                "json create": ("json", codes["json"], as_json(codes["json"], first)),
                "csv update": ("csv", codes["csv"], as_csv(second)),
                "json update": ("json", codes["json"], as_json(codes["json"], second)),
            }
            spent, pace = 0.0, len(probe) / seconds
            for name in PHASES:
                phase = Phase(name, rows_now)
                report.phases.append(phase)
                if budget > 0 and spent + rows_now / pace > budget * 1.25:
                    phase.problem = "skipped: over --budget"
                    continue
                kind, code, body = bodies[name]
                phase.seconds, data = import_request(http, kind=kind, project=code, body=body)
                creating = name.endswith("create")
                phase.problem = check_counts(
                    data,
                    created=rows_now if creating else 0,
                    updated=0 if creating else rows_now,
                )
                spent += phase.seconds
                pace = rows_now / phase.seconds
                _progress(report.backend, phase)
        finally:
            if clean_up:
                for project_id in ids.values():  # the clients go with their project
                    http.delete(f"/project/{project_id}")


def descendants_peak_rss_mb() -> float:
    """The largest peak resident memory (VmHWM) among this process's descendants, MB."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError):
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
                )
    family, grown = {os.getpid()}, True
    while grown:
        found = {pid for pid, parent in parents.items() if parent in family}
        grown = not found <= family
        family |= found
    peak = 0.0
    for pid in family - {os.getpid()}:
        with suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
    return peak


def import_in_requests(
    database_url: str, *, total: int, per_request: int, parallel: int, workdir: Path
) -> Phase:
    """``total`` new clients as CSV requests of ``per_request`` rows, ``parallel`` at a time,
    against ``rassylka api --workers parallel`` (a CRM's bulk load, as docs/api.md says)."""
    phase = Phase(f"{total:,} in {per_request:,}s ×{parallel}", total)
    with running_server(database_url, per_request, workdir, api_workers=parallel) as http:
        code = f"bench-{uuid.uuid4().hex[:6]}-total"
        project_id = make_project(http, code)
        # The bodies are made before the clock starts: a CRM sends files it already has, and
        # making them here (~1.5 s of this process's CPU per 100,000 rows) took the CPUs the
        # import is measured on.
        bodies = [
            as_csv(clients(min(per_request, total - start), 0, start))
            for start in range(0, total, per_request)
        ]

        def one(body: bytes) -> tuple[float, dict[str, Any]]:
            return import_request(http, kind="csv", project=code, body=body)

        began = time.perf_counter()
        with ThreadPoolExecutor(parallel) as pool:
            answers = list(pool.map(one, bodies))
        phase.seconds = time.perf_counter() - began
        created = sum(data["created"] for _, data in answers)
        rejected = sum(data["rejected"] for _, data in answers)
        stored = http.get("/client/list", params={"project": project_id, "limit": 1})
        count = stored.json()["data"]["total"]
        if (created, rejected, count) != (total, 0, total):
            phase.problem = f"created {created:,}, rejected {rejected:,}, stored {count:,}"
        phase.peak_rss_mb = descendants_peak_rss_mb()
    _progress("postgresql", phase)
    return phase


def _progress(backend: str, phase: Phase) -> None:
    print(
        f"  {backend}: {phase.name} {phase.rows:,} rows in {phase.seconds:.2f} s", file=sys.stderr
    )


# -- the databases ------------------------------------------------------------------------------


def benchpostgres(
    admin_url: str, *, rows: int, budget: float, workdir: Path, total: tuple[int, int, int]
) -> Report:
    report = Report("postgresql")
    name = f"rassylka_bench_{os.getpid()}"
    try:
        report.version = asyncio.run(postgres(admin_url, f'CREATE DATABASE "{name}"'))
    except (TimeoutError, OSError, asyncpg.PostgresError) as error:
        report.notes.append(f"postgresql: skipped, {make_url(admin_url).host} unreachable: {error}")
        return report
    try:
        url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        measure(url, report, rows=rows, budget=budget, workdir=workdir, clean_up=False)
        if total[0]:
            clients_total, per_request, parallel = total
            report.phases.append(
                import_in_requests(
                    url,
                    total=clients_total,
                    per_request=per_request,
                    parallel=parallel,
                    workdir=workdir,
                )
            )
    finally:
        asyncio.run(postgres(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    return report


def bench_url(
    url: str, *, rows: int, budget: float, workdir: Path, clean_up: bool = False
) -> Report:
    backend = make_url(url).get_backend_name()
    report = Report(backend)
    if backend == "sqlite":
        report.version = sqlite3.sqlite_version
    else:
        with suppress(Exception):
            report.version = asyncio.run(postgres(url))
    measure(url, report, rows=rows, budget=budget, workdir=workdir, clean_up=clean_up)
    return report


# -- the table ----------------------------------------------------------------------------------


def print_table(reports: list[Report], rows: int) -> None:
    print()
    print(f"POST /client/import, {rows:,} clients per request ({os.cpu_count()} CPUs)")
    print()
    print(f"{'database':<18} {'phase':<12} {'rows':>8} {'seconds':>8} {'rows/s':>9} {'÷ core':>7}")
    print("-" * 67)
    for report in reports:
        database = f"{report.backend} {report.version}".strip()
        core = next((p.rate for p in report.phases if p.name == "core INSERT"), None)
        for phase in report.phases:
            if phase.rate is None:
                figures = f"{'—':>8} {'—':>9} {'—':>7}"
            else:
                ratio = f"{phase.rate / core:7.3f}" if core else f"{'—':>7}"
                figures = f"{phase.seconds:8.2f} {phase.rate:9,.0f} {ratio}"
            print(f"{database:<18} {phase.name:<12} {phase.rows:>8,} {figures}")
            if phase.problem:
                print(f"{'':<18}   ! {phase.problem}")
            database = ""
    notes = [note for report in reports for note in report.notes]
    if notes:
        print()
        for note in notes:
            print(f"note: {note}")
    print()
    print("÷ core: rows/s of the phase over rows/s of a plain Core INSERT executemany of the")
    print("same rows on the same database (1.000 = the physical limit; update phases too).")
    for phase in (p for report in reports for p in report.phases if p.peak_rss_mb):
        print(
            f"\n{phase.rows:,} clients in {phase.seconds:.1f} s ({phase.rate:,.0f} rows/s),"
            f" largest API process peak RSS {phase.peak_rss_mb:.0f} MB"
            f" (target: 1,000,000 in ≤ 60 s)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="clients per import")
    parser.add_argument(
        "--database-url",
        help="benchmark only this database (its bench projects are deleted afterwards)",
    )
    parser.add_argument(
        "--postgres-url",
        default=DEFAULT_POSTGRES,
        help="PostgreSQL server to create a scratch database on ('' to skip PostgreSQL)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=DEFAULT_BUDGET,
        help="seconds of import phases per database before rows are cut (0: no limit)",
    )
    parser.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    parser.add_argument(
        "--total",
        type=int,
        default=0,
        help="then, on PostgreSQL, this many new clients in requests of --per-request rows",
    )
    parser.add_argument("--per-request", type=int, default=DEFAULT_ROWS)
    parser.add_argument(
        "--parallel", type=int, default=2, help="requests at a time, rassylka api --workers"
    )
    args = parser.parse_args()
    if args.rows < 1:
        parser.error("--rows must be positive")

    reports: list[Report] = []
    with tempfile.TemporaryDirectory(prefix="rassylka-bench-") as tmp:
        workdir = Path(tmp)
        options = {"rows": args.rows, "budget": args.budget, "workdir": workdir}
        if args.database_url:
            reports.append(bench_url(args.database_url, clean_up=True, **options))
        else:
            if not args.no_sqlite:
                sqlite_url = f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
                reports.append(bench_url(sqlite_url, **options))
            if args.postgres_url:
                total = (args.total, args.per_request, args.parallel)
                reports.append(benchpostgres(args.postgres_url, total=total, **options))
    print_table(reports, args.rows)


if __name__ == "__main__":
    main()
