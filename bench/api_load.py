"""The API under load: ``POST /client/create`` from a separate process.

On a scratch PostgreSQL database it starts ``rassylka api --workers N`` (default 2, one a core,
as a deployment would run it) and loads it from outside:

1. **throughput**: ``wrk`` (a Lua script gives every request its own guid) keeps
   ``--concurrency`` requests in flight for ``--seconds``: creates/s, p50, p99; without wrk,
   this process's own client does the same (``--generator python``);
2. **latency at a fixed rate**: an open-loop load of ``--rate`` requests/s for ``--seconds``
   from this process's lean HTTP/1.1 client — each request starts at its scheduled moment
   whether or not earlier ones have answered, and its latency counts from that moment (so a
   server that falls behind shows it, instead of the load slowing down with it).

Every answer must be 201, and the clients stored must match the answers. For each load it
also gives the CPU time per request of the API's processes and of PostgreSQL's backends: the
cost, which the other load on a shared machine hardly changes. Targets from the performance
issue: ≥ 2,000 creates/s on 2 cores, p99 ≤ 50 ms at 500 requests/s. The load generators share
the machine's CPUs with the server and PostgreSQL.

    .venv/bin/python bench/api_load.py [--seconds S] [--concurrency C] [--rate R]
                                       [--api-workers N] [--generator wrk|python]
                                       [--postgres-url URL] [--tiny] [--api-key]

``--api-key``: the API runs with a key and every request carries it (``Authorization:
Bearer``), the cost of ``AuthMiddleware`` included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg
from email_e2e import DEFAULT_POSTGRES, RASSYLKA, Processes, wait_for_api

from peers import call, dsn, free_port, scratch_database

WRK = shutil.which("wrk")
CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")
Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]
T = TypeVar("T")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


WRK_SCRIPT = r"""
-- POST /client/create with a unique guid per request: "<prefix>-<thread>-<n>".
local threads = {}
function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end
function init(args)
  project, prefix, sent, failed, first_failure = args[1], args[2], 0, 0, ""
  headers = {["Content-Type"] = "application/json"}
  if args[3] then headers["Authorization"] = "Bearer " .. args[3] end
end
function request()
  sent = sent + 1
  local body = string.format(
    '{"project":"%s","guid":"%s-%d-%d","first_name":"Иван","last_name":"Иванов",'
    .. '"middle_name":"Иванович","phone":"+7916%07d","email":"user%d.%d@example.ru"}',
    project, prefix, id, sent, (id * 1000003 + sent) % 10000000, id, sent)
  return wrk.format("POST", "/client/create", headers, body)
end
function response(status, headers, body)
  if status ~= 201 then
    failed = failed + 1
    if first_failure == "" then first_failure = status .. " " .. string.sub(body, 1, 200) end
  end
end
function done(summary, latency, requests)
  local failed_total, first = 0, ""
  for _, thread in ipairs(threads) do
    failed_total = failed_total + thread:get("failed")
    if first == "" then first = thread:get("first_failure") end
  end
  io.write(string.format(
    'WRK {"requests":%d,"seconds":%f,"p50":%f,"p99":%f,"socket_errors":%d,"failed":%d}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3,
    latency:percentile(99) / 1e3,
    summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout,
    failed_total))
  if first ~= "" then io.write("WRK-FAILURE " .. first .. "\n") end
end
"""


@dataclass
class Figures:
    requests: int
    rate: float
    p50_ms: float
    p99_ms: float

    @classmethod
    def of(cls, latencies: list[float], seconds: float) -> Figures:
        return cls(
            len(latencies),
            len(latencies) / seconds,
            statistics.median(latencies) * 1000,
            percentile(latencies, 0.99) * 1000,
        )


def wrk_closed_loop(
    base: str,
    project: str,
    concurrency: int,
    seconds: float,
    workdir: Path,
    key: str | None = None,
) -> tuple[Figures, list[str]]:
    """``wrk`` keeps ``concurrency`` connections busy for ``seconds`` (one thread: it needs a
    fraction of a core for a few thousand requests/s)."""
    script = workdir / "create.lua"
    script.write_text(WRK_SCRIPT)
    run = subprocess.run(
        [
            WRK,
            "-t1",
            f"-c{concurrency}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            base,
            "--",
            project,
            f"w{uuid.uuid4().hex[:6]}",
            *([key] if key else []),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(x for x in run.stdout.splitlines() if x.startswith("WRK "))
    result = json.loads(line[4:])
    failures = [x[12:] for x in run.stdout.splitlines() if x.startswith("WRK-FAILURE ")]
    if result["socket_errors"]:
        failures.append(f"{result['socket_errors']} socket errors (connect/read/write/timeout)")
    failures += [f"{result['failed']} answers were not 201"] if result["failed"] else []
    figures = Figures(
        requests=result["requests"],
        rate=result["requests"] / result["seconds"],
        p50_ms=result["p50"],
        p99_ms=result["p99"],
    )
    return figures, failures


def cpu_seconds(pids: set[int] | None = None, *, root: int | None = None) -> dict[int, float]:
    """CPU seconds (user + system) of ``pids`` or of ``root`` and all its descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    if root is not None:
        pids, grown = {root}, True
        while grown:
            found = {pid for pid, (parent, _) in stats.items() if parent in pids}
            grown = not found <= pids
            pids |= found
    return {pid: stats[pid][1] for pid in pids or () if pid in stats}


