"""Scheduled time → first message at the SMTP server: how late a scheduled mailing starts.

What it does, on PostgreSQL (a scratch database of its own, created and dropped):

1. starts an SMTP server in this process (aiosmtpd, on 127.0.0.1) that notes the wall-clock
   moment each message's DATA ends and the mailing it belongs to (the template's subject is
   ``L{{ mailing.id }}``);
2. starts ``rassylka api`` and ``--workers`` ``rassylka worker`` processes (SMTP aimed at it)
   and, through the public API, a project, the template and ``--clients`` clients;
3. ``--rounds`` times: creates ``--mailings`` mailings to all the clients, each with an
   ``event`` at a known instant ``--lead`` seconds ahead and ``--spacing`` seconds apart (the
   instants fall anywhere within a second, not on whole seconds), waits until all of them are
   sent, and for each takes the arrival of its first message minus its scheduled instant;
   from ``GET /mailing/{id}/runs`` it splits that into the scheduler's part (the run's
   ``started_at``, the moment of the tick that started it, minus the instant) and the rest
   (materialising, claiming, rendering, sending: first arrival minus ``started_at``);
4. prints p50/p99/max of each, and last the p99 over 1 s (the target is p99 ≤ 1 s).

    .venv/bin/python bench/schedule_latency.py [--mailings K] [--rounds R] [--clients C]
                                               [--lead S] [--spacing S] [--workers W]
                                               [--postgres-url URL]

``--tiny`` runs three mailings once (the test suite runs it so the script cannot rot).
Everything it starts is stopped, and the scratch database dropped, on any exit.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from email_e2e import RASSYLKA, Processes, client, wait_for_api

from peers import call, free_port, import_clients, project_with_template, scratch_database

DEFAULT_POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
TARGET = 1.0
SUBJECT_PREFIX = b"\nSubject: L"


class ArrivalLog:
    """An aiosmtpd handler: the first arrival (``time.time()``) of each mailing's messages."""

    def __init__(self) -> None:
        self.first: dict[int, float] = {}
        self.count = 0
        self._lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        arrived = time.time()
        content = envelope.original_content or b""
        start = content.find(SUBJECT_PREFIX)
        if start < 0:
            return "554 5.6.0 no Subject: L<mailing id>"
        start += len(SUBJECT_PREFIX)
        end = start
        while end < len(content) and content[end : end + 1].isdigit():
            end += 1
        mailing_id = int(content[start:end])
        with self._lock:
            self.count += 1
            self.first.setdefault(mailing_id, arrived)
        return "250 2.0.0 Ok: queued"


