"""What the console-command tests share: the command invoked in a thread (it runs its own
event loop, while the test's loop serves the API), its output wide enough not to wrap."""

from __future__ import annotations

import asyncio
import socket

from click.testing import Result
from typer.testing import CliRunner

from rassylka.cli import app
from rassylka.console import commands

WIDTH = 200


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run ``rassylka *args``, its tables 200 columns wide (at the default 80 a cell's text
    wraps and can't be matched)."""
    for console in (commands.out, commands.err):
        console.width = WIDTH
    try:
        return CliRunner(env={"NO_COLOR": "1", **(env or {})}).invoke(app, list(args))
    finally:
        for console in (commands.out, commands.err):
            console._width = None


async def invoke_async(*args: str, env: dict[str, str] | None = None) -> Result:
    return await asyncio.to_thread(invoke, *args, env=env)


def free_port() -> int:
    """A port nothing listens on (it was free a moment ago)."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = int(probe.getsockname()[1])
    probe.close()
    return port


def channel_counts(stdout: str, channel: str) -> list[int]:
    """One channel's column of ``mailing watch``'s table (statuses down, channels across), in
    the order of ``watching.STATUSES``, then the channel's total (the last table drawn)."""
    from rassylka.console.watching import CHANNELS, STATUSES
    from rassylka.messages.models import STATUS_NAMES, MessageStatus

    column = 1 + CHANNELS.index(channel)
    cells: dict[str, int] = {}
    for line in stdout.splitlines():
        parts = [part.strip() for part in line.strip().strip("│┃").split("│")]
        if len(parts) == len(CHANNELS) + 2 and parts[column].isdigit():
            cells[parts[0]] = int(parts[column])
    return [cells[STATUS_NAMES[MessageStatus(status)]] for status in STATUSES] + [cells["всего"]]
