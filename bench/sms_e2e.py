"""SMS end to end over SMPP, with every delivery receipt recorded; and receipt → live stream.

What it does, on PostgreSQL (a scratch database of its own, created and dropped):

1. starts the test SMSC (``tests/peers/smsc.js``, npm's smpp server on Node) on 127.0.0.1,
   quiet: it logs no PDU, counts what it sees, and sends each accepted submit_sm's DELIVRD
   receipt (deliver_sm) 10 ms after its submit_sm_resp;
2. the yardstick, ``--runs`` times: a minimal SMPP client in this process (one bind, N
   pre-encoded submit_sm written ``--window`` at a time, every receipt answered at once, no
   database) — how fast this SMSC takes submits and hands out receipts on this machine;
3. starts ``rassylka api`` and ``--workers`` ``rassylka worker`` processes (their SMPP
   transport bound to the SMSC, ``--window`` submits in flight, ``--concurrency`` senders),
   and through the public API creates a project, an SMS template (Cyrillic, one part, with
   ``{{ first_name }}``) and imports N clients with phone numbers;
4. ``--runs`` times: creates an SMS mailing to all of them through the API, due at once, and
   times it from the create request until every message is ``sent`` (submits/s: submitted and
   accepted, its row recorded) and until every message is ``delivered`` (receipts/s: each
   receipt stored, matched to its part and settled), watching the SMSC's counters and then
   the rows left rather than polling the mailing's stats (see ``watch``). Then checks the
   API's counts, and at the SMSC: exactly N
   submit_sm accepted, to N distinct numbers (none twice), N receipts sent and N acknowledged;
   in the database: N parts ``DELIVRD`` and no receipt left waiting;
5. receipt → live stream (``--latency-messages``, 0 skips it): the workers are replaced by one
   whose SMS rate is limited to ``--latency-rate`` per second (a steady mailing rather than a
   burst), a client holds ``GET /events?project_id=N`` open, and the SMSC logs the wall-clock
   moment it sends each receipt; for every message, the time from that moment to its
   ``delivered`` event on the stream (same machine, same clock): p50, p99 and max;
6. prints the medians, the peak memory (VmHWM) of every process, and last the judged figure:
   the engine's median messages/s with every receipt recorded (the slower of the two rates:
   until all ``delivered``) against the target of 5,000.

    .venv/bin/python bench/sms_e2e.py [--messages N] [--runs R] [--workers W] [--window K]
                                      [--concurrency C] [--latency-messages M]
                                      [--latency-rate R] [--postgres-url URL]

``--tiny`` runs a few hundred messages once (the test suite runs it so the script cannot rot).
Everything it starts is stopped, and the scratch database dropped, on any exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from email_e2e import RASSYLKA, Processes, wait_for_api

from peers import (
    call,
    cpu_by_process,
    cpu_per_message,
    dsn,
    free_port,
    import_clients,
    project_with_template,
    scratch_database,
)
from rassylka.channels.base import Accepted, ChannelKind, OutboundMessage
from rassylka.channels.smpp import (
    Command,
    DeliveryReceipt,
    Pdu,
    SmppChannel,
    SmppConfig,
    encode_pdu,
)
from rassylka.channels.sms_text import encode_sms

DEFAULT_POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
PEERS = Path(__file__).resolve().parent.parent / "tests" / "peers"
SYSTEM_ID, PASSWORD = "rassylka", "bench"
# One part in UCS-2 (at most 70 characters with the longest name below).
SMS_TEXT = "{{ first_name }}, весенние скидки до 30% — только до конца месяца!"
CHECK_TIMEOUT = 30.0
_HEADER = struct.Struct(">IIII")


def phone(i: int) -> str:
    """A distinct Russian mobile number per client; it ends in 00, which the SMSC accepts."""
    return f"+79{i:07d}00"


# -- the SMSC ----------------------------------------------------------------------------------


class Smsc:
    """``node tests/peers/smsc.js`` on 127.0.0.1, quiet; its counters on request, and the send
    time of each receipt once ``log_receipts`` is on."""

    def __init__(self) -> None:
        node = shutil.which("node")
        if node is None or not (PEERS / "node_modules" / "smpp").is_dir():
            sys.exit("node and npm's smpp are needed: run tests/peers/install.sh")
        self.process = subprocess.Popen(
            [node, str(PEERS / "smsc.js"), "0", SYSTEM_ID, PASSWORD],
            env={**os.environ, "SMSC_LOG": "none"},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        first = json.loads(self.process.stdout.readline() or b"{}")
        if first.get("event") != "listening":
            self.stop()
            raise RuntimeError(f"the SMSC did not start: {first}")
        self.port = int(first["port"])
        self.receipt_at: dict[str, float] = {}
        self._stats: list[dict[str, int]] = []
        self._stats_ready = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            event = json.loads(line)
            if event["event"] == "receipt":
                self.receipt_at[event["message_id"]] = event["at"] / 1000
            elif event["event"] == "stats":
                with self._stats_ready:
                    self._stats.append(event)
                    self._stats_ready.notify_all()

    def _command(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def stats(self) -> dict[str, int]:
        with self._stats_ready:
            seen = len(self._stats)
            self._command("stats")
            if not self._stats_ready.wait_for(lambda: len(self._stats) > seen, timeout=10):
                raise RuntimeError("the SMSC did not answer stats")
            return self._stats[-1]

    def reset(self) -> None:
        self._command("reset")

    def log_receipts(self, on: bool) -> None:
        self._command("log receipts" if on else "log none")

    def peak_rss_mb(self) -> float | None:
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except FileNotFoundError:
            return None
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return None

    def expect(self, count: int, seconds: float = CHECK_TIMEOUT) -> None:
        """The SMSC saw exactly ``count`` submits accepted, to ``count`` distinct numbers, and
        sent ``count`` receipts that were all acknowledged."""
        deadline = time.monotonic() + seconds
        while True:
            stats = self.stats()
            if stats["receipts_acked"] + stats["receipts_refused"] >= count:
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        wanted = {
            "accepted": count,
            "refused": 0,
            "destinations": count,
            "repeated": 0,
            "receipts": count,
            "receipts_acked": count,
            "receipts_refused": 0,
        }
        wrong = {key: stats[key] for key, value in wanted.items() if stats[key] != value}
        if stats["submits"] != count or wrong:
            raise RuntimeError(f"expected {count} of each at the SMSC, it counted {stats}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


# -- the yardstick: a minimal SMPP client ------------------------------------------------------


def _pdu(command: Command, sequence: int, params: dict[str, Any] | None = None) -> bytes:
    return encode_pdu(Pdu(command, sequence, params=params or {}))


async def minimal_client(port: int, count: int, window: int) -> tuple[float, float]:
    """Submit ``count`` pre-encoded one-part SMS to the SMSC with ``window`` in flight,
    answering every receipt; submits/s (until every submit_sm_resp) and receipts/s (until
    every receipt)."""
    text = encode_sms("Иван, весенние скидки до 30% — только до конца месяца!")
    message = next(iter(text.short_messages(reference=0)))
    submits = [
        _pdu(
            Command.SUBMIT_SM,
            n + 2,
            {
                "source_addr_ton": 5,
                "source_addr": "Rassylka",
                "dest_addr_ton": 1,
                "dest_addr_npi": 1,
                "destination_addr": phone(n)[1:],
                "registered_delivery": 1,
                "data_coding": text.data_coding,
                "short_message": message,
            },
        )
        for n in range(count)
    ]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        _pdu(
            Command.BIND_TRANSCEIVER,
            1,
            {"system_id": SYSTEM_ID, "password": PASSWORD, "interface_version": 0x34},
        )
    )
    answered = receipts = 0
    room = asyncio.Event()
    done_submitting = asyncio.get_running_loop().create_future()
    bound = asyncio.get_running_loop().create_future()
    started = 0.0
    submitted_at = 0.0

    async def read() -> float:
        nonlocal answered, receipts, submitted_at
        while True:
            head = await reader.readexactly(16)
            length, command, status, sequence = _HEADER.unpack(head)
            await reader.readexactly(length - 16)
            if command == Command.SUBMIT_SM_RESP:
                if status:
                    raise RuntimeError(f"submit_sm {sequence} refused: 0x{status:08X}")
                answered += 1
                room.set()
                if answered == count:
                    submitted_at = time.perf_counter()
                    done_submitting.set_result(None)
            elif command == Command.DELIVER_SM:
                writer.write(_pdu(Command.DELIVER_SM_RESP, sequence))
                receipts += 1
                if receipts == count:
                    return time.perf_counter()
            elif command == Command.ENQUIRE_LINK:
                writer.write(_pdu(Command.ENQUIRE_LINK_RESP, sequence))
            elif command == Command.BIND_TRANSCEIVER_RESP:
                if status:
                    raise RuntimeError(f"bind refused: 0x{status:08X}")
                bound.set_result(None)

    reading = asyncio.create_task(read())
    try:
        await asyncio.wait_for(asyncio.shield(bound), 10)
        started = time.perf_counter()
        sent = 0
        while sent < count:
            room.clear()
            batch = min(window - (sent - answered), count - sent)
            if batch > 0:
                writer.write(b"".join(submits[sent : sent + batch]))
                sent += batch
                await writer.drain()
            else:
                await room.wait()
        async with asyncio.timeout(120):
            await done_submitting
            finished = await reading
    finally:
        reading.cancel()
        writer.close()
    return count / (submitted_at - started), count / (finished - started)


# -- the transport alone ------------------------------------------------------------------------


async def transport_alone(
    port: int, count: int, window: int, concurrency: int
) -> tuple[float, float, float]:
    """``SmppChannel`` alone, no database: ``count`` messages sent one per ``send`` from
    ``concurrency`` tasks (as the dispatcher's senders do), receipts counted by a handler that
    stores nothing; submits/s (until every message is accepted), receipts/s, and this
    process's CPU time per message in µs (steadier than rates on a shared machine)."""
    receipts = 0
    all_receipts = asyncio.Event()

    async def on_receipt(receipt: DeliveryReceipt) -> None:
        nonlocal receipts
        receipts += 1
        if receipts == count:
            all_receipts.set()

    channel = SmppChannel(
        SmppConfig(
            host="127.0.0.1",
            port=port,
            system_id=SYSTEM_ID,
            password=PASSWORD,
            source_addr="Rassylka",
            window=window,
        ),
        on_receipt=on_receipt,
    )
    text = "Иван, весенние скидки до 30% — только до конца месяца!"
    messages = iter(
        OutboundMessage(id=n, kind=ChannelKind.SMS, to=phone(n), text=text) for n in range(count)
    )

    async def sender() -> None:
        for message in messages:
            [outcome] = await channel.send([message])
            if not isinstance(outcome, Accepted):
                raise RuntimeError(f"message {message.id}: {outcome}")

    try:
        started, cpu = time.perf_counter(), time.process_time()
        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(sender())
        submitted = time.perf_counter()
        async with asyncio.timeout(120):
            await all_receipts.wait()
        finished, cpu = time.perf_counter(), time.process_time() - cpu
    finally:
        await channel.close()
    return count / (submitted - started), count / (finished - started), cpu / count * 1e6


# -- the service -------------------------------------------------------------------------------


def arrange(base: str, count: int) -> tuple[int, int]:
    """A project, an SMS template and ``count`` clients with phones, through the API."""
    code, project_id, template_id = project_with_template(base, "Бенчмарк SMS", sms_text=SMS_TEXT)
    import_clients(
        base,
        code,
        count,
        lambda i: {
            "guid": f"c{i}",
            "first_name": f"Имя{i}",
            "last_name": "Петров",
            "phone": phone(i),
        },
    )
    return project_id, template_id


def create_mailing(base: str, project_id: int, template_id: int) -> int:
    mailing = call(
        base,
        "POST",
        "/mailing/create",
        {
            "name": "Весенние скидки",
            "project_id": project_id,
            "template_id": template_id,
            "status": 1,
            "channels": ["sms"],
            "event": "2020-01-01",
        },
    )
    return int(mailing["id"])


def counts(base: str, mailing_id: int) -> dict[str, int]:
    by_status = call(base, "GET", f"/mailing/{mailing_id}/stats")["total"]["by_status"]
    unexpected = set(by_status) - {"queued", "sending", "sent", "delivered"}
    if unexpected:
        raise RuntimeError(f"messages ended otherwise than delivered: {by_status}")
    return {status: int(number) for status, number in by_status.items()}


async def database_check(database_url: str, mailing_id: int, count: int) -> None:
    """``count`` parts of the mailing DELIVRD, and no receipt left waiting for its part."""
    connection = await asyncpg.connect(dsn(database_url))
    try:
        delivered = await connection.fetchval(
            "SELECT count(*) FROM message_part p JOIN message m ON m.id = p.message_id"
            " WHERE m.mailing_id = $1 AND p.state = 'DELIVRD'",
            mailing_id,
        )
        waiting = await connection.fetchval("SELECT count(*) FROM receipt")
        # Receipts written with the sent of their message, in one transaction: both events
        # of the message stamped by the one write.
        together = await connection.fetchval(
            "SELECT count(*) FROM message_event s JOIN message_event d"
            " ON d.message_id = s.message_id AND d.old_status = 'sent'"
            " AND d.created_at = s.created_at"
            " WHERE s.mailing_id = $1 AND s.status = 'sent' AND s.old_status = 'sending'",
            mailing_id,
        )
    finally:
        await connection.close()
    print(
        f"receipts written with the sent of their message: {together:,} of {count:,}",
        file=sys.stderr,
    )
    if delivered != count or waiting:
        raise RuntimeError(
            f"the database has {delivered} parts DELIVRD (expected {count}) and {waiting}"
            " receipts waiting (expected none)"
        )


def engine_run(
    base: str, smsc: Smsc, database_url: str, project_id: int, template_id: int, count: int
) -> tuple[float, float]:
    """One SMS mailing to every client: (submits/s until every row is sent, messages/s until
    every row is delivered), from its create request."""
    smsc.reset()
    started = time.perf_counter()
    mailing_id = create_mailing(base, project_id, template_id)
    sent_at, delivered_at = asyncio.run(watch(database_url, smsc, mailing_id, count))
    now = counts(base, mailing_id)
    if now.get("delivered", 0) != count:
        raise RuntimeError(f"the API counts {now} for the mailing, not {count} delivered")
    smsc.expect(count)
    asyncio.run(database_check(database_url, mailing_id, count))
    return count / (sent_at - started), count / (delivered_at - started)


async def watch(database_url: str, smsc: Smsc, mailing_id: int, count: int) -> tuple[float, float]:
    """When every message of the mailing was recorded ``sent``, and when every one
    ``delivered`` (``perf_counter`` moments).

    Watching must not cost what it measures: the mailing's stats (``GET /mailing/{id}/stats``
    reads every one of its rows) took ~20 ms of PostgreSQL's CPU per call with 20,000
    messages, ~200 µs per message at the rate it was polled, on the same two CPUs as the
    engine. So the SMSC's counters (a line on its stdin) say when all submits were accepted and
    all receipts acknowledged — a receipt is acknowledged after its transaction committed —
    and only then the database is asked, through the queue's index, how many rows are left.
    """
    connection = await asyncpg.connect(dsn(database_url))
    try:
        deadline = time.monotonic() + 600

        async def until(ready: Any, every: float) -> None:
            while not await ready():
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the mailing did not finish: the SMSC counted {smsc.stats()}"
                    )
                await asyncio.sleep(every)

        async def smsc_counted(key: str) -> bool:
            return smsc.stats()[key] >= count

        runs: list[int] = []

        async def left(*statuses: str) -> bool:
            if not runs:
                runs.extend(
                    row[0]
                    for row in await connection.fetch(
                        "SELECT id FROM run WHERE mailing_id = $1", mailing_id
                    )
                )
            return not await connection.fetchval(
                "SELECT count(*) FROM message WHERE run_id = ANY($1::bigint[])"
                " AND status = ANY($2::text[])",
                runs,
                list(statuses),
            )

        # The SMSC answers a stats line in its own loop: every 20 ms costs it little.
        await until(lambda: smsc_counted("accepted"), 0.02)
        await until(lambda: left("queued", "sending"), 0.005)
        sent_at = time.perf_counter()
        await until(lambda: smsc_counted("receipts_acked"), 0.02)
        await until(lambda: left("queued", "sending", "sent"), 0.005)
        return sent_at, time.perf_counter()
    finally:
        await connection.close()


