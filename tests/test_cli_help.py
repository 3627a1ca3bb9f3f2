"""Every command of ``rassylka``, old and new, says in ``--help`` what it does and shows an
example: the list is read from the app, so a command added later is checked too."""

from __future__ import annotations

from typing import Any

import pytest
import typer

from cli_console import invoke
from rassylka.cli import app


def _commands(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group under ``group`` (typer's click groups have ``commands``)."""
    found: list[tuple[str, ...]] = []
    for name, command in group.commands.items():
        found.append((*prefix, name))
        if hasattr(command, "commands"):
            found += _commands(command, (*prefix, name))
    return found


COMMANDS = _commands(typer.main.get_group(app))


def test_the_new_commands_are_there() -> None:
    assert {("client", "import"), ("mailing", "list"), ("mailing", "watch")} <= set(COMMANDS)
    assert {("send-test",), ("demo",), ("serve",), ("apikey", "create")} <= set(COMMANDS)


@pytest.mark.parametrize("command", [(), *COMMANDS], ids=lambda words: " ".join(words) or "-")
def test_help_has_a_description_and_an_example(command: tuple[str, ...]) -> None:
    result = invoke(*command, "--help", env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    example = [line for line in result.stdout.splitlines() if "Пример:" in line]
    assert example, result.stdout
    assert "rassylka " + (command[0] if command else "") in example[0]
    assert any("\u0400" <= char <= "\u04ff" for char in result.stdout.split("Пример:")[0])
