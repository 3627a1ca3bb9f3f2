"""Materialising a run: a mailing to 10k, 100k and 1M clients becomes its messages.

What it does, on PostgreSQL (a scratch database of its own, created and dropped):

1. migrates it (``rassylka db upgrade``) and starts ``rassylka api``; through the API it
   creates, per size, a project and a template;
2. inserts each project's clients straight in SQL (``generate_series``): the clients are this
   benchmark's data, not what it measures, and importing a million through the API is
   ``import_clients.py``'s subject. Their mix: zones spread over eight Russian time zones (a
   tenth with none), 0.5 % without an email, 1 % opted out, 1 % of the addresses suppressed;
   then ``ANALYZE``, as autovacuum would do soon after a large import;
3. per size, ``--runs`` times: creates an email mailing to all of that project's clients
   through the API (active, its moment past), then, in a fresh process, one
   ``Scheduler.tick()`` — the real code path a worker runs: lock the due mailing, create the
   run, ``INSERT … SELECT`` its messages, write the skipped ones' creation events (a message
   made queued has none), hold them for a send window, expire and finish what is due. It times
   the tick and, per statement kind, the time the database took (``message`` rows, events, the
   rest) and the CPU time the tick's PostgreSQL
   backends used (steadier than wall time on a shared machine); after each run it checks
   that the run has one message per client, then empties ``message``, ``message_event`` and
   ``run`` (``TRUNCATE``) and runs a ``CHECKPOINT``, so that every run starts from the same
   state and pays for no earlier run's dirty pages;
4. prints per size the median seconds and messages/s, each process's peak RSS (VmHWM): the
   process that ticked, ``rassylka api``, and the PostgreSQL backends that served the tick
   (the highest of this database's, read while the tick's connections are open; their RSS
   counts the shared buffers they touched, up to ``shared_buffers``) — and last
   the judged figures: the largest size's seconds over the 10 s target (per million
   messages) and whether the peak RSS of the ticking process is flat across the sizes.

    .venv/bin/python bench/materialize.py [--sizes 10000,100000,1000000] [--runs 3]
                                          [--window] [--postgres-url URL]

``--window`` gives the mailing a send window shut in every zone (03:00–03:01), so that every
message is held until its zone's opening.

``--sizes 1000 --runs 1`` is the tiny mode the test suite runs. The server's settings are
whatever it has (stock Debian: 128 MB shared buffers, ``max_wal_size`` 1 GB); the script prints
the ones that matter. Everything it starts is stopped, and the scratch database dropped, on
any exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg

from peers import (
    HTML,
    SUBJECT,
    TEXT,
    call,
    dsn,
    free_port,
    postgres,
    project_with_template,
    scratch_database,
)

DEFAULT_POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
START_TIMEOUT = 30.0
RASSYLKA = Path(sys.executable).with_name("rassylka")
TARGET_SECONDS = 10.0
TARGET_MESSAGES = 1_000_000
# Peak RSS counts as flat when the largest size's is within this of the smallest's.
FLAT_MB = 10.0
# --window: a send window shut in every zone (unless it is 03:00 there), so that every
# message waits for its zone's opening.
SHUT_WINDOW = {"start": "03:00", "end": "03:01"}
SETTINGS = ("shared_buffers", "max_wal_size", "synchronous_commit", "work_mem")

# The clients of one project: guid, names, email (0.5 % none), a zone (a tenth none), 1 %
# opted out. :project is bound; $1 the count.
CLIENTS_SQL = """
INSERT INTO client (project_id, guid, first_name, last_name, middle_name, email, phone,
                    timezone, tags, attributes, opted_out, phone_timezone, created_at, updated_at)
SELECT {project}, 'c' || i, 'Имя' || i, 'Петров', '',
       CASE WHEN i % 200 = 0 THEN NULL ELSE 'user' || i || '@example.ru' END,
       '+7916' || lpad(i::text, 7, '0'),
       (ARRAY[NULL, 'Europe/Moscow', 'Europe/Samara', 'Asia/Yekaterinburg', 'Asia/Omsk',
              'Asia/Novosibirsk', 'Asia/Irkutsk', 'Asia/Vladivostok', 'Europe/Kaliningrad',
              'Europe/Moscow'])[1 + i % 10],
       '["новости"]', '{{"city": "Москва"}}', i % 100 = 7, NULL, now(), now()