# -- receipt → live stream ---------------------------------------------------------------------


async def stream_latency(
    base: str, database_url: str, smsc: Smsc, project_id: int, template_id: int, count: int
) -> tuple[list[float], list[float]]:
    """Seconds from the SMSC sending each receipt to its ``delivered`` event on the stream;
    and, of each, the part until the event was written (its ``created_at``, the moment its
    transaction began: the rest is the commit, the NOTIFY and the stream)."""
    arrivals: dict[str, float] = {}
    opened = asyncio.Event()
    smsc.receipt_at.clear()
    smsc.log_receipts(True)

    async def read(http: httpx.AsyncClient) -> None:
        async with http.stream("GET", "/events", params={"project_id": project_id}) as response:
            response.raise_for_status()
            event = None
            async for line in response.aiter_lines():
                now = time.time()
                opened.set()
                if line.startswith("event:"):
                    event = line.partition(":")[2].strip()
                elif line.startswith("data:") and event == "status":
                    data = json.loads(line.partition(":")[2])
                    if data["status"] == "delivered":
                        arrivals[data["peer_message_id"]] = now
                elif line == "":
                    event = None

    try:
        async with httpx.AsyncClient(base_url=base, timeout=None) as http:
            reader = asyncio.create_task(read(http))
            try:
                async with asyncio.timeout(30):
                    await opened.wait()
                mailing_id = await asyncio.to_thread(create_mailing, base, project_id, template_id)
                async with asyncio.timeout(60 + count / 50):
                    while len(arrivals) < count:
                        if reader.done():
                            reader.result()
                            raise RuntimeError("the stream ended early")
                        await asyncio.sleep(0.05)
            finally:
                reader.cancel()
    finally:
        smsc.log_receipts(False)
    await asyncio.sleep(0.2)  # the SMSC's last receipt lines
    missing = set(arrivals) - set(smsc.receipt_at)
    if missing:
        raise RuntimeError(f"{len(missing)} delivered events name no receipt the SMSC logged")
    connection = await asyncpg.connect(dsn(database_url))
    try:
        written = {
            row[0]: row[1]
            for row in await connection.fetch(
                "SELECT peer_message_id, extract(epoch FROM created_at)::float8"
                " FROM message_event WHERE mailing_id = $1 AND status = 'delivered'",
                mailing_id,
            )
        }
    finally:
        await connection.close()
    return (
        [arrivals[peer_id] - smsc.receipt_at[peer_id] for peer_id in arrivals],
        [written[peer_id] - smsc.receipt_at[peer_id] for peer_id in arrivals],
    )


