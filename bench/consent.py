"""Materialising a run with consent and a frequency cap: what an advertising mailing and a
project's cap add to a run of 100k clients.

What it does, on PostgreSQL (a scratch database of its own, created and dropped):

1. migrates it and starts ``rassylka api``; per size, a project and a template through the
   API, and the clients straight in SQL, as ``materialize.py`` does (its mix: 0.5 % without
   an email, 1 % opted out, 1 % suppressed), half of them with email consent granted;
2. per mode, ``--runs`` times, from the same state: an earlier email run to every client
   (made by a scheduler tick, its messages then marked ``sent``: the day's traffic a cap
   counts), the project's cap set or cleared through the API, an email mailing of the mode's
   kind created through the API, and one timed ``Scheduler.tick()`` in a fresh process (the
   real path: run, ``INSERT … SELECT``, the skipped ones' events). Then ``message``, events
   and runs are emptied and a ``CHECKPOINT`` taken. The modes:

   - ``service``: no cap (the baseline: the cap's query is not even built);
   - ``advertising``: half the audience skipped for no consent;
   - ``service, cap 2``: every client's count of the day read (one earlier message each),
     none reaching the cap: the pure cost of counting;
   - ``service, cap 1``: the same count, every client with an email at the cap (skipped,
     with their creation events);
   - ``advertising, cap 2``: both conditions;

3. prints per size and mode the median seconds, messages/s, the CPU time of the PostgreSQL
   backends that served the tick (steadier than wall time on a shared machine), each over the
   baseline's, and the queued/skipped counts; last the judged figure: the counting cap's
   seconds over the baseline's at the largest size (target ≤ 1.5: a cap may cost at most half
   a run more).

    .venv/bin/python bench/consent.py [--sizes 10000,100000] [--runs 3] [--postgres-url URL]

``--sizes 1000 --runs 1`` is the tiny mode.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from materialize import (
    DEFAULT_POSTGRES,
    RASSYLKA,
    add_clients,
    api_process,
    reset,
    server_settings,
    sql,
    tick_in_child,
)

from peers import HTML, SUBJECT, TEXT, call, postgres, project_with_template, scratch_database

TARGET_RATIO = 1.5
MODES: dict[str, tuple[str, int | None]] = {
    "service": ("service", None),
    "advertising": ("advertising", None),
    "service, cap 2": ("service", 2),
    "service, cap 1": ("service", 1),
    "advertising, cap 2": ("advertising", 2),
}
BASELINE = "service"
JUDGED = "service, cap 2"
# Half the clients consent to advertising by email.
CONSENT_SQL = (
    "UPDATE client SET email_consent = 'granted', email_consent_at = now(),"
    " email_consent_source = 'bench' WHERE project_id = $1 AND id % 2 = 0"
)


def mailing(base: str, project_id: int, template_id: int, kind: str) -> int:
    created = call(
        base,
        "POST",
        "/mailing/create",
        {
            "name": f"Новости ({kind})",
            "project_id": project_id,
            "template_id": template_id,
            "status": 1,
            "channels": ["email"],
            "kind": kind,
            "event": "2020-01-01",
        },
    )
    return int(created["id"])


def counts(database_url: str, mailing_id: int) -> dict[str, int]:
    rows = asyncio.run(
        sql(
            database_url,
            "SELECT status, count(*) FROM message WHERE mailing_id = $1 GROUP BY status",
            mailing_id,
        )
    )
    return {row[0]: row[1] for row in rows}


def measure(base: str, database_url: str, count: int, runs: int) -> dict[str, list[dict[str, Any]]]:
    _, project_id, template_id = project_with_template(
        base, "Согласие", email_subject=SUBJECT, email_text=TEXT, email_html=HTML
    )
    add_clients(database_url, project_id, count)
    asyncio.run(sql(database_url, CONSENT_SQL, project_id))
    asyncio.run(sql(database_url, "ANALYZE client"))
    results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    for _ in range(runs):
        for mode, (kind, cap) in MODES.items():
            call(base, "PUT", f"/project/{project_id}/update", {"frequency_cap": {"email": None}})
            earlier = mailing(base, project_id, template_id, "service")
            tick_in_child(database_url)
            asyncio.run(
                sql(
                    database_url,
                    "UPDATE message SET status = 'sent' WHERE mailing_id = $1"
                    " AND status = 'queued'",
                    earlier,
                )
            )
            asyncio.run(sql(database_url, "ANALYZE message; ANALYZE run"))
            call(base, "PUT", f"/project/{project_id}/update", {"frequency_cap": {"email": cap}})
            measured = mailing(base, project_id, template_id, kind)
            result = tick_in_child(database_url)
            result["counts"] = counts(database_url, measured)
            if sum(result["counts"].values()) != count:
                raise RuntimeError(f"expected {count} messages: {result['counts']}")
            print(
                f"{count:,} {mode}: {result['seconds']:.2f} s {result['counts']}", file=sys.stderr
            )
            results[mode].append(result)
            reset(database_url)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="clients, comma-separated")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES)
    options = parser.parse_args()
    sizes = [int(size.replace("_", "")) for size in options.sizes.split(",")]
    measured: dict[int, dict[str, list[dict[str, Any]]]] = {}
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
        with api_process(Path(scratch), env) as (base, _):
            for count in sizes:
                measured[count] = measure(base, database_url, count, options.runs)

    print(
        f"\nMaterialising an email run with consent and caps on PostgreSQL {version}"
        f" ({os.cpu_count()} CPUs; "
        + ", ".join(f"{name} {value}" for name, value in settings.items())
        + f"), median of {options.runs}; an earlier run to every client the same day\n"
    )
    header = (
        f"{'messages':>10}  {'mode':<20}{'seconds':>9}{'msg/s':>10}{'× service':>11}"
        f"{'db CPU s':>10}{'× service':>11}{'queued':>9}{'skipped':>9}"
    )
    print(header)
    print("-" * len(header))
    for count, by_mode in measured.items():
        base_seconds = statistics.median(r["seconds"] for r in by_mode[BASELINE])
        base_cpu = statistics.median(r["backend_cpu"] for r in by_mode[BASELINE]) or 0.01
        for mode, results in by_mode.items():
            seconds = statistics.median(r["seconds"] for r in results)
            cpu = statistics.median(r["backend_cpu"] for r in results)
            last = results[-1]["counts"]
            print(
                f"{count:>10,}  {mode:<20}{seconds:>9.2f}{count / seconds:>10,.0f}"
                f"{seconds / base_seconds:>11.2f}{cpu:>10.2f}{cpu / base_cpu:>11.2f}"
                f"{last.get('queued', 0):>9,}{last.get('skipped', 0):>9,}"
            )
    largest = max(measured)
    judged = statistics.median(r["seconds"] for r in measured[largest][JUDGED])
    baseline = statistics.median(r["seconds"] for r in measured[largest][BASELINE])
    print(
        f"\ncap's seconds ÷ no cap's ({largest:,} messages): {judged:.2f} s ÷ {baseline:.2f} s"
        f" = {judged / baseline:.2f} (target ≤ {TARGET_RATIO})"
    )


if __name__ == "__main__":
    main()