def spent(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


class CpuMeter:
    """CPU spent by the API's processes and by PostgreSQL's backends on the scratch database
    while a load runs: the cost per request, which the machine's other load hardly changes."""

    def __init__(self, api: int, database_url: str) -> None:
        self.api = api
        self.database_url = database_url

    def backends(self) -> set[int]:
        found = call_postgres(
            self.database_url,
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid()",
        )
        return {int(pid) for pid in found}

    def snapshot(self) -> tuple[dict[int, float], dict[int, float]]:
        return cpu_seconds(root=self.api), cpu_seconds(self.backends())

    def since(self, before: tuple[dict[int, float], dict[int, float]]) -> tuple[float, float]:
        api, database = self.snapshot()
        return spent(before[0], api), spent(before[1], database)


def call_postgres(url: str, query: str) -> list[Any]:
    async def fetch() -> list[Any]:
        connection = await asyncpg.connect(dsn(url), timeout=5)
        try:
            return [row[0] for row in await connection.fetch(query)]
        finally:
            await connection.close()

    return asyncio.run(fetch())


class FellBehind(Exception):
    """The open loop's requests still unanswered long after the last was sent."""


class Load:
    """A lean HTTP/1.1 load generator on keep-alive connections (asyncio streams, uvloop where
    installed): a fraction of httpx's CPU per request, so it takes less from the server."""

    def __init__(self, base: str, project: str, key: str | None = None) -> None:
        self.authorization = f"Authorization: Bearer {key}\r\n" if key else ""
        url = urlsplit(base)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self.project = project
        self.sequence = 0
        self.failures: list[str] = []

    def request(self) -> bytes:
        self.sequence += 1
        n = self.sequence
        body = json.dumps(
            {
                "project": self.project,
                "guid": f"load-{n}",
                "first_name": "Иван",
                "last_name": "Иванов",
                "middle_name": "Иванович",
                "phone": f"+7916{n % 10_000_000:07d}",
                "email": f"user{n}@example.ru",
            },
            ensure_ascii=False,
        ).encode()
        head = (
            f"POST /client/create HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{self.authorization}\r\n"
        )
        return head.encode() + body

    async def connections(self, count: int) -> asyncio.Queue[Connection]:
        idle: asyncio.Queue[Connection] = asyncio.Queue()
        for _ in range(count):
            idle.put_nowait(await asyncio.open_connection(self.host, self.port))
        return idle

    async def one(self, idle: asyncio.Queue[Connection], started: float) -> float:
        """One create on the next idle connection; its latency counts from ``started``."""
        reader, writer = await idle.get()
        writer.write(self.request())
        head = await reader.readuntil(b"\r\n\r\n")
        length = CONTENT_LENGTH.search(head)
        body = await reader.readexactly(int(length.group(1)) if length else 0)
        idle.put_nowait((reader, writer))
        if head[9:12] != b"201":
            self.failures.append(f"{head[9:12].decode()} {body[:200].decode(errors='replace')}")
        return time.perf_counter() - started

    async def closed_loop(self, concurrency: int, seconds: float) -> Figures:
        idle = await self.connections(concurrency)
        latencies: list[float] = []
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline:
                latencies.append(await self.one(idle, time.perf_counter()))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        await close(idle)
        return Figures.of(latencies, elapsed)

    async def open_loop(self, rate: float, seconds: float, connections: int) -> Figures:
        """``rate`` requests/s whether or not earlier ones have answered; a request waits for
        an idle connection if all are busy, and its latency counts from its scheduled moment
        (so a server that falls behind shows it instead of slowing the load down)."""
        idle = await self.connections(connections)
        count = int(rate * seconds)
        start = time.perf_counter()
        tasks = []
        for i in range(count):
            moment = start + i / rate
            delay = moment - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.one(idle, moment)))
        # Bounded: a server that cannot keep up fails the run instead of stalling it.
        _, pending = await asyncio.wait(tasks, timeout=seconds + 60)
        if pending:
            for task in pending:
                task.cancel()
            raise FellBehind(f"{len(pending):,} of {count:,} requests unanswered a minute after")
        latencies = [task.result() for task in tasks]
        elapsed = time.perf_counter() - start
        await close(idle)
        return Figures.of(latencies, elapsed)


async def close(idle: asyncio.Queue[Connection]) -> None:
    while not idle.empty():
        _, writer = idle.get_nowait()
        writer.close()
        await writer.wait_closed()


def per_request(cpu: tuple[float, float], figures: Figures) -> str:
    api, database = (seconds * 1000 / max(1, figures.requests) for seconds in cpu)
    return f"{api:>12.2f}{database:>11.2f}"