async def transactions(database_url: str) -> int:
    """Transactions committed in the database so far (PostgreSQL's statistics, which lag a
    little: the polling of the run's counts included)."""
    connection = await asyncpg.connect(dsn(database_url))
    try:
        await connection.execute("SELECT pg_stat_force_next_flush()")
        return int(
            await connection.fetchval(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
            )
        )
    finally:
        await connection.close()


def cpu_of(processes: Processes, smsc: Smsc, database_url: str) -> dict[str, float]:
    """CPU seconds so far of the service's processes, the SMSC and the database's backends."""
    pids = {name: process.pid for name, process in processes.running if process.poll() is None}
    return cpu_by_process({**pids, "SMSC": smsc.process.pid}, database_url)


def percentile(ordered: list[float], share: float) -> float:
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


# -- main --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--window", type=int, default=200, help="submit_sm in flight (bind)")
    parser.add_argument("--concurrency", type=int, default=200, help="SMS senders per worker")
    parser.add_argument("--latency-messages", type=int, default=5_000)
    parser.add_argument("--latency-rate", type=float, default=500.0, help="SMS/s, latency phase")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES)
    parser.add_argument("--tiny", action="store_true", help="a few hundred messages, once")
    parser.add_argument(
        "--transport-only", action="store_true", help="the minimal client and SmppChannel only"
    )
    options = parser.parse_args()
    if options.tiny:
        options.messages, options.runs, options.latency_messages = 300, 1, 100
    count = options.messages
    smsc = Smsc()
    cpu: list[dict[str, float]] = []
    try:
        yardstick = []
        for _ in range(options.runs):
            smsc.reset()
            yardstick.append(asyncio.run(minimal_client(smsc.port, count, options.window)))
            smsc.expect(count)
        print(
            "minimal client: "
            + ", ".join(f"{s:,.0f} submits/s, {r:,.0f} receipts/s" for s, r in yardstick),
            file=sys.stderr,
        )
        alone = []
        for _ in range(options.runs):
            smsc.reset()
            alone.append(
                asyncio.run(transport_alone(smsc.port, count, options.window, options.concurrency))
            )
            smsc.expect(count)
        print(
            "SmppChannel alone: "
            + ", ".join(
                f"{s:,.0f} submits/s, {r:,.0f} receipts/s, {c:.0f} µs CPU/message"
                for s, r, c in alone
            ),
            file=sys.stderr,
        )
        if options.transport_only:
            return
        with (
            tempfile.TemporaryDirectory(prefix="rassylka-bench-") as scratch,
            scratch_database(options.postgres_url) as database_url,
        ):
            workdir = Path(scratch)
            port = free_port()
            env = {
                **os.environ,
                "RASSYLKA_DATABASE_URL": database_url,
                "RASSYLKA_SMPP_HOST": "127.0.0.1",
                "RASSYLKA_SMPP_PORT": str(smsc.port),
                "RASSYLKA_SMPP_SYSTEM_ID": SYSTEM_ID,
                "RASSYLKA_SMPP_PASSWORD": PASSWORD,
                "RASSYLKA_SMPP_SOURCE_ADDR": "Rassylka",
                "RASSYLKA_SMPP_WINDOW": str(options.window),
                "RASSYLKA_SMS_CONCURRENCY": str(options.concurrency),
                "RASSYLKA_MAX_BODY_BYTES": str(64 * 1024 * 1024),
                "RASSYLKA_OUTBOX_DIR": str(workdir / "outbox"),
            }
            processes = Processes(workdir, env)
            try:
                subprocess.run(
                    [str(RASSYLKA), "db", "upgrade"], env=env, check=True, stdout=subprocess.DEVNULL
                )
                api = processes.start("api", "api", "--port", str(port))
                base = f"http://127.0.0.1:{port}"
                wait_for_api(base, api)
                for number in range(options.workers):
                    processes.start(f"worker{number + 1}", "worker")
                started = time.perf_counter()
                project_id, template_id = arrange(base, count)
                print(
                    f"imported {count:,} clients through the API in "
                    f"{time.perf_counter() - started:.1f} s",
                    file=sys.stderr,
                )
                engine = []
                for _ in range(options.runs):
                    before = cpu_of(processes, smsc, database_url)
                    commits = asyncio.run(transactions(database_url))
                    engine.append(
                        engine_run(base, smsc, database_url, project_id, template_id, count)
                    )
                    cpu.append(
                        cpu_per_message(before, cpu_of(processes, smsc, database_url), count)
                    )
                    commits = asyncio.run(transactions(database_url)) - commits
                    print(
                        f"engine: {engine[-1][0]:,.0f} submits/s, {engine[-1][1]:,.0f} delivered/s;"
                        " CPU µs/message: "
                        + ", ".join(f"{name} {value:.0f}" for name, value in cpu[-1].items())
                        + f"; {commits / count * 1000:.0f} transactions per 1,000 messages",
                        file=sys.stderr,
                    )
                peaks = processes.peak_rss_mb()
                latencies: list[float] = []
                to_events: list[float] = []
                if options.latency_messages:
                    for name, process in processes.running:
                        if name.startswith("worker"):
                            process.send_signal(signal.SIGTERM)
                            process.wait(timeout=60)
                    processes.env = {**env, "RASSYLKA_SMS_RATE_LIMIT": str(options.latency_rate)}
                    processes.start("worker-latency", "worker")
                    # Its mailing goes to a project of its own with M clients (unless M is N).
                    latency_project, latency_template = (
                        (project_id, template_id)
                        if options.latency_messages == count
                        else arrange(base, options.latency_messages)
                    )
                    smsc.reset()
                    to_stream, to_event = asyncio.run(
                        stream_latency(
                            base,
                            database_url,
                            smsc,
                            latency_project,
                            latency_template,
                            options.latency_messages,
                        )
                    )
                    latencies, to_events = sorted(to_stream), sorted(to_event)
                    smsc.expect(options.latency_messages)
            finally:
                processes.stop()
        smsc_peak = smsc.peak_rss_mb()
    finally:
        smsc.stop()
    report(options, yardstick, alone, engine, cpu, peaks, smsc_peak, latencies, to_events)


