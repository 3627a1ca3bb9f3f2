"""How fast the SMTP transport alone gets pre-composed messages to Postfix's smtp-sink.

    .venv/bin/python bench/smtp_transport.py [--messages N] [--pool-size 16] [--size 1000]
                                             [--loops asyncio,uvloop]

Each row sends N messages of about ``--size`` bytes (composed and flattened once, beforehand)
to a fresh ``smtp-sink -c`` on 127.0.0.1 over ``--pool-size`` connections, each connection
driven by its own task taking the next message as soon as it is free, as the channel's pool is:

- ``aiosmtplib``: the transport's old hot path, ``SMTP.mail`` / ``rcpt`` / ``data`` (one
  command a round trip);
- ``pipelined``: ``SmtpClient.send`` (MAIL, RCPT and DATA in one write, the body the second);
- ``SmtpChannel``: the whole transport, building each message's MIME too (``compose`` and
  ``flatten``), which is what it costs per message in the engine.

smtp-sink's own count is checked after every run. Rows run under the standard asyncio loop
and, where importable, uvloop (``--loops``); each row ``--repeat`` times (3), printing the
median msg/s and the best. The ratio is each row's median over the aiosmtplib row's on the
same loop.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import aiosmtplib

from peers import Sink
from rassylka.channels.base import ChannelKind, OutboundMessage
from rassylka.channels.email_message import compose
from rassylka.channels.smtp import SmtpChannel, SmtpConfig
from rassylka.channels.smtp_client import ClientConfig, SmtpClient

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
SENDER = "Рассылка <rassylka@example.ru>"
COUNTERS = re.compile(rb"sess=(\d+) quit=(\d+) mesg=(\d+)\r")


LINE = "Здравствуйте! Это письмо проверяет скорость.\n"


def outbound(number: int, lines: int) -> OutboundMessage:
    return OutboundMessage(
        id=number,
        kind=ChannelKind.EMAIL,
        to=f"user-{number}@example.ru",
        subject=f"Письмо №{number}",
        text=LINE * lines,
    )


def lines_for(size: int) -> int:
    """How many lines of text make a message of about ``size`` bytes as flattened (the
    ``email`` package chooses base64 for Cyrillic text, so not a simple division)."""

    def flattened(lines: int) -> int:
        return len(compose(outbound(0, lines), sender=SENDER).as_bytes(eight_bit=True))

    return min(range(size // 40 + 1), key=lambda lines: abs(flattened(lines) - size))


Send = Callable[[int], Awaitable[None]]
Run = Callable[[int], Coroutine[Any, Any, float]]
"""Sends every message to smtp-sink on the port given; the seconds it took."""


async def drive(pool_size: int, count: int, connect: Callable[[], Awaitable[Send]]) -> float:
    """Seconds to send ``count`` messages from ``pool_size`` tasks, one connection each."""
    senders = [await connect() for _ in range(pool_size)]
    numbers: Iterator[int] = iter(range(count))

    async def work(send: Send) -> None:
        for number in numbers:
            await send(number)

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for send in senders:
            group.create_task(work(send))
    return time.perf_counter() - started


async def run_aiosmtplib(port: int, pool: int, datas: list[bytes], rcpts: list[str]) -> float:
    clients: list[aiosmtplib.SMTP] = []

    async def connect() -> Send:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await client.connect()
        await client.ehlo()
        clients.append(client)

        async def send(number: int) -> None:
            await client.mail("rassylka@example.ru", options=["BODY=8BITMIME"])
            await client.rcpt(rcpts[number])
            await client.data(datas[number])

        return send

    try:
        return await drive(pool, len(datas), connect)
    finally:
        for client in clients:
            await client.quit()


async def run_pipelined(port: int, pool: int, datas: list[bytes], rcpts: list[str]) -> float:
    clients: list[SmtpClient] = []

    async def connect() -> Send:
        client = SmtpClient(ClientConfig("127.0.0.1", port))
        await client.ensure_connected()
        assert client.supports("PIPELINING")
        clients.append(client)

        async def send(number: int) -> None:
            await client.send(
                "rassylka@example.ru", rcpts[number], datas[number], options="BODY=8BITMIME"
            )

        return send

    try:
        return await drive(pool, len(datas), connect)
    finally:
        for client in clients:
            await client.quit()


async def run_channel(port: int, pool: int, messages: list[OutboundMessage]) -> float:
    channel = SmtpChannel(SmtpConfig(host="127.0.0.1", port=port, pool_size=pool, sender=SENDER))
    try:
        await channel.send(messages[:pool])  # open the pool's connections, untimed
        started = time.perf_counter()
        # Many concurrent tasks over the pool, as the dispatcher's senders are.
        batch = 4 * pool
        sending = messages[pool:]
        for start in range(0, len(sending), batch):
            await channel.send(sending[start : start + batch])
        return time.perf_counter() - started
    finally:
        await channel.close()


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if name == "asyncio":
        return None
    import uvloop  # optional: its rows are skipped without it

    return uvloop.new_event_loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--pool-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=1000, help="bytes a message, about")
    parser.add_argument("--loops", default="asyncio,uvloop")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each row")
    options = parser.parse_args()
    if not os.access(SMTP_SINK, os.X_OK):
        sys.exit("smtp-sink (Debian package postfix) is not installed")

    count, pool = options.messages, options.pool_size
    lines = lines_for(options.size)
    messages = [outbound(number, lines) for number in range(count)]
    composed = [compose(message, sender=SENDER) for message in messages]
    datas = [email.as_bytes(eight_bit=True) for email in composed]
    rcpts = [email.recipient for email in composed]
    print(
        f"SMTP transport alone to smtp-sink: {count:,} messages of {len(datas[0]):,} bytes,"
        f" {pool} connections ({os.cpu_count()} CPUs)\n"
    )
    print(f"{'loop':<9} {'client':<30} {'msg/s':>8} {'best':>8} {'÷ aiosmtplib':>13}")
    print("-" * 72)
    composing = min(count, 5000)
    # (label, run, messages sent, messages timed): the channel's first ``pool`` open the pool.
    rows: list[tuple[str, Run, int, int]] = [
        (
            "aiosmtplib (one command a RTT)",
            lambda port: run_aiosmtplib(port, pool, datas, rcpts),
            count,
            count,
        ),
        (
            "pipelined SmtpClient",
            lambda port: run_pipelined(port, pool, datas, rcpts),
            count,
            count,
        ),
        # Composing costs milliseconds a message: a share of the messages tells as much.
        (
            "SmtpChannel, composing",
            lambda port: run_channel(port, pool, messages[:composing]),
            composing,
            composing - pool,
        ),
    ]
    with tempfile.TemporaryDirectory(prefix="smtp-bench-") as scratch:
        os.chmod(scratch, 0o777)  # smtp-sink runs as nobody under root
        for name in options.loops.split(","):
            try:
                factory = loop_factory(name)
            except ImportError:
                print(f"{name:<9} not installed, skipped")
                continue
            baseline: float | None = None
            for label, run, sent, timed in rows:
                rates = sorted(
                    timed / one_run(Path(scratch), factory, run, sent, label)
                    for _ in range(options.repeat)
                )
                best, median = rates[-1], rates[len(rates) // 2]
                baseline = baseline or median
                print(
                    f"{name:<9} {label:<30} {median:>8,.0f} {best:>8,.0f}"
                    f" {median / baseline:>13.2f}"
                )


def one_run(
    scratch: Path,
    factory: Callable[[], asyncio.AbstractEventLoop] | None,
    run: Run,
    sent: int,
    label: str,
) -> float:
    """Seconds of one run against a fresh smtp-sink, whose count must be ``sent``."""
    sink = Sink(scratch)
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            seconds = runner.run(run(sink.port))
        deadline = time.monotonic() + 5
        while sink.messages() < sent and time.monotonic() < deadline:
            time.sleep(0.05)
        received = sink.messages()
    finally:
        sink.stop()
    if received != sent:
        sys.exit(f"{label}: smtp-sink counted {received:,} of {sent:,}")
    return seconds


if __name__ == "__main__":
    main()