def run_fast(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--api-workers", type=int, default=2, help="rassylka api --workers")
    parser.add_argument(
        "--generator",
        choices=("wrk", "python"),
        default="wrk" if WRK else "python",
        help="closed loop: wrk (default where installed) or this process's own client",
    )
    parser.add_argument(
        "--open-connections", type=int, default=64, help="keep-alive connections, open loop"
    )
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES)
    parser.add_argument("--tiny", action="store_true", help="one second, light load")
    parser.add_argument(
        "--api-key",
        action="store_true",
        help="run with an API key (RASSYLKA_API_KEYS) and send it with every request",
    )
    options = parser.parse_args()
    if options.tiny:
        options.seconds, options.concurrency, options.rate = 1.0, 4, 50.0
    if options.generator == "wrk" and not WRK:
        parser.error("wrk is not installed (Debian package wrk; tests/peers/install.sh)")
    with (
        tempfile.TemporaryDirectory(prefix="rassylka-bench-") as scratch,
        scratch_database(options.postgres_url) as database_url,
    ):
        key = f"rsk_bench{uuid.uuid4().hex}" if options.api_key else None
        env = {**os.environ, "RASSYLKA_DATABASE_URL": database_url, "RASSYLKA_API_KEYS": key or ""}
        processes = Processes(Path(scratch), env)
        try:
            subprocess.run(
                [str(RASSYLKA), "db", "upgrade"], env=env, check=True, stdout=subprocess.DEVNULL
            )
            port = free_port()
            api = processes.start(
                "api", "api", "--port", str(port), "--workers", str(options.api_workers)
            )
            base = f"http://127.0.0.1:{port}"
            wait_for_api(base, api)
            code = f"l{uuid.uuid4().hex[:8]}"
            project = call(
                base, "POST", "/project/create", {"name": "Нагрузка", "code": code}, key=key
            )
            load = Load(base, code, key)
            meter = CpuMeter(api.pid, database_url)
            before = meter.snapshot()
            if options.generator == "wrk":
                closed, failures = wrk_closed_loop(
                    base, code, options.concurrency, options.seconds, Path(scratch), key
                )
                load.failures += failures
            else:
                closed = run_fast(load.closed_loop(options.concurrency, options.seconds))
            closed_cpu = meter.since(before)
            before = meter.snapshot()
            try:
                opened = run_fast(
                    load.open_loop(options.rate, options.seconds, options.open_connections)
                )
            except FellBehind as error:
                sys.exit(f"at {options.rate:,.0f}/s the server fell behind: {error}")
            opened_cpu = meter.since(before)
            peaks = processes.peak_rss_mb()
            listed = f"/client/list?project={project['id']}&limit=1"
            stored = call(base, "GET", listed, key=key)["total"]
        finally:
            processes.stop()
    if load.failures:
        sys.exit(f"{len(load.failures)} failures, e.g. {load.failures[0]}")
    answered = closed.requests + opened.requests
    # wrk stops with up to --concurrency requests unanswered, which the server still stores.
    if not answered <= stored <= answered + options.concurrency:
        sys.exit(f"{stored:,} clients stored for {answered:,} answers 201")
    print(
        f"\nPOST /client/create against `rassylka api --workers {options.api_workers}` on "
        f"PostgreSQL ({os.cpu_count()} CPUs; the load generators on the same machine)\n"
    )
    print(
        f"{'load':<44}{'requests':>10}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}"
        f"{'API CPU ms':>12}{'DB CPU ms':>11}"
    )
    print("-" * 107)
    label = f"{options.generator}, {options.concurrency} in flight, {options.seconds:.0f} s"
    print(
        f"{label:<44}{closed.requests:>10,}{closed.rate:>10,.0f}"
        f"{closed.p50_ms:>10.1f}{closed.p99_ms:>10.1f}{per_request(closed_cpu, closed)}"
    )
    label = f"python, open loop at {options.rate:,.0f}/s, {options.seconds:.0f} s"
    print(
        f"{label:<44}{opened.requests:>10,}{opened.rate:>10,.0f}"
        f"{opened.p50_ms:>10.1f}{opened.p99_ms:>10.1f}{per_request(opened_cpu, opened)}"
    )
    print(
        "\nAPI / DB CPU ms: CPU time of the API's processes / of PostgreSQL's backends on the"
        " bench database,\nper request (the cost; the machine's other load hardly changes it)"
    )
    print(f"clients stored: {stored:,} for {answered:,} answers 201 (wrk leaves a few unread)")
    print("peak RSS (VmHWM): " + ", ".join(f"{n} {mb:.0f} MB" for n, mb in peaks.items()))
    print(
        f"\ncreates/s ÷ 2,000 (target ≥ 1): {closed.rate / 2000:.3f}; "
        f"p99 at {options.rate:,.0f}/s: {opened.p99_ms:.1f} ms (target ≤ 50)"
    )


if __name__ == "__main__":
    main()
