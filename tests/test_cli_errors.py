"""An error no command handles itself (the database unreachable, a bad ``RASSYLKA_*``
setting) is one line and an exit code, not a traceback — for the old commands too. Run as a
real process: the guard is in ``main``, which the CliRunner does not go through."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cli_console import free_port


def _run(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("RASSYLKA_")}
    return subprocess.run(
        [sys.executable, "-m", "rassylka", *args],
        cwd=cwd,
        env={**clean, "NO_COLOR": "1", "COLUMNS": "200", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_an_unreachable_database_is_one_line_and_exit_3(tmp_path: Path) -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nothing"
    result = _run("apikey", "list", cwd=tmp_path, RASSYLKA_DATABASE_URL=url)
    assert result.returncode == 3, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("Ошибка: не удалось подключиться: ")
    assert "Traceback" not in result.stderr


def test_a_bad_setting_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = _run("apikey", "list", cwd=tmp_path, RASSYLKA_SMTP_PORT="двадцать пять")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().startswith("Ошибка: неверные настройки: smtp_port: ")
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_traceback_is_there_when_asked_for(tmp_path: Path) -> None:
    result = _run("apikey", "list", cwd=tmp_path, RASSYLKA_SMTP_PORT="x", RASSYLKA_TRACEBACK="1")
    assert result.returncode == 1
    assert "ValidationError" in result.stderr
