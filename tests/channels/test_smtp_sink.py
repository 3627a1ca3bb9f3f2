"""The SMTP transport against Postfix's ``smtp-sink``, a real SMTP server none of us wrote.

``tests/channels/test_smtp.py`` covers the protocol details against aiosmtpd; this file adds
what smtp-sink is good at: volume, and a server that refuses, drops, hangs or dies at a chosen
command. smtp-sink (Postfix 3.7) is run as a subprocess on 127.0.0.1 with:

    -c          counters on stdout, ``sess=N quit=N mesg=N`` + CR, flushed at every session end
                and every "." (``mesg`` counts a message at its "." even if "." is then refused)
    -d TEMPLATE one file per message (TEMPLATE expanded by strftime, plus 8 random hex digits,
                created O_EXCL at MAIL, completed at "." before the reply, deleted when the
                transaction is abandoned); smtp-sink's own X-Client-Proto, X-Helo-Args,
                X-Mail-Args, X-Rcpt-Args and Received headers come first, CRs are dropped,
                leading dots are unstuffed
    -r / -f CMD refuse CMD with "450 4.3.0 Error: command failed" / "500 5.3.0 Error: command
                failed" (-b / -B set other reply texts); both also stop announcing PIPELINING
    -Q / -q CMD "421 4.0.0 Server closing connection" and disconnect / disconnect silently
    -M N        exit right after counting the Nth message, before its reply
    -e          no ESMTP: EHLO is an unknown command
    -u nobody   required when run as root (the dump directory must then be nobody's)

CMD is a command name (connect, helo, ehlo, mail, rcpt, data, ., rset, quit...).
Readiness is read from /proc (the listening socket belongs to the process), not probed with a
connection, which smtp-sink would count as a session.
"""

from __future__ import annotations

import asyncio
import email
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from helpers import missing_peer
from rassylka.channels.base import (
    Accepted,
    ChannelError,
    ChannelKind,
    OutboundMessage,
    Outcome,
    PermanentChannelError,
    TransientChannelError,
)
from rassylka.channels.smtp import SmtpChannel, SmtpConfig

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
SENDER = "Рассылка <rassylka@example.ru>"
END = "end-of-message"
START_TIMEOUT = 5.0
COUNTERS = re.compile(rb"sess=(\d+) quit=(\d+) mesg=(\d+)\r")

Option = str | bytes


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def mail(number: int, **fields: Any) -> OutboundMessage:
    """A message whose text ends with a marker, so a completely dumped copy can be told from a
    partial one left behind by a killed server."""
    text = f"Здравствуйте, клиент №{number}!\n{END}"
    return OutboundMessage(
        id=number, kind=ChannelKind.EMAIL, to=f"user-{number}@example.ru", text=text, **fields
    )


def accepted(outcomes: list[Outcome]) -> list[Accepted]:
    assert all(isinstance(outcome, Accepted) for outcome in outcomes), outcomes
    return [outcome for outcome in outcomes if isinstance(outcome, Accepted)]


@dataclass(frozen=True)
class Counters:
    sessions: int = 0
    quits: int = 0
    messages: int = 0


@dataclass(frozen=True)
class Dump:
    """One message as smtp-sink wrote it: its own headers, then the message as received."""

    raw: bytes

    @property
    def complete(self) -> bool:
        """Whether the whole message arrived (a killed server leaves partial files): the text
        of ``mail()`` has END, and smtp-sink ends the file with an empty line at the "."."""
        return END.encode() in self.raw and self.raw.endswith(b"\n\n")

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.raw, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed

    def header(self, name: str) -> str:
        found = re.search(rb"^" + name.encode() + rb": (.*)$", self.raw, re.MULTILINE)
        assert found is not None, (name, self.raw[:500])
        return found.group(1).decode()


