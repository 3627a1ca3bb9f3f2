"""Every benchmark in ``bench/`` runs in a tiny mode here, so none can rot: it must finish and
print the figure it is judged by. (The figures themselves are not checked: benchmarks are not
timed tests.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import POSTGRES_URL, PostgresServer, require_postgres
from helpers import missing_peer

BENCH = Path(__file__).resolve().parent.parent / "bench"
POSTFIX_TOOLS = ("/usr/sbin/smtp-sink", "/usr/sbin/smtp-source")
NO_DATABASE = {"smtp_transport.py", "compose.py", "dkim_sign.py"}


@pytest.mark.parametrize(
    ("script", "arguments", "last_figure"),
    [
        ("email_e2e.py", ["--tiny"], "ratio (rassylka ÷ smtp-source)"),
        ("dispatch.py", ["--messages", "200", "--budget", "5"], "÷ transport"),
        (
            "import_clients.py",
            ["--rows", "500", "--total", "1000", "--per-request", "500"],
            "target: 1,000,000 in ≤ 60 s",
        ),
        ("stream_latency.py", ["--events", "10", "--streams", "1"], "median ms"),
        ("smtp_transport.py", ["--messages", "300", "--repeat", "1"], "SmtpChannel, composing"),
        ("compose.py", ["--messages", "200"], "direct"),
        ("dkim_sign.py", ["--messages", "5", "--rounds", "1"], "sign ÷ compose"),
        ("api_load.py", ["--tiny"], "creates/s ÷ 2,000"),
        ("schedule_latency.py", ["--tiny"], "p99 ÷ 1 s"),
        ("sms_e2e.py", ["--tiny"], "messages/s with every receipt recorded"),
        ("materialize.py", ["--sizes", "1000", "--runs", "1"], "seconds per 1M messages ÷ 10 s"),
        ("consent.py", ["--sizes", "1000", "--runs", "1"], "cap's seconds ÷ no cap's"),
    ],
)
def test_a_benchmark_runs_in_its_tiny_mode(
    postgres: PostgresServer, script: str, arguments: list[str], last_figure: str
) -> None:
    require_postgres(postgres)
    if script in ("email_e2e.py", "dispatch.py", "smtp_transport.py") and not all(
        os.access(tool, os.X_OK) for tool in POSTFIX_TOOLS
    ):
        missing_peer("Postfix's smtp-sink and smtp-source are not installed")
    if script == "sms_e2e.py" and (
        shutil.which("node") is None
        or not (BENCH.parent / "tests" / "peers" / "node_modules" / "smpp").is_dir()
    ):
        missing_peer("node and npm's smpp are not installed (tests/peers/install.sh)")
    if script not in NO_DATABASE:
        arguments = [*arguments, "--postgres-url", POSTGRES_URL]
    run = subprocess.run(
        [sys.executable, str(BENCH / script), *arguments],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=BENCH.parent,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert last_figure in run.stdout, run.stdout[-3000:]
