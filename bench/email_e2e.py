"""Email end to end, against the physical limit measured in the same run.

What it does, on PostgreSQL (a scratch database of its own, created and dropped):

1. starts Postfix's ``smtp-sink`` on 127.0.0.1 (it counts every message it receives);
2. the yardstick: ``smtp-source -d -s 4 -m N -l 1000`` into the same sink, ``--runs`` times —
   Postfix's own load generator, the fastest this machine sends SMTP;
3. starts ``rassylka api`` and ``--workers`` ``rassylka worker`` processes (their SMTP transport
   aimed at the sink), and through the public API creates a project, a template (Cyrillic
   subject, text and HTML, with ``{{ first_name }}``) and imports N clients;
4. ``--runs`` times: creates a mailing to all of them through the API, due at once, and times
   it from the create request until every message's row is ``sent`` (the scheduler's run,
   materialising, claiming, rendering, sending, recording — all of it); the sink must have got
   exactly N more messages (none lost, none twice);
5. prints the medians, the peak memory (VmHWM) of every process, and last the ratio: the
   engine's median msg/s over smtp-source's.

    .venv/bin/python bench/email_e2e.py [--messages N] [--runs R] [--workers W]
                                        [--pool-size P] [--postgres-url URL]

``--tiny`` runs a few hundred messages once (the test suite runs it so the script cannot rot).
Everything it starts is stopped, and the scratch database dropped, on any exit.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from peers import (
    HTML,
    SMTP_SINK,
    SMTP_SOURCE,
    SUBJECT,
    TEXT,
    Sink,
    call,
    cpu_by_process,
    cpu_per_message,
    free_port,
    import_clients,
    project_with_template,
    scratch_database,
)

DEFAULT_POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
START_TIMEOUT = 30.0
STATS_EVERY = 3.0
"""Seconds between looks at the mailing's stats while the sink is still counting."""
RASSYLKA = Path(sys.executable).with_name("rassylka")


# -- processes ---------------------------------------------------------------------------------


class Processes:
    """The service's processes, their logs in ``workdir``; all stopped on exit."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = env
        self.running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("wb")
        process = subprocess.Popen(
            [str(RASSYLKA), *args], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        self.running.append((name, process))
        return process

    def peak_rss_mb(self) -> dict[str, float]:
        """Each live process's peak resident memory (VmHWM), MB."""
        peaks = {}
        for name, process in self.running:
            try:
                status = Path(f"/proc/{process.pid}/status").read_text()
            except FileNotFoundError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    peaks[name] = int(line.split()[1]) / 1024
        return peaks

    def stop(self) -> None:
        for _, process in self.running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, process in self.running:
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                print(f"note: {name} did not stop in 40 s; killed", file=sys.stderr)
                process.kill()
                process.wait()


# -- the API -----------------------------------------------------------------------------------