def percentile(values: list[float], share: float) -> float:
    """The ``share`` quantile (0–1) by linear interpolation between closest ranks."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = share * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def arrange(base: str, clients: int) -> tuple[int, int]:
    """A project, the template and ``clients`` clients, through the API."""
    code, project_id, template_id = project_with_template(
        base,
        "Задержка",
        email_subject="L{{ mailing.id }}",
        email_text="Здравствуйте, {{ first_name }}!",
    )
    import_clients(base, code, clients, client)
    return project_id, template_id


def one_round(
    base: str,
    log: ArrivalLog,
    *,
    project_id: int,
    template_id: int,
    mailings: int,
    clients: int,
    lead: float,
    spacing: float,
) -> list[tuple[float, float, float]]:
    """``mailings`` mailings due ``lead`` s ahead; per mailing (total, scheduler, sending)."""
    # Start a little off the whole second: a due time is a moment, not a tick of a clock.
    first = time.time() + lead
    first += 0.37 - (first % 1.0) if first % 1.0 < 0.37 else 1.37 - (first % 1.0)
    scheduled: dict[int, float] = {}
    for number in range(mailings):
        moment = first + number * spacing
        mailing = call(
            base,
            "POST",
            "/mailing/create",
            {
                "name": f"Задержка {number}",
                "project_id": project_id,
                "template_id": template_id,
                "status": 1,
                "channels": ["email"],
                "event": datetime.fromtimestamp(moment, UTC).isoformat(),
            },
        )
        scheduled[mailing["id"]] = moment
        if time.time() > moment:  # it would start "now", not at its instant
            raise RuntimeError(
                f"mailing {number} was created after its instant (the API answers slowly "
                f"here): give a longer --lead than {lead} s"
            )
    # Wait on the server's count, not the API: polling it would load the machine measured.
    expected = log.count + mailings * clients
    deadline = first + mailings * spacing + 60
    while log.count < expected:
        if time.time() > deadline:
            raise RuntimeError(f"{log.count} of {expected} messages arrived after 60 s")
        time.sleep(0.1)
    for mailing_id in scheduled:
        by_status = call(base, "GET", f"/mailing/{mailing_id}/stats")["total"]["by_status"]
        if by_status.get("sent", 0) != clients:  # the row may trail the server's 250 a moment
            time.sleep(1.0)
            by_status = call(base, "GET", f"/mailing/{mailing_id}/stats")["total"]["by_status"]
        if by_status != {"sent": clients}:
            raise RuntimeError(f"mailing {mailing_id}: {by_status}, expected {clients} sent")
    samples = []
    for mailing_id, moment in scheduled.items():
        (run,) = call(base, "GET", f"/mailing/{mailing_id}/runs")["items"]
        started = datetime.fromisoformat(run["started_at"]).timestamp()
        arrived = log.first[mailing_id]
        samples.append((arrived - moment, started - moment, arrived - started))
    return samples


def describe(name: str, values: list[float]) -> str:
    return (
        f"{name:<38}{percentile(values, 0.5) * 1000:>9.0f}"
        f"{percentile(values, 0.99) * 1000:>9.0f}{max(values) * 1000:>9.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mailings", type=int, default=40, help="mailings per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=20, help="recipients of each mailing")
    parser.add_argument("--lead", type=float, default=6.0, help="seconds from now to the first")
    parser.add_argument("--spacing", type=float, default=0.25, help="seconds between mailings")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES)
    parser.add_argument("--logs", type=Path, help="keep the processes' logs in this directory")
    parser.add_argument("--tiny", action="store_true", help="three mailings, once")
    options = parser.parse_args()
    if options.tiny:
        options.mailings, options.rounds, options.clients, options.lead = 3, 1, 2, 3.0
    log = ArrivalLog()
    smtp_port = free_port()
    controller = Controller(log, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    samples: list[tuple[float, float, float]] = []
    round_p99: list[float] = []
    try:
        with (
            tempfile.TemporaryDirectory(prefix="rassylka-bench-") as scratch,
            scratch_database(options.postgres_url) as database_url,
        ):
            workdir = options.logs or Path(scratch)
            workdir.mkdir(parents=True, exist_ok=True)
            port = free_port()
            env = {
                **os.environ,
                "RASSYLKA_DATABASE_URL": database_url,
                "RASSYLKA_SMTP_HOST": "127.0.0.1",
                "RASSYLKA_SMTP_PORT": str(smtp_port),
                "RASSYLKA_OUTBOX_DIR": str(workdir / "outbox"),
            }
            processes = Processes(workdir, env)
            try:
                subprocess.run(
                    [str(RASSYLKA), "db", "upgrade"],
                    env=env,
                    check=True,
                    stdout=subprocess.DEVNULL,
                )
                api = processes.start("api", "api", "--port", str(port))
                base = f"http://127.0.0.1:{port}"
                wait_for_api(base, api)
                for number in range(options.workers):
                    processes.start(f"worker{number + 1}", "worker")
                project_id, template_id = arrange(base, options.clients)
                for number in range(options.rounds):
                    found = one_round(
                        base,
                        log,
                        project_id=project_id,
                        template_id=template_id,
                        mailings=options.mailings,
                        clients=options.clients,
                        lead=options.lead,
                        spacing=options.spacing,
                    )
                    totals = [total for total, _, _ in found]
                    round_p99.append(percentile(totals, 0.99))
                    print(
                        f"round {number + 1}: p50 {percentile(totals, 0.5) * 1000:.0f} ms, "
                        f"p99 {round_p99[-1] * 1000:.0f} ms, max {max(totals) * 1000:.0f} ms",
                        file=sys.stderr,
                    )
                    samples.extend(found)
            finally:
                processes.stop()
    finally:
        controller.stop()
    if log.count != options.rounds * options.mailings * options.clients:
        expected = options.rounds * options.mailings * options.clients
        raise RuntimeError(f"the SMTP server got {log.count} messages, expected {expected}")
    totals = [total for total, _, _ in samples]
    print(
        f"\nScheduled time → first message at the SMTP server, PostgreSQL: {options.rounds} "
        f"round(s) of {options.mailings} mailings ({options.clients} recipients each, "
        f"{options.spacing} s apart, the first {options.lead} s ahead), {options.workers} worker "
        f"process(es) ({os.cpu_count()} CPUs)\n"
    )
    print(f"{'milliseconds':<38}{'p50':>9}{'p99':>9}{'max':>9}")
    print("-" * 65)
    print(describe("scheduled → the tick that started it", [s for _, s, _ in samples]))
    print(describe("that tick → first at the server", [d for _, _, d in samples]))
    print(describe("scheduled → first at the server", totals))
    print(
        "\np99 of each round: "
        + ", ".join(f"{value * 1000:.0f} ms" for value in round_p99)
        + f"; median {statistics.median(round_p99) * 1000:.0f} ms"
    )
    print(f"\np99 ÷ 1 s: {percentile(totals, 0.99) / TARGET:.3f}  (target ≤ 1)")


if __name__ == "__main__":
    main()
