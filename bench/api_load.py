"""The API under load: ``POST /client/create`` from a separate process.

On a scratch PostgreSQL database it starts ``rassylka api`` (one uvicorn process, as a
deployment would run it) and, from this process, with one keep-alive HTTP client:

1. **throughput**: ``--concurrency`` requests in flight for ``--seconds``: creates/s, and the
   latency of each (p50, p99);
2. **latency at a fixed rate**: an open-loop load of ``--rate`` requests/s for ``--seconds`` —
   each request starts at its scheduled moment whether or not earlier ones have answered, and
   its latency counts from that moment (so a server that falls behind shows it, instead of the
   load slowing down with it).

Every answer must be 201. Targets from the performance issue: ≥ 2,000 creates/s on 2 cores,
p99 ≤ 50 ms at 500 requests/s. The load generator shares the machine's CPUs with the server
and PostgreSQL.

    .venv/bin/python bench/api_load.py [--seconds S] [--concurrency C] [--rate R]
                                       [--postgres-url URL] [--tiny]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from email_e2e import DEFAULT_POSTGRES, RASSYLKA, Processes, call, scratch_database, wait_for_api

from peers import free_port


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Load:
    def __init__(self, base: str, project: str) -> None:
        self.base = base
        self.project = project
        self.sequence = 0
        self.failures: list[str] = []

    def body(self) -> dict[str, object]:
        self.sequence += 1
        n = self.sequence
        return {
            "project": self.project,
            "guid": f"load-{n}",
            "first_name": "Иван",
            "last_name": "Иванов",
            "middle_name": "Иванович",
            "phone": f"+7916{n % 10_000_000:07d}",
            "email": f"user{n}@example.ru",
        }

    async def one(self, client: httpx.AsyncClient, started: float) -> float:
        response = await client.post("/client/create", json=self.body())
        if response.status_code != 201:
            self.failures.append(f"{response.status_code} {response.text[:200]}")
        return time.perf_counter() - started

    async def closed_loop(self, concurrency: int, seconds: float) -> tuple[float, list[float]]:
        latencies: list[float] = []
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=self.base, limits=limits, timeout=30) as client:
            deadline = time.perf_counter() + seconds

            async def worker() -> None:
                while time.perf_counter() < deadline:
                    latencies.append(await self.one(client, time.perf_counter()))

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.perf_counter() - started
        return len(latencies) / elapsed, latencies

    async def open_loop(self, rate: float, seconds: float) -> tuple[float, list[float]]:
        count = int(rate * seconds)
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        async with httpx.AsyncClient(base_url=self.base, limits=limits, timeout=30) as client:
            start = time.perf_counter()
            tasks = []
            for i in range(count):
                moment = start + i / rate
                delay = moment - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(self.one(client, moment)))
            latencies = list(await asyncio.gather(*tasks))
            elapsed = time.perf_counter() - start
        return count / elapsed, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--api-workers", type=int, default=1, help="rassylka api --workers")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES)
    parser.add_argument("--tiny", action="store_true", help="one second, light load")
    options = parser.parse_args()
    if options.tiny:
        options.seconds, options.concurrency, options.rate = 1.0, 4, 50.0
    with (
        tempfile.TemporaryDirectory(prefix="rassylka-bench-") as scratch,
        scratch_database(options.postgres_url) as database_url,
    ):
        env = {**os.environ, "RASSYLKA_DATABASE_URL": database_url}
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
            call(base, "POST", "/project/create", {"name": "Нагрузка", "code": code})
            load = Load(base, code)
            throughput, closed = asyncio.run(load.closed_loop(options.concurrency, options.seconds))
            achieved, opened = asyncio.run(load.open_loop(options.rate, options.seconds))
            peaks = processes.peak_rss_mb()
        finally:
            processes.stop()
    if load.failures:
        sys.exit(f"{len(load.failures)} requests failed, e.g. {load.failures[0]}")
    ms = 1000.0
    print(
        f"\nPOST /client/create against `rassylka api --workers {options.api_workers}` on "
        f"PostgreSQL "
        f"({os.cpu_count()} CPUs, the load generator on the same machine)\n"
    )
    print(f"{'load':<36}{'requests':>10}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    print("-" * 76)
    print(
        f"{f'{options.concurrency} in flight, {options.seconds:.0f} s':<36}{len(closed):>10,}"
        f"{throughput:>10,.0f}{statistics.median(closed) * ms:>10.1f}"
        f"{percentile(closed, 0.99) * ms:>10.1f}"
    )
    print(
        f"{f'open loop at {options.rate:,.0f}/s, {options.seconds:.0f} s':<36}{len(opened):>10,}"
        f"{achieved:>10,.0f}{statistics.median(opened) * ms:>10.1f}"
        f"{percentile(opened, 0.99) * ms:>10.1f}"
    )
    print("\npeak RSS (VmHWM): " + ", ".join(f"{n} {mb:.0f} MB" for n, mb in peaks.items()))
    print(
        f"\ncreates/s ÷ 2,000 (target ≥ 1): {throughput / 2000:.3f}; "
        f"p99 at {options.rate:,.0f}/s: {percentile(opened, 0.99) * ms:.1f} ms (target ≤ 50)"
    )


if __name__ == "__main__":
    main()