def wait_for_api(base: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            call(base, "GET", "/health")
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("rassylka api did not start; see its log") from None
            time.sleep(0.1)


def arrange(base: str, count: int) -> tuple[int, int]:
    """A project, a template and ``count`` clients, through the API; project and template ids."""
    code, project_id, template_id = project_with_template(
        base, "Бенчмарк", email_subject=SUBJECT, email_text=TEXT, email_html=HTML
    )
    import_clients(base, code, count, client)
    return project_id, template_id


def client(i: int) -> dict[str, Any]:
    return {
        "guid": f"c{i}",
        "first_name": f"Имя{i}",
        "last_name": "Петров",
        "email": f"user{i}@example.ru",
    }


def all_sent(base: str, mailing_id: int, count: int) -> bool:
    total = call(base, "GET", f"/mailing/{mailing_id}/stats")["total"]
    by_status = total["by_status"]
    unexpected = set(by_status) - {"queued", "sending", "sent"}
    if unexpected:
        raise RuntimeError(f"messages ended otherwise than sent: {by_status}")
    return int(by_status.get("sent", 0)) == count


# -- measurements ------------------------------------------------------------------------------


def smtp_source(sink: Sink, count: int) -> float:
    """One yardstick run: msg/s of smtp-source into the sink (checked at the sink)."""
    before = sink.messages()
    started = time.perf_counter()
    subprocess.run(
        [SMTP_SOURCE, "-d", "-s", "4", "-m", str(count), "-l", "1000", f"127.0.0.1:{sink.port}"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    elapsed = time.perf_counter() - started
    wait_for_sink(sink, before + count)
    return count / elapsed


def wait_for_sink(sink: Sink, expected: int, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while sink.messages() < expected and time.monotonic() < deadline:
        time.sleep(0.01)
    if sink.messages() != expected:
        raise RuntimeError(f"the sink counted {sink.messages()} messages, expected {expected}")


def engine_run(base: str, sink: Sink, project_id: int, template_id: int, count: int) -> float:
    """One mailing to every client: msg/s from its create request to every row ``sent``."""
    before = sink.messages()
    started = time.perf_counter()
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
        },
    )
    # The sink's counter file is read until it has every message (cheap); the mailing's stats,
    # a query over all its messages that would take CPU from the run, only every few seconds
    # meanwhile (to stop on a failure), then often once the sink has them all.
    stats_due = time.perf_counter() + STATS_EVERY
    while sink.messages() < before + count:
        if time.perf_counter() >= stats_due:
            all_sent(base, mailing["id"], count)  # raises if a message ended otherwise
            stats_due = time.perf_counter() + STATS_EVERY
        time.sleep(0.005)
    while not all_sent(base, mailing["id"], count):
        time.sleep(0.005)
    elapsed = time.perf_counter() - started
    wait_for_sink(sink, before + count)  # exactly N more: none lost, none twice
    return count / elapsed


# -- the scratch database ----------------------------------------------------------------------


# -- main --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--pool-size", type=int, default=16)
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES)
    parser.add_argument("--tiny", action="store_true", help="a few hundred messages, once")
    options = parser.parse_args()
    if options.tiny:
        options.messages, options.runs = 300, 1
    for tool in (SMTP_SINK, SMTP_SOURCE):
        if not os.access(tool, os.X_OK):
            sys.exit(f"{tool} is missing: install Debian's postfix (tests/peers/install.sh)")
    count = options.messages
    cpu: list[dict[str, float]] = []
    with (
        tempfile.TemporaryDirectory(prefix="rassylka-bench-") as scratch,
        scratch_database(options.postgres_url) as database_url,
    ):
        workdir = Path(scratch)
        os.chmod(workdir, 0o755)
        sink = Sink(workdir)
        port = free_port()
        env = {
            **os.environ,
            "RASSYLKA_DATABASE_URL": database_url,
            "RASSYLKA_SMTP_HOST": "127.0.0.1",
            "RASSYLKA_SMTP_PORT": str(sink.port),
            "RASSYLKA_SMTP_POOL_SIZE": str(options.pool_size),
            "RASSYLKA_EMAIL_CONCURRENCY": str(options.pool_size),
            "RASSYLKA_MAX_BODY_BYTES": str(64 * 1024 * 1024),
            "RASSYLKA_OUTBOX_DIR": str(workdir / "outbox"),
        }
        processes = Processes(workdir, env)
        try:
            subprocess.run(
                [str(RASSYLKA), "db", "upgrade"], env=env, check=True, stdout=subprocess.DEVNULL
            )
            source = [smtp_source(sink, count) for _ in range(options.runs)]
            print(
                f"smtp-source: {', '.join(f'{rate:,.0f}' for rate in source)} msg/s",
                file=sys.stderr,
            )
            api = processes.start("api", "api", "--port", str(port))
            base = f"http://127.0.0.1:{port}"
            wait_for_api(base, api)
            for number in range(options.workers):
                processes.start(f"worker{number + 1}", "worker")
            started = time.perf_counter()
            project_id, template_id = arrange(base, count)
            print(
                f"imported {count:,} clients through the API in "
                f"{time.perf_counter() - started:.1f} s",
                file=sys.stderr,
            )
            engine = []
            for _ in range(options.runs):
                pids = {name: process.pid for name, process in processes.running}
                pids |= {"smtp-sink": sink.process.pid, "benchmark": os.getpid()}
                before = cpu_by_process(pids, database_url)
                engine.append(engine_run(base, sink, project_id, template_id, count))
                cpu.append(cpu_per_message(before, cpu_by_process(pids, database_url), count))
                print(
                    f"engine: {engine[-1]:,.0f} msg/s; CPU µs/message: "
                    + ", ".join(f"{name} {value:.0f}" for name, value in cpu[-1].items())
                    + f"; all {sum(cpu[-1].values()):.0f}",
                    file=sys.stderr,
                )
            peaks = processes.peak_rss_mb()
        finally:
            processes.stop()
            sink.stop()
    source_median = statistics.median(source)
    engine_median = statistics.median(engine)
    print(
        f"\nEmail end to end on PostgreSQL: {count:,} messages per run, {options.runs} runs, "
        f"{options.workers} worker process(es), SMTP pool {options.pool_size} "
        f"({os.cpu_count()} CPUs)\n"
    )
    print(f"{'phase':<40}{'median msg/s':>14}{'runs':>28}")
    print("-" * 82)
    print(
        f"{'smtp-source -d -s 4 -l 1000 → smtp-sink':<40}{source_median:>14,.0f}"
        f"{', '.join(f'{r:,.0f}' for r in source):>28}"
    )
    print(
        f"{'rassylka: mailing create → all sent':<40}{engine_median:>14,.0f}"
        f"{', '.join(f'{r:,.0f}' for r in engine):>28}"
    )
    print(
        "CPU µs per message, median of the runs (from the create request to all sent; "
        "PostgreSQL: the database's backends): "
        + ", ".join(
            f"{name} {statistics.median(run.get(name, 0.0) for run in cpu):.0f}" for name in cpu[0]
        )
    )
    print("\npeak RSS (VmHWM): " + ", ".join(f"{n} {mb:.0f} MB" for n, mb in peaks.items()))
    print("the sink counted exactly N more messages after every run: none lost, none twice")
    print(f"\nratio (rassylka ÷ smtp-source): {engine_median / source_median:.3f}  (target ≥ 0.50)")


if __name__ == "__main__":
    main()
