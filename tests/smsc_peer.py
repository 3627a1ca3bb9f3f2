"""The test SMSC: ``tests/peers/smsc.js`` (npm's smpp server, on Node) on 127.0.0.1.

Its verdict depends on the destination's last two digits (``…11`` invalid destination, ``…22``
throttled, ``…55`` connection dropped; the full list is in smsc.js); it logs every PDU it sees
as a JSON line, which ``Smsc.events`` collects. ``Smsc.send_mobile_originated`` makes it send
a text from a handset (an MO deliver_sm).
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
from rassylka.channels.sms_text import GSM7_DATA_CODING, UCS2_DATA_CODING, encode_sms

PEERS = Path(__file__).resolve().parent / "peers"
SYSTEM_ID, PASSWORD = "rassylka", "s3cret"

Event = dict[str, Any]


class Smsc:
    """``node smsc.js`` on 127.0.0.1: what it logged, and its process to signal."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port
        self.events: list[Event] = []
        self._tags = 0
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

    async def send_mobile_originated(
        self,
        *,
        source: str,
        destination: str,
        text: str,
        coding: str = "gsm7",
        source_ton: int = 1,
        in_payload: bool = False,
        within: float = 10.0,
    ) -> int | None:
        """Make the SMSC send a text from a handset (``source``, digits) to ``destination``
        (one of our senders), encoded in ``coding`` (``gsm7``, ``ucs2``, ``latin1``), in
        short_message or ``in_payload``; the deliver_sm_resp's command_status (None: the SMSC
        had no bound session)."""
        data_coding, octets = _encode_mobile_originated(text, coding)
        self._tags += 1
        tag = self._tags
        spec: dict[str, Any] = {
            "tag": tag,
            "source_addr": source,
            "source_addr_ton": source_ton,
            "destination_addr": destination,
            "data_coding": data_coding,
            "short_message": "" if in_payload else octets.hex(),
        }
        if in_payload:
            spec["message_payload"] = octets.hex()
        assert self.process.stdin is not None
        self.process.stdin.write(f"mo {json.dumps(spec)}\n".encode())
        await self.process.stdin.drain()
        await self.wait_for(lambda: bool(self.of("mo_resp", tag=tag)), within)
        status: int | None = self.of("mo_resp", tag=tag)[0]["status"]
        return status

    def signal(self, number: int) -> None:
        self.process.send_signal(number)

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()
        self._collector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._collector


def _encode_mobile_originated(text: str, coding: str) -> tuple[int, bytes]:
    if coding == "gsm7":
        encoded = encode_sms(text)
        assert encoded.coding == "gsm7", f"{text!r} is not GSM-7"
        return GSM7_DATA_CODING, b"".join(encoded.parts)
    if coding == "ucs2":
        return UCS2_DATA_CODING, text.encode("utf-16-be")
    if coding == "latin1":
        return 0x03, text.encode("latin-1")
    raise ValueError(f"unknown coding {coding!r}")


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
