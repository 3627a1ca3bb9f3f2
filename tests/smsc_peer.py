"""The test SMSC: ``tests/peers/smsc.js`` (npm's smpp server, on Node) on 127.0.0.1.

Its verdict depends on the destination's last two digits (``…11`` invalid destination, ``…22``
throttled, ``…55`` connection dropped; the full list is in smsc.js); it logs every PDU it sees
as a JSON line, which ``Smsc.events`` collects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from helpers import missing_peer
from rassylka.channels.smpp import SmppConfig

PEERS = Path(__file__).resolve().parent / "peers"
SYSTEM_ID, PASSWORD = "rassylka", "s3cret"

Event = dict[str, Any]


class Smsc:
    """``node smsc.js`` on 127.0.0.1: what it logged, and its process to signal."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port
        self.events: list[Event] = []
        assert process.stdout is not None
        self._collector = asyncio.create_task(self._collect(process.stdout))

    async def _collect(self, stdout: asyncio.StreamReader) -> None:
        async for line in stdout:
            self.events.append(json.loads(line))

    def of(self, event: str, **match: Any) -> list[Event]:
        return [
            e
            for e in self.events
            if e["event"] == event and all(e.get(key) == value for key, value in match.items())
        ]

    async def wait_for(self, condition: Callable[[], bool], within: float = 5.0) -> None:
        deadline = time.monotonic() + within
        while not condition():
            assert time.monotonic() < deadline, f"not seen within {within} s: {self.events[-5:]}"
            await asyncio.sleep(0.01)

    def config(self, **options: Any) -> SmppConfig:
        """How the service binds to this SMSC (sender "Rassylka"), with ``options`` over it."""
        return SmppConfig(
            **{
                "host": "127.0.0.1",
                "port": self.port,
                "system_id": SYSTEM_ID,
                "password": PASSWORD,
                "source_addr": "Rassylka",
                **options,
            }
        )

    def signal(self, number: int) -> None:
        self.process.send_signal(number)

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()
        self._collector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._collector


async def start_smsc(*, receipt_delay_ms: int = 10) -> Smsc:
    node = shutil.which("node")
    if node is None:
        missing_peer("node is not installed, so the test SMSC cannot run")
    if not (PEERS / "node_modules" / "smpp").is_dir():
        missing_peer("npm smpp is not installed in tests/peers")
    process = await asyncio.create_subprocess_exec(
        node,
        str(PEERS / "smsc.js"),
        "0",
        SYSTEM_ID,
        PASSWORD,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        # Every PDU logged, receipts 10 ms (``receipt_delay_ms``) after their answer, whatever
        # the environment says (the benchmarks' quiet mode is for bench/sms_e2e.py).
        env={**os.environ, "SMSC_LOG": "all", "SMSC_RECEIPT_DELAY_MS": str(receipt_delay_ms)},
    )
    assert process.stdout is not None
    try:
        first = json.loads(await asyncio.wait_for(process.stdout.readline(), 10))
    except BaseException:
        process.kill()
        await process.wait()
        raise
    assert first["event"] == "listening", first
    return Smsc(process, int(first["port"]))
