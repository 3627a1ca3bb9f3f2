"""The deployment files (``docker-compose.yml``, ``Dockerfile``) against the real command.

There is no Docker engine where the suite runs, so the images are not built here. Instead each
compose service's ``command`` runs as a real process with that service's ``environment``, only
the addresses changed to this machine's: the database URL to a new, empty PostgreSQL database
(the ``postgres`` service itself is not run; the test's PostgreSQL stands in for it), the SMTP
host and port to a real SMTP server (aiosmtpd) on 127.0.0.1, and ``--host``/``--port`` to
127.0.0.1 and a free port. The migration runs once, then the API and as many workers as the
file's ``replicas``, and a mailing created through the API arrives at the SMTP server, once per
recipient. The file is read with PyYAML, which ``uvicorn[standard]`` (a dependency) installs.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from conftest import PostgresServer, require_postgres
from rassylka.engine.worker import STOP_GRACE
from smtp_peer import SmtpPeer
from test_cli import START_TIMEOUT, _free_port

ROOT = Path(__file__).resolve().parent.parent
RASSYLKA = Path(sys.executable).with_name("rassylka")
# What the test points at this machine; every other variable is the file's own.
LOCAL = ("RASSYLKA_DATABASE_URL", "RASSYLKA_SMTP_HOST", "RASSYLKA_SMTP_PORT")


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def rassylka_commands() -> dict[str, list[str]]:
    """Every ``rassylka …`` command of the compose services and the Dockerfile's CMD."""
    commands = {
        name: service["command"]
        for name, service in compose()["services"].items()
        if isinstance(service.get("command"), list) and service["command"][:1] == ["rassylka"]
    }
    for keyword, rest in dockerfile():
        if keyword == "CMD":
            commands["Dockerfile CMD"] = json.loads(rest)
    return commands


def _env(service: dict[str, Any], **local: str) -> dict[str, str]:
    environment = {str(key): str(value) for key, value in service["environment"].items()}
    assert set(LOCAL) <= set(environment), "the test only replaces what the file sets"
    env = {key: value for key, value in os.environ.items() if not key.startswith("RASSYLKA_")}
    env.update(environment)
    env.update(local)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _local_argv(command: list[str], port: int) -> list[str]:
    """The service's command with its listening address made 127.0.0.1:``port``."""
    argv = [str(RASSYLKA) if command[0] == "rassylka" else command[0], *command[1:]]
    for option, value in (("--host", "127.0.0.1"), ("--port", str(port))):
        if option in argv:
            argv[argv.index(option) + 1] = value
    return argv


# -- the files agree with the command --------------------------------------------------------


def test_compose_has_postgres_a_one_shot_migration_the_api_and_workers() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "migrate", "api", "worker"}
    assert services["migrate"]["command"] == ["rassylka", "db", "upgrade"]
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker"):
        service = services[name]
        assert service["build"] == "."
        assert service["command"][:2] == ["rassylka", name]
        assert service["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"}
        }, "new code starts only after the migration"
        assert service["environment"] == services["migrate"]["environment"]
    url = services["api"]["environment"]["RASSYLKA_DATABASE_URL"]
    assert url.startswith("postgresql+asyncpg://"), "several processes need PostgreSQL"
    assert services["worker"]["deploy"]["replicas"] >= 2
    # Longer than the worker's own grace for sends in flight, so Docker does not kill it.
    grace = re.fullmatch(r"(\d+)s", services["worker"]["stop_grace_period"])
    assert grace is not None
    assert int(grace.group(1)) > STOP_GRACE


def test_the_dockerfile_installs_the_package_and_runs_the_api() -> None:
    instructions = dockerfile()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    assert any(k == "RUN" and "pip install ." in rest for k, rest in instructions)
    assert ("USER", "rassylka") in instructions, "not root"
    assert json.loads(dict(instructions)["CMD"])[:2] == ["rassylka", "api"]
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests"} <= set(ignored)


def test_every_command_in_the_files_is_one_the_cli_has() -> None:
    env = {**os.environ, "NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200"}
    listed = subprocess.run(
        [str(RASSYLKA), "--help"], env=env, capture_output=True, text=True, check=True
    ).stdout
    for name, command in rassylka_commands().items():
        words = command[1:]
        assert re.search(rf"^\W*{words[0]}\s", listed, re.MULTILINE), f"{name}: {words[0]}"
        path = words[: 2 if words[0] == "db" else 1]
        helped = subprocess.run(
            [str(RASSYLKA), *path, "--help"], env=env, capture_output=True, text=True
        )
        assert helped.returncode == 0, f"{name}: {shlex.join(command)}\n{helped.stderr}"
        for option in (word for word in words if word.startswith("--")):
            assert option in helped.stdout, f"{name}: {option} is not an option of {path}"


# -- the services run together -----------------------------------------------------------------