def report(
    options: argparse.Namespace,
    yardstick: list[tuple[float, float]],
    alone: list[tuple[float, float, float]],
    engine: list[tuple[float, float]],
    cpu: list[dict[str, float]],
    peaks: dict[str, float],
    smsc_peak: float | None,
    latencies: list[float],
    to_events: list[float],
) -> None:
    count = options.messages
    print(
        f"\nSMS end to end over SMPP on PostgreSQL: {count:,} messages per run, {options.runs} "
        f"runs, {options.workers} worker process(es), window {options.window}, "
        f"{options.concurrency} senders ({os.cpu_count()} CPUs)\n"
    )
    print(f"{'phase':<46}{'median/s':>10}{'runs':>26}")
    print("-" * 82)
    rows = [
        ("minimal client → SMSC: submits", [s for s, _ in yardstick]),
        ("minimal client → SMSC: receipts", [r for _, r in yardstick]),
        ("SmppChannel alone (no database): submits", [s for s, _, _ in alone]),
        ("SmppChannel alone (no database): receipts", [r for _, r, _ in alone]),
        ("rassylka: create → all sent (submits)", [s for s, _ in engine]),
        ("rassylka: create → all delivered (receipts)", [r for _, r in engine]),
    ]
    for label, rates in rows:
        runs = ", ".join(f"{rate:,.0f}" for rate in rates)
        print(f"{label:<46}{statistics.median(rates):>10,.0f}{runs:>26}")
    print(
        "\nCPU time per message (median of the runs, all of each process's threads): "
        + ", ".join(
            f"{name} {statistics.median(run.get(name, 0.0) for run in cpu):.0f} µs"
            for name in cpu[0]
        )
    )
    memory = [f"{name} {mb:.0f} MB" for name, mb in peaks.items()]
    if smsc_peak is not None:
        memory.append(f"SMSC (node) {smsc_peak:.0f} MB")
    print("peak RSS (VmHWM): " + ", ".join(memory))
    print(
        "after every run: the SMSC accepted exactly N submit_sm to N distinct numbers and had"
        " N receipts acknowledged; the database has N parts DELIVRD and no receipt waiting"
    )
    if latencies:
        ms = [latency * 1000 for latency in latencies]
        written = [latency * 1000 for latency in to_events]
        print(
            f"\nreceipt sent by the SMSC → delivered event on GET /events, {len(ms):,} messages at"
            f" {options.latency_rate:,.0f} SMS/s: p50 {percentile(ms, 0.5):.1f} ms,"
            f" p99 {percentile(ms, 0.99):.1f} ms, max {ms[-1]:.1f} ms  (target p99 ≤ 200 ms)"
        )
        print(
            f"  of which until the event's transaction began: p50"
            f" {percentile(written, 0.5):.1f} ms, p99 {percentile(written, 0.99):.1f} ms"
        )
    delivered = statistics.median(r for _, r in engine)
    print(
        f"\nmessages/s with every receipt recorded: {delivered:,.0f}"
        f"  (÷ 5,000 target = {delivered / 5000:.3f}; "
        f"÷ minimal client = {delivered / statistics.median(r for _, r in yardstick):.3f})"
    )


if __name__ == "__main__":
    main()