def _listening(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a socket listening on 127.0.0.1:``port``."""
    try:
        sockets = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    except FileNotFoundError:  # an fd closed while we looked; look again
        return False
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if (
                state == "0A"  # LISTEN
                and local == f"0100007F:{port:04X}"
                and f"socket:[{inode}]" in sockets
            ):
                return True
    return False


class Sink:
    """smtp-sink on 127.0.0.1:``port``; restartable there with other options."""

    def __init__(self, workdir: Path, dump_dir: Path, run_as: list[str]) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.dump_dir = dump_dir
        self.run_as = run_as
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.counter_file = workdir / "counters-0.txt"
        self.error_file = workdir / "stderr-0.txt"

    def start(self, *options: Option) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        self.starts += 1
        self.counter_file = self.workdir / f"counters-{self.starts}.txt"
        self.error_file = self.workdir / f"stderr-{self.starts}.txt"
        command: list[Option] = [
            SMTP_SINK,
            *self.run_as,
            "-c",
            "-d",
            f"{self.dump_dir}/m.",
            *options,
            f"127.0.0.1:{self.port}",
            "1000",
        ]
        with self.counter_file.open("wb") as out, self.error_file.open("wb") as err:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=err
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not _listening(self.process.pid, self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"smtp-sink {options} did not start: {self.errors()}")
            time.sleep(0.005)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers; always reaped."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """The server dies without a word: the kernel closes its connections."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        self.process = None

    def restart(self, *options: Option) -> None:
        self.stop()
        self.start(*options)

    def signal(self, number: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(number)

    def errors(self) -> str:
        return self.error_file.read_text(errors="replace").strip()

    def counters(self) -> Counters:
        """The latest counters of the running (or last) process."""
        found = COUNTERS.findall(self.counter_file.read_bytes())
        if not found:
            return Counters()
        sessions, quits, messages = found[-1]
        return Counters(int(sessions), int(quits), int(messages))

    async def wait_counters(self, done: Callable[[Counters], bool]) -> Counters:
        """The counters once ``done`` holds, or after 5 s the last ones (for the assertion)."""
        for _ in range(500):
            if done(counters := self.counters()):
                break
            await asyncio.sleep(0.01)
        return counters

    async def wait_dumps(self, done: Callable[[list[Dump]], bool]) -> list[Dump]:
        """The dumps once ``done`` holds, or after 5 s the last ones (for the assertion)."""
        for _ in range(500):
            if done(dumps := self.dumps()):
                break
            await asyncio.sleep(0.01)
        return dumps

    def dumps(self) -> list[Dump]:
        return [Dump(path.read_bytes()) for path in sorted(self.dump_dir.iterdir())]


@pytest.fixture
def start_sink(tmp_path: Path) -> Iterator[Callable[..., Sink]]:
    """``start_sink("-r", "rcpt")``: an smtp-sink with those options; stopped after the test
    whatever its outcome."""
    if not os.access(SMTP_SINK, os.X_OK):
        missing_peer("smtp-sink (Debian package postfix) is not installed")
    sinks: list[Sink] = []
    scratch: list[Path] = []

    def start(*options: Option) -> Sink:
        if os.geteuid() == 0:
            # smtp-sink drops root for nobody, who cannot enter pytest's 0700 tmp_path.
            nobody = pwd.getpwnam("nobody")
            dump_dir = Path(tempfile.mkdtemp(prefix="smtp-sink-"))
            scratch.append(dump_dir)
            os.chown(dump_dir, nobody.pw_uid, nobody.pw_gid)
            run_as = ["-u", "nobody"]
        else:
            dump_dir = Path(tempfile.mkdtemp(prefix="dump-", dir=tmp_path))
            run_as = []
        workdir = Path(tempfile.mkdtemp(prefix="sink-", dir=tmp_path))
        sink = Sink(workdir, dump_dir, run_as)
        sinks.append(sink)
        sink.start(*options)
        return sink

    try:
        yield start
    finally:
        for sink in sinks:
            sink.stop()
        for directory in scratch:
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
async def make_channel() -> AsyncIterator[Callable[..., SmtpChannel]]:
    channels: list[SmtpChannel] = []

    def make(port: int, **options: Any) -> SmtpChannel:
        config = SmtpConfig(
            **{"host": "127.0.0.1", "port": port, "sender": SENDER, "timeout": 5.0, **options}
        )
        channel = SmtpChannel(config)
        channels.append(channel)
        return channel

    yield make
    for channel in channels:
        await channel.close()


async def test_two_thousand_messages_each_delivered_exactly_once_over_the_pool(
    start_sink: Callable[..., Sink], make_channel: Callable[..., SmtpChannel]
) -> None:
    sink = start_sink()
    pool_size, batches, batch_size = 8, 10, 200
    channel = make_channel(sink.port, pool_size=pool_size)
    sent = [
        mail(number, subject=f"Письмо №{number}", html=f"<p>Клиент №{number}</p>")
        for number in range(batches * batch_size)
    ]

    outcomes: list[Outcome] = []
    for start in range(0, len(sent), batch_size):
        outcomes += await channel.send(sent[start : start + batch_size])
    await channel.close()

    peer_ids = [outcome.peer_message_id for outcome in accepted(outcomes)]
    assert len(set(peer_ids)) == len(sent)
    counters = await sink.wait_counters(lambda c: c.sessions >= pool_size)
    # Every connection of the pool was used, none more, each ended with QUIT by close().
    assert counters == Counters(sessions=pool_size, quits=pool_size, messages=len(sent))
    dumps = sink.dumps()
    assert len(dumps) == len(sent)
    assert all(dump.complete for dump in dumps)
    # Exactly the messages sent, each once: by Message-ID and by envelope recipient.
    assert sorted(dump.header("Message-ID") for dump in dumps) == sorted(peer_ids)
    recipients = Counter(dump.header("X-Rcpt-Args") for dump in dumps)
    assert recipients == Counter(f"<{message.to}>" for message in sent)


@pytest.mark.parametrize(
    ("option", "command", "code"),
    [
        pytest.param("-Q", "data", 421, id="421-at-DATA"),
        pytest.param("-q", "data", None, id="silent-close-at-DATA"),
        pytest.param("-q", ".", None, id="silent-close-after-the-dot"),
    ],
)
async def test_connection_dropped_mid_transaction_is_transient_and_the_channel_recovers(
    start_sink: Callable[..., Sink],
    make_channel: Callable[..., SmtpChannel],
    option: str,
    command: str,
    code: int | None,
) -> None:
    sink = start_sink(option, command)
    channel = make_channel(sink.port, pool_size=2)

    dropped = await channel.send([mail(number) for number in range(3)])

    for outcome in dropped:
        assert isinstance(outcome, TransientChannelError), outcome
        assert outcome.code == code
        if code is not None:
            assert outcome.reply == "421 4.0.0 Server closing connection"
    # One connection per message: a dropped connection is not used again.
    assert (await sink.wait_counters(lambda c: c.sessions >= 3)).sessions == 3
    kept = [dump for dump in sink.dumps() if dump.complete]
    if command == ".":
        # The server had the whole message when it hung up: it keeps it though it never said
        # so, and Transient sends it again. At least once, never silently lost.
        assert len(kept) == 3
    else:
        # smtp-sink deletes an abandoned transaction's file, after it counts the session.
        assert await sink.wait_dumps(lambda dumps: dumps == []) == []

    sink.restart()  # the same port, behaving normally again
    accepted(await channel.send([mail(number) for number in range(3, 6)]))
    await channel.close()
    assert (await sink.wait_counters(lambda c: c.quits >= 1)).messages == 3


async def test_server_killed_mid_batch_then_back_and_the_same_channel_sends_again(
    start_sink: Callable[..., Sink], make_channel: Callable[..., SmtpChannel]
) -> None:
    sink = start_sink()
    pool_size = 4
    channel = make_channel(sink.port, pool_size=pool_size)
    batch = [mail(number) for number in range(1000)]
    sending = asyncio.create_task(channel.send(batch))
    await sink.wait_counters(lambda c: c.messages >= 100)
    assert not sending.done()

    sink.kill()
    outcomes = await sending

    delivered = accepted([outcome for outcome in outcomes if isinstance(outcome, Accepted)])
    failed = [outcome for outcome in outcomes if not isinstance(outcome, Accepted)]
    assert len(delivered) >= 100 - pool_size  # the last replies may have died with it
    assert failed
    for outcome in failed:
        assert isinstance(outcome, TransientChannelError), outcome
        assert outcome.code is None
    # Nothing reported Accepted that the server did not have; at most one message per
    # connection reached the server without its reply getting back (those go again).
    kept = {dump.header("Message-ID") for dump in sink.dumps() if dump.complete}
    confirmed = {outcome.peer_message_id for outcome in delivered}
    assert confirmed <= kept
    assert len(kept - confirmed) <= pool_size

    # While it is down every message fails fast and retryably.
    while_down = await channel.send([mail(number) for number in range(1000, 1003)])
    for outcome in while_down:
        assert isinstance(outcome, TransientChannelError), outcome
        assert f"127.0.0.1 on port {sink.port}" in outcome.reply

    # smtp-sink names dumps by a PRNG seeded with its pid and start time, and dies after a few
    # names taken ("something is looping"): a restart moments later can replay the killed
    # one's names. Its files are counted already.
    for path in sink.dump_dir.iterdir():
        path.unlink()
    sink.start()
    accepted(await channel.send([mail(number) for number in range(2000, 2020)]))
    await channel.close()
    after = await sink.wait_counters(lambda c: c.messages >= 20 and c.quits >= 1)
    assert after.messages == 20
    assert 1 <= after.sessions <= pool_size


async def test_server_exiting_after_a_known_message_loses_exactly_that_reply(
    start_sink: Callable[..., Sink], make_channel: Callable[..., SmtpChannel]
) -> None:
    """``-M 50``: the server exits as soon as it has the 50th message, before answering it."""
    sink = start_sink("-M", "50")
    channel = make_channel(sink.port, pool_size=4)
    batch = [mail(number) for number in range(200)]

    outcomes = await channel.send(batch)

    confirmed = {
        message.to
        for message, outcome in zip(batch, outcomes, strict=True)
        if isinstance(outcome, Accepted)
    }
    assert len(confirmed) == 49
    kept = {dump.header("X-Rcpt-Args").strip("<>") for dump in sink.dumps() if dump.complete}
    assert len(kept) == 50
    assert confirmed < kept
    [unconfirmed] = kept - confirmed  # the 50th: taken, never answered
    for message, outcome in zip(batch, outcomes, strict=True):
        if message.to not in confirmed:
            # The 50th included: it goes again rather than being lost, or falsely confirmed.
            assert isinstance(outcome, TransientChannelError), (message.to, outcome)
            assert outcome.code is None
    assert unconfirmed.startswith("user-")


async def test_hung_server_times_out_transiently_and_recovers_when_it_resumes(
    start_sink: Callable[..., Sink], make_channel: Callable[..., SmtpChannel]
) -> None:
    sink = start_sink()
    channel = make_channel(sink.port, pool_size=2, timeout=0.5)
    accepted(await channel.send([mail(1), mail(2)]))  # two open connections in the pool

    sink.signal(signal.SIGSTOP)  # alive, connections open, but not a word
    try:
        started = time.monotonic()
        hung = await channel.send([mail(number) for number in range(3, 7)])
        elapsed = time.monotonic() - started
    finally:
        sink.signal(signal.SIGCONT)

    for outcome in hung:
        assert isinstance(outcome, TransientChannelError), outcome
        assert outcome.code is None
        assert "timed out" in outcome.reply.lower()
    # Two rounds of the 0.5 s timeout on two connections; nothing waited on anything longer.
    assert elapsed < 2.5
    accepted(await channel.send([mail(number) for number in range(7, 10)]))
    confirmed = {dump.header("X-Rcpt-Args") for dump in sink.dumps() if dump.complete}
    assert {"<user-7@example.ru>", "<user-8@example.ru>", "<user-9@example.ru>"} <= confirmed


SOFT = "450 4.3.0 Error: command failed"
HARD = "500 5.3.0 Error: command failed"
GREYLISTED = "451 4.7.1 Грейлистинг: повторите через 5 минут"
SPAM = "554 5.7.1 Message rejected as spam"


@pytest.mark.parametrize(
    ("options", "kind", "reply", "sessions"),
    [
        pytest.param(("-r", "mail"), TransientChannelError, SOFT, 1, id="4xx-MAIL"),
        pytest.param(("-f", "mail"), PermanentChannelError, HARD, 1, id="5xx-MAIL"),
        pytest.param(("-r", "rcpt"), TransientChannelError, SOFT, 1, id="4xx-RCPT"),
        pytest.param(("-f", "rcpt"), PermanentChannelError, HARD, 1, id="5xx-RCPT"),
        pytest.param(("-r", "data"), TransientChannelError, SOFT, 1, id="4xx-DATA"),
        pytest.param(("-f", "data"), PermanentChannelError, HARD, 1, id="5xx-DATA"),
        pytest.param(("-r", "."), TransientChannelError, SOFT, 1, id="4xx-dot"),
        pytest.param(("-f", "."), PermanentChannelError, HARD, 1, id="5xx-dot"),
        pytest.param(
            ("-r", "rcpt", "-b", GREYLISTED), TransientChannelError, GREYLISTED, 1, id="greylist"
        ),
        pytest.param(("-f", ".", "-B", SPAM), PermanentChannelError, SPAM, 1, id="spam"),
        # Refused at the greeting: the batch's one connection attempt is every message's
        # answer (a server refusing us is not asked again for each message).
        pytest.param(("-r", "connect"), TransientChannelError, SOFT, 1, id="4xx-greeting"),
        pytest.param(
            ("-Q", "mail"),
            TransientChannelError,
            "421 4.0.0 Server closing connection",
            4,
            id="421-MAIL",
        ),
    ],
)
async def test_refusals_keep_the_servers_code_and_text(
    start_sink: Callable[..., Sink],
    make_channel: Callable[..., SmtpChannel],
    options: tuple[str, ...],
    kind: type[ChannelError],
    reply: str,
    sessions: int,
) -> None:
    sink = start_sink(*options)
    channel = make_channel(sink.port, pool_size=1)

    outcomes = await channel.send([mail(number) for number in range(4)])
    await channel.close()

    for outcome in outcomes:
        assert isinstance(outcome, kind), outcome
        assert (outcome.code, outcome.reply) == (int(reply[:3]), reply)
    # A refused transaction is reset (RSET) and its connection carries the next one; after a
    # 421 the next message goes on a new connection.
    assert (await sink.wait_counters(lambda c: c.sessions >= sessions)).sessions == sessions


async def test_a_reply_in_a_legacy_charset_is_kept_as_storable_text(
    start_sink: Callable[..., Sink], make_channel: Callable[..., SmtpChannel]
) -> None:
    """Older Russian servers answer in CP1251. The reply is stored in the database and shown
    by the API, so it must be text that encodes as UTF-8, with its code kept."""
    sink = start_sink("-f", "rcpt", "-B", "550 5.7.1 Получатель отклонён".encode("cp1251"))
    channel = make_channel(sink.port, pool_size=1)

    [outcome] = await channel.send([mail(1)])

    assert isinstance(outcome, PermanentChannelError)
    assert outcome.code == 550
    assert outcome.reply.startswith("550 5.7.1 ")
    try:
        outcome.reply.encode("utf-8")
    except UnicodeEncodeError as error:
        pytest.fail(f"the reply cannot be stored: {outcome.reply!r} ({error})")


async def test_dumped_message_has_both_parts_and_the_cyrillic_subject(
    start_sink: Callable[..., Sink], make_channel: Callable[..., SmtpChannel]
) -> None:
    sink = start_sink()
    subject = "Скидка 20% только сегодня — не пропустите!"
    # Lines that start with a dot, and one that is only a dot, must survive dot-stuffing.
    text = f"Здравствуйте, Иван!\n.\n..многоточие\n.скрытый файл\n{END}"
    html = "<p>Здравствуйте, <b>Иван</b>!</p>"
    message = OutboundMessage(
        id=1,
        kind=ChannelKind.EMAIL,
        to="Иван Петров <ivan@example.ru>",
        subject=subject,
        text=text,
        html=html,
    )

    [outcome] = accepted(await make_channel(sink.port).send([message]))

    [dump] = sink.dumps()
    assert dump.complete
    assert dump.header("X-Client-Proto") == "ESMTP"
    assert dump.header("X-Mail-Args") == "<rassylka@example.ru> BODY=8BITMIME"
    assert dump.header("X-Rcpt-Args") == "<ivan@example.ru>"
    received = dump.message
    assert received["Subject"] == subject
    assert str(received["From"]) == SENDER
    assert str(received["To"]) == "Иван Петров <ivan@example.ru>"
    assert received["Message-ID"] == outcome.peer_message_id
    assert received.get_content_type() == "multipart/alternative"
    plain, rich = received.get_body(("plain",)), received.get_body(("html",))
    assert plain is not None
    assert rich is not None
    assert plain["Content-Transfer-Encoding"] == rich["Content-Transfer-Encoding"] == "8bit"
    assert plain.get_content().rstrip("\n") == text
    assert rich.get_content().rstrip("\n") == html


async def test_a_server_without_esmtp_gets_helo_and_seven_bit_mime(
    start_sink: Callable[..., Sink], make_channel: Callable[..., SmtpChannel]
) -> None:
    sink = start_sink("-e")  # EHLO is "500 5.5.1 Error: unknown command"
    channel = make_channel(sink.port, pool_size=1)

    accepted(await channel.send([mail(1, subject="Тема", html="<p>Привет</p>"), mail(2)]))

    first, second = sorted(sink.dumps(), key=lambda dump: dump.header("X-Rcpt-Args"))
    for dump in (first, second):
        assert dump.header("X-Client-Proto") == "SMTP"  # greeted with HELO
        assert dump.header("X-Mail-Args") == "<rassylka@example.ru>"  # no BODY=8BITMIME
        assert dump.raw.isascii()  # not one 8-bit byte to a 7-bit server
    received = first.message
    assert received["Subject"] == "Тема"
    plain, rich = received.get_body(("plain",)), received.get_body(("html",))
    assert plain is not None
    assert rich is not None
    assert plain["Content-Transfer-Encoding"] == "base64"
    # Text is base64-encoded in its canonical form, CRLF line ends (RFC 2046 §4.1.1).
    assert plain.get_content() == mail(1).text.replace("\n", "\r\n") + "\r\n"
    assert rich.get_content() == "<p>Привет</p>\r\n"