@pytest.fixture
def empty_database(postgres: PostgresServer) -> Iterator[str]:
    """A new PostgreSQL database without any schema, as the compose file's volume starts."""
    require_postgres(postgres)
    name = f"rassylka_deploy_{uuid.uuid4().hex[:12]}"
    asyncio.run(postgres.execute(f'CREATE DATABASE "{name}"'))
    try:
        yield postgres.database_url(name)
    finally:
        asyncio.run(postgres.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _stop(processes: list[tuple[str, subprocess.Popen[bytes]]], grace: float) -> dict[str, int]:
    """SIGTERM to each, as ``docker compose stop`` does; their exit codes."""
    for _, process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    codes = {}
    for name, process in processes:
        try:
            codes[name] = process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            codes[name] = process.wait()
    return codes


def _wait_for_health(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text(errors="replace")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"the api service did not answer /health:\n{log.read_text(errors='replace')}")


def _wait_for_line(log: Path, text: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while text not in log.read_text(errors="replace"):
        assert process.poll() is None, log.read_text(errors="replace")
        if time.monotonic() > deadline:
            pytest.fail(f"{log.name} never said {text!r}:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)


def test_the_compose_commands_deliver_a_mailing_on_postgresql(
    empty_database: str, smtp: SmtpPeer, tmp_path: Path
) -> None:
    services = compose()["services"]
    local = {
        "RASSYLKA_DATABASE_URL": empty_database,
        "RASSYLKA_SMTP_HOST": "127.0.0.1",
        "RASSYLKA_SMTP_PORT": str(smtp.port),
    }
    migrate = services["migrate"]
    migrated = subprocess.run(
        _local_argv(migrate["command"], 0),
        env=_env(migrate, **local),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    running: list[tuple[str, subprocess.Popen[bytes]]] = []
    logs: dict[str, Path] = {}

    def start(name: str, service: dict[str, Any]) -> subprocess.Popen[bytes]:
        logs[name] = tmp_path / f"{name}.log"
        with logs[name].open("wb") as log:
            process = subprocess.Popen(
                _local_argv(service["command"], port),
                env=_env(service, **local),
                cwd=tmp_path,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        running.append((name, process))
        return process

    try:
        api = start("api", services["api"])
        _wait_for_health(url, api, logs["api"])
        workers = [
            start(f"worker{number + 1}", services["worker"])
            for number in range(services["worker"]["deploy"]["replicas"])
        ]
        # Each worker is up (its signal handlers installed right after this line) before the
        # mailing, so the SIGTERM at the end finds them all running: one still importing when
        # a quick mailing ended was killed by the signal's default action (exit -15).
        for number, worker in enumerate(workers, start=1):
            _wait_for_line(logs[f"worker{number}"], "email → SmtpChannel", worker)

        # The api's health check, as Docker would run it (its port made this one).
        check = services["api"]["healthcheck"]["test"]
        assert check[0] == "CMD"
        argv = [sys.executable if check[1] == "python" else check[1], *check[2:]]
        argv = [word.replace(":8000/", f":{port}/") for word in argv]
        assert subprocess.run(argv, timeout=30).returncode == 0

        with httpx.Client(base_url=url, timeout=30) as client:
            project = client.post("/project/create", json={"name": "OCM", "code": "010"})
            assert project.status_code == 201, project.text
            project_id = project.json()["data"]["id"]
            template = client.post(
                "/template/create",
                json={
                    "project_id": project_id,
                    "name": "Новости",
                    "email_subject": "Здравствуйте, {{ first_name }}",
                    "email_text": "Новости проекта {{ project.name }}",
                },
            )
            assert template.status_code == 201, template.text
            clients = [
                {
                    "guid": f"c-{n}",
                    "first_name": f"Имя{n}",
                    "last_name": "Иванов",
                    "email": f"user{n}@example.ru",
                }
                for n in range(20)
            ]
            imported = client.post("/client/import", json={"project": "010", "clients": clients})
            assert imported.status_code == 201, imported.text
            mailing = client.post(
                "/mailing/create",
                json={
                    "name": "Новости",
                    "project_id": project_id,
                    "template_id": template.json()["data"]["id"],
                    "status": 1,
                    "channels": ["email"],
                    "event": "2020-08-02",
                },
            )
            assert mailing.status_code == 201, mailing.text
            mailing_id = mailing.json()["data"]["id"]
            deadline = time.monotonic() + 60
            while True:
                read = client.get(f"/mailing/{mailing_id}").json()["data"]
                if read["status"] == 3 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            stats = client.get(f"/mailing/{mailing_id}/stats").json()["data"]
        assert read["status"] == 3, (read, stats)
        assert stats["total"]["by_status"] == {"sent": 20}
        assert smtp.recipients() == {f"user{n}@example.ru": 1 for n in range(20)}
    finally:
        codes = _stop(running, grace=40)
    for name, code in codes.items():
        log = logs[name].read_text(errors="replace")
        if name == "api":
            # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught.
            assert code in (0, -signal.SIGTERM), f"api exited {code}:\n{log}"
            assert "Application shutdown complete." in log, log
        else:
            assert code == 0, f"{name} exited {code}:\n{log}"
            assert "email → SmtpChannel" in log, log