FROM generate_series(1, $1) AS i
"""
# 1 % of the project's addresses suppressed.
SUPPRESSIONS_SQL = """
INSERT INTO suppression (project_id, address, reason, created_at)
SELECT {project}, 'user' || i || '@example.ru', 'жалоба', now()
FROM generate_series(1, $1) AS i WHERE i % 100 = 13
"""


# -- processes ---------------------------------------------------------------------------------


def peak_rss_mb(pid: int) -> float | None:
    """A process's peak resident memory (VmHWM), MB; None if it cannot be read."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far; 0 if it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def api_process(workdir: Path, env: dict[str, str]) -> Iterator[tuple[str, int]]:
    """``rassylka api`` on 127.0.0.1 and a free port: its base URL and pid; stopped on exit."""
    port = free_port()
    log = (workdir / "api.log").open("wb")
    process = subprocess.Popen(
        [str(RASSYLKA), "api", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                call(base, "GET", "/health")
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("rassylka api did not start; see its log") from None
                time.sleep(0.1)
        yield base, process.pid
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- the tick, in a process of its own ---------------------------------------------------------


async def tick(database_url: str) -> dict[str, Any]:
    """One scheduler tick against ``database_url``: its seconds, the database's seconds per
    statement kind, and the PostgreSQL backends that served it."""
    from sqlalchemy import event, text

    import rassylka.models  # noqa: F401  (every table, for the metadata's foreign keys)
    from rassylka.db import create_engine, create_sessionmaker
    from rassylka.engine.scheduler import Scheduler

    engine = create_engine(database_url)
    spent: dict[str, float] = {}
    began: dict[int, float] = {}

    def kind(statement: str) -> str:
        flat = " ".join(statement.split()).lower()
        if "insert into message (" in flat:
            return "messages"
        if flat.startswith("insert into message_event"):
            return "events"
        if flat.startswith("update message"):
            return "window"
        return "other"

    def before(_conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        began[id(cursor)] = time.perf_counter()

    def after(_conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        elapsed = time.perf_counter() - began.pop(id(cursor), time.perf_counter())
        spent[kind(statement)] = spent.get(kind(statement), 0.0) + elapsed

    backends = text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
    try:
        async with engine.connect() as connection:
            cpu_before = {pid: cpu_seconds(pid) for pid in await connection.scalars(backends)}
        event.listen(engine.sync_engine, "before_cursor_execute", before)
        event.listen(engine.sync_engine, "after_cursor_execute", after)
        started = time.perf_counter()
        runs = await Scheduler(create_sessionmaker(engine)).tick()
        seconds = time.perf_counter() - started
        event.remove(engine.sync_engine, "before_cursor_execute", before)
        event.remove(engine.sync_engine, "after_cursor_execute", after)
        # While the tick's connections are still open: their server processes' CPU and peaks.
        async with engine.connect() as connection:
            pids = list(await connection.scalars(backends))
        peaks = [peak for pid in pids if (peak := peak_rss_mb(pid)) is not None]
        cpu = sum(cpu_seconds(pid) - cpu_before.get(pid, 0.0) for pid in pids)
    finally:
        await engine.dispose()
    return {
        "seconds": seconds,
        "runs": runs,
        "spent": spent,
        "backend_rss": max(peaks),
        "backend_cpu": cpu,
    }


def tick_in_child(database_url: str) -> dict[str, Any]:
    """Run ``tick`` in a fresh process (so its peak RSS is this size's alone) and read, while
    it waits, the peak RSS of the PostgreSQL backends it used."""
    child = subprocess.Popen(
        [sys.executable, __file__, "--tick", database_url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdin is not None
    line = child.stdout.readline()
    if not line:
        child.wait()
        raise RuntimeError(f"the tick's process failed ({child.returncode})")
    result: dict[str, Any] = json.loads(line)
    result["rss"] = peak_rss_mb(child.pid)
    child.stdin.close()  # it exits
    child.wait(timeout=30)
    return result


def child_main(database_url: str) -> None:
    """``--tick``: tick, print the result, then wait for the parent to read our VmHWM."""
    result = asyncio.run(tick(database_url))
    print(json.dumps(result), flush=True)
    sys.stdin.read()


# -- the database ------------------------------------------------------------------------------


async def sql(database_url: str, statement: str, *args: Any) -> Any:
    """The rows of one statement; a script of several (no arguments) returns none."""
    connection = await asyncpg.connect(dsn(database_url), timeout=10)
    try:
        if not args and ";" in statement:
            await connection.execute(statement)
            return []
        return await connection.fetch(statement, *args)
    finally:
        await connection.close()


async def server_settings(database_url: str) -> dict[str, str]:
    rows = await sql(
        database_url,
        "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY($1::text[])",
        list(SETTINGS),
    )
    return {row[0]: row[1] for row in rows}


def add_clients(database_url: str, project_id: int, count: int) -> None:
    asyncio.run(sql(database_url, CLIENTS_SQL.format(project=project_id), count))
    asyncio.run(sql(database_url, SUPPRESSIONS_SQL.format(project=project_id), count))
    asyncio.run(sql(database_url, "ANALYZE client; ANALYZE suppression"))


def reset(database_url: str) -> None:
    asyncio.run(sql(database_url, "TRUNCATE message_part, message, message_event, run; CHECKPOINT"))


# -- one size ----------------------------------------------------------------------------------


def measure(
    base: str, database_url: str, api_pid: int, count: int, runs: int, window: bool
) -> list[dict[str, Any]]:
    _, project_id, template_id = project_with_template(
        base, "Материализация", email_subject=SUBJECT, email_text=TEXT, email_html=HTML
    )
    started = time.perf_counter()
    add_clients(database_url, project_id, count)
    print(f"{count:,} clients inserted in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    results = []
    for _ in range(runs):
        mailing = call(
            base,
            "POST",
            "/mailing/create",
            {
                "name": "Весенние новости",
                "project_id": project_id,
                "template_id": template_id,
                "status": 1,
                "channels": ["email"],
                "event": "2020-01-01",
                **({"send_window": SHUT_WINDOW} if window else {}),
            },
        )
        result = tick_in_child(database_url)
        result["api_rss"] = peak_rss_mb(api_pid)
        made = asyncio.run(
            sql(database_url, "SELECT count(*) FROM message WHERE mailing_id = $1", mailing["id"])
        )[0][0]
        if len(result["runs"]) != 1 or made != count:
            raise RuntimeError(f"expected one run of {count} messages: {result['runs']}, {made}")
        spent = result["spent"]
        print(
            f"{count:,}: {result['seconds']:.2f} s (messages {spent.get('messages', 0):.2f} s, "
            f"events {spent.get('events', 0):.2f} s), database CPU {result['backend_cpu']:.2f} s, "
            f"tick RSS {result['rss']:.0f} MB",
            file=sys.stderr,
        )
        results.append(result)
        reset(database_url)
    return results


# -- main --------------------------------------------------------------------------------------


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--tick":
        child_main(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="clients, comma-separated")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES)
    parser.add_argument(
        "--window",
        action="store_true",
        help="the mailing has a send window shut everywhere: every message waits for it",
    )
    options = parser.parse_args()
    sizes = [int(size.replace("_", "")) for size in options.sizes.split(",")]
    measured: dict[int, list[dict[str, Any]]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="rassylka-bench-") as scratch,
        scratch_database(options.postgres_url) as database_url,
    ):
        env = {**os.environ, "RASSYLKA_DATABASE_URL": database_url}
        subprocess.run(
            [str(RASSYLKA), "db", "upgrade"], env=env, check=True, stdout=subprocess.DEVNULL
        )
        settings = asyncio.run(server_settings(database_url))
        version = asyncio.run(postgres(options.postgres_url))
        with api_process(Path(scratch), env) as (base, api_pid):
            for count in sizes:
                measured[count] = measure(
                    base, database_url, api_pid, count, options.runs, options.window
                )

    print(
        f"\nMaterialising a run on PostgreSQL {version} ({os.cpu_count()} CPUs; "
        + ", ".join(f"{name} {value}" for name, value in settings.items())
        + f"), median of {options.runs}"
        + (f"; send window {SHUT_WINDOW['start']}–{SHUT_WINDOW['end']}" if options.window else "")
        + "\n"
    )
    header = (
        f"{'messages':>10}{'seconds':>9}{'msg/s':>10}{'messages s':>12}{'events s':>10}"
        f"{'other s':>9}{'db CPU s':>10}   {'peak RSS MB: tick':>17}{'api':>6}{'postgres':>10}"
    )
    print(header)
    print("-" * len(header))
    for count, results in measured.items():

        def median(key: str, results: list[dict[str, Any]] = results) -> float:
            return statistics.median(float(r["spent"].get(key, 0.0)) for r in results)

        seconds = statistics.median(r["seconds"] for r in results)
        other = median("other") + median("window")
        print(
            f"{count:>10,}{seconds:>9.2f}{count / seconds:>10,.0f}{median('messages'):>12.2f}"
            f"{median('events'):>10.2f}{other:>9.2f}"
            f"{statistics.median(r['backend_cpu'] for r in results):>10.2f}   "
            f"{max(r['rss'] for r in results):>17.0f}{max(r['api_rss'] for r in results):>6.0f}"
            f"{max(r['backend_rss'] for r in results):>10.0f}"
        )
        print(f"{'':>10}runs: " + ", ".join(f"{r['seconds']:.2f}" for r in results))
    largest = max(measured)
    seconds = statistics.median(r["seconds"] for r in measured[largest])
    per_million = seconds * TARGET_MESSAGES / largest
    peaks = [max(r["rss"] for r in measured[count]) for count in sorted(measured)]
    flat = "flat" if peaks[-1] - peaks[0] <= FLAT_MB else "NOT flat"
    print(
        f"\nseconds per 1M messages ÷ 10 s target: {per_million:.2f} s ÷ {TARGET_SECONDS:.0f} s"
        f" = {per_million / TARGET_SECONDS:.2f} (target ≤ 1; {largest:,} measured); "
        f"peak RSS of the tick {', '.join(f'{p:.0f}' for p in peaks)} MB: {flat}"
        f" (target ≤ 250 MB)"
    )


if __name__ == "__main__":
    main()
