"""SMTP PIPELINING and the replies no well-behaved server gives, against a scripted server.

``ScriptedServer`` is a small SMTP server on 127.0.0.1 written here, because the behaviour under
test is what aiosmtpd and smtp-sink cannot be made to do: record each TCP read (to see what the
client batched into one write), refuse the DATA command itself, accept DATA after refusing the
only recipient (RFC 2920 3.1), answer 421 and hang up in the middle of a pipelined group, send
multi-line, CP1251 and over-long replies, AUTH CRAM-MD5 (aiosmtpd has no CRAM-MD5). It is still
a real peer on a real socket.

Verdicts go by the recipient's local part: ``never…`` 550 at RCPT, ``closing…`` 421 at RCPT and
the connection closed, ``vanish…`` the connection closed at RCPT without a word, ``slam…`` 550
at RCPT and the connection closed, ``mute…`` no reply from RCPT on, ``nodata…``
554 to DATA, ``lenient…`` 550 at RCPT but 354 to DATA all the same, ``cp1251…`` 550 at RCPT in
CP1251, ``long…`` a reply line of 10,000 bytes at RCPT, ``multiline…`` a two-line final reply.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from rassylka.bounces.verp import Verp
from rassylka.channels.base import (
    Accepted,
    ChannelKind,
    OutboundMessage,
    Outcome,
    PermanentChannelError,
    TransientChannelError,
)
from rassylka.channels.smtp import SmtpChannel, SmtpConfig
from rassylka.channels.smtp_client import dot_stuff

SENDER = "Рассылка <rassylka@example.ru>"
BASE_EXTENSIONS = ("8BITMIME", "SIZE 10485760", "DSN", "SMTPUTF8")


def email_to(to: str, id: int = 1, text: str = "Здравствуйте!") -> OutboundMessage:
    return OutboundMessage(id=id, kind=ChannelKind.EMAIL, to=to, text=text, subject="Тема")


def accepted(outcomes: list[Outcome]) -> list[Accepted]:
    assert all(isinstance(outcome, Accepted) for outcome in outcomes), outcomes
    return [outcome for outcome in outcomes if isinstance(outcome, Accepted)]


@dataclass
class Connection:
    reads: list[bytes] = field(default_factory=list)
    """Every chunk the server read from the socket, in order."""
    commands: list[str] = field(default_factory=list)
    """Every command line (not message lines), without CRLF."""


@dataclass
class ScriptedServer:
    pipelining: bool = True
    cram_md5: tuple[str, str] | None = None
    """Offer AUTH CRAM-MD5 only, for this user and password."""
    authenticated: list[str] = field(default_factory=list)
    drop_next_mail: bool = False
    connections: list[Connection] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)
    """The DATA of each message as it came over the wire (dot-stuffed, without the ``.``)."""
    port: int = 0

    def extensions(self) -> list[str]:
        return [
            *BASE_EXTENSIONS,
            *(["PIPELINING"] if self.pipelining else []),
            *(["AUTH CRAM-MD5"] if self.cram_md5 else []),
        ]

    def commands(self) -> list[str]:
        return [command for connection in self.connections for command in connection.commands]


class _Session(asyncio.Protocol):
    def __init__(self, server: ScriptedServer) -> None:
        self.server = server
        self.connection = Connection()
        self.buffer = b""
        self.recipient: str | None = None
        self.lenient = False
        self.muted = False
        self.data: list[bytes] | None = None
        self.challenge: bytes | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connections.append(self.connection)
        transport.write(b"220 scripted ESMTP\r\n")

    def data_received(self, chunk: bytes) -> None:
        self.connection.reads.append(chunk)
        self.buffer += chunk
        while b"\n" in self.buffer and self.transport is not None:
            line, self.buffer = self.buffer.split(b"\n", 1)
            line += b"\n"
            if self.data is not None:
                self.message_line(line)
            elif self.challenge is not None:
                self.cram_md5_answer(line.strip())
            else:
                self.command(line.rstrip(b"\r\n").decode())

    def reply(self, *lines: str | bytes) -> None:
        assert self.transport is not None
        if self.muted:
            return
        for line in lines:
            self.transport.write((line.encode() if isinstance(line, str) else line) + b"\r\n")

    def hang_up(self) -> None:
        assert self.transport is not None
        self.transport.close()
        self.transport = None

    def message_line(self, line: bytes) -> None:
        assert self.data is not None
        if line != b".\r\n":
            self.data.append(line)
            return
        message, self.data = b"".join(self.data), None
        if self.recipient is None:
            self.reply("554 5.5.1 Error: no valid recipients")  # and the message goes nowhere
        elif self.recipient.startswith("multiline"):
            self.server.messages.append(message)
            self.reply("250-2.0.0 Ok: queued as A1", "250 2.0.0 and kept")
        else:
            self.server.messages.append(message)
            self.reply("250 2.0.0 Ok: queued")
        self.recipient = None

    def command(self, line: str) -> None:
        self.connection.commands.append(line)
        verb, _, argument = line.partition(" ")
        verb = verb.upper()
        if verb == "EHLO":
            self.reply("250-scripted", *(f"250-{e}" for e in self.server.extensions()), "250 HELP")
        elif verb == "MAIL":
            if self.server.drop_next_mail:
                self.server.drop_next_mail = False
                self.hang_up()
                return
            self.recipient, self.lenient = None, False
            self.reply("250 2.1.0 Ok")
        elif verb == "RCPT":
            self.rcpt(argument.split("<", 1)[1].split(">", 1)[0])
        elif verb == "DATA":
            if self.recipient is not None and self.recipient.startswith("nodata"):
                self.reply("554 5.7.1 Error: DATA refused")
            elif self.recipient is None and not self.lenient:
                self.reply("503 5.5.1 Error: need RCPT command")
            else:
                self.data = []
                self.reply("354 End data with <CR><LF>.<CR><LF>")
        elif verb == "AUTH" and argument.upper() == "CRAM-MD5" and self.server.cram_md5:
            self.challenge = b"<1896.697170952@scripted>"
            self.reply(b"334 " + base64.b64encode(self.challenge))
        elif verb == "RSET":
            self.recipient, self.lenient = None, False
            self.reply("250 2.0.0 Ok")
        elif verb == "QUIT":
            self.reply("221 2.0.0 Bye")
            self.hang_up()
        else:
            self.reply("502 5.5.2 Error: command not recognized")

    def cram_md5_answer(self, answer: bytes) -> None:
        assert self.challenge is not None
        assert self.server.cram_md5 is not None
        user, password = self.server.cram_md5
        digest = hmac.new(password.encode(), self.challenge, "md5").hexdigest()
        self.challenge = None
        if base64.b64decode(answer) == f"{user} {digest}".encode():
            self.server.authenticated.append(user)
            self.reply("235 2.7.0 Authentication successful")
        else:
            self.reply("535 5.7.8 Authentication credentials invalid")

    def rcpt(self, address: str) -> None:
        if address.startswith("never"):
            self.reply("550 5.1.1 No such user here")
        elif address.startswith("lenient"):
            self.lenient = True
            self.reply("550 5.1.1 No such user here")
        elif address.startswith("closing"):
            self.reply("421 4.3.2 Service shutting down")
            self.hang_up()
        elif address.startswith("vanish"):
            self.hang_up()
        elif address.startswith("mute"):
            self.muted = True
        elif address.startswith("slam"):
            self.reply("550 5.7.1 Go away")
            self.hang_up()
        elif address.startswith("cp1251"):
            self.reply("550 5.7.1 Получатель отклонён".encode("cp1251"))
        elif address.startswith("long"):
            self.reply("250 " + "x" * 10_000)
        else:
            self.recipient = address
            self.reply("250 2.1.5 Ok")


Start = Callable[..., Awaitable[ScriptedServer]]


@pytest.fixture
async def start_server() -> AsyncIterator[Start]:
    servers: list[asyncio.Server] = []

    async def start(**options: Any) -> ScriptedServer:
        scripted = ScriptedServer(**options)
        server = await asyncio.get_running_loop().create_server(
            lambda: _Session(scripted), "127.0.0.1", 0
        )
        servers.append(server)
        scripted.port = server.sockets[0].getsockname()[1]
        return scripted

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


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


async def test_with_pipelining_a_batch_takes_one_write_per_message(
    start_server: Start, make_channel: Callable[..., SmtpChannel]
) -> None:
    server = await start_server()
    channel = make_channel(server.port, pool_size=1)

    accepted(await channel.send([email_to(f"ok-{n}@example.ru", id=n) for n in range(5)]))

    [connection] = server.connections
    reads = connection.reads[1:]  # after EHLO
    # The first envelope alone; then each message's content in one write with the next
    # message's MAIL, RCPT and DATA (RFC 2920 3.1); the last content alone.
    assert len(reads) == 6
    first, *middle, last = reads
    assert first.startswith(b"MAIL FROM:<rassylka@example.ru> SIZE=")
    for n, read in enumerate(middle, start=1):
        content, envelope = read.split(b"\r\n.\r\n")
        assert b"Subject:" in content
        mail, rcpt, data, rest = envelope.split(b"\r\n")
        assert mail.startswith(b"MAIL FROM:<rassylka@example.ru> SIZE=")
        assert rcpt == f"RCPT TO:<ok-{n}@example.ru>".encode()
        assert (data, rest) == (b"DATA", b"")
    assert last.endswith(b"\r\n.\r\n")
    assert b"MAIL FROM" not in last
    assert len(server.messages) == 5


@pytest.mark.parametrize(("pipelining", "writes"), [(True, 2), (False, 4)])
async def test_the_envelope_is_one_write_when_the_server_offers_pipelining(
    start_server: Start, make_channel: Callable[..., SmtpChannel], pipelining: bool, writes: int
) -> None:
    server = await start_server(pipelining=pipelining)
    channel = make_channel(server.port, pool_size=1)

    for n in range(5):  # one at a time, as the dispatcher sends a trickle
        accepted(await channel.send([email_to(f"ok-{n}@example.ru", id=n)]))

    [connection] = server.connections
    reads = connection.reads[1:]  # after EHLO
    # Per message: envelope + body with PIPELINING (two round trips), else MAIL, RCPT, DATA
    # and the body each waiting for the previous reply (four).
    assert len(reads) == 5 * writes
    if pipelining:
        for envelope in reads[::2]:
            mail, rcpt, data, rest = envelope.split(b"\r\n")
            assert mail.startswith(b"MAIL FROM:<rassylka@example.ru> SIZE=")
            assert rcpt.startswith(b"RCPT TO:<ok-")
            assert (data, rest) == (b"DATA", b"")
    else:
        assert all(read.count(b"\r\n") == 1 for read in reads[0::4])
        assert all(read.startswith(b"MAIL FROM:") for read in reads[0::4])
        assert all(read.startswith(b"RCPT TO:") for read in reads[1::4])
    assert all(read.endswith(b"\r\n.\r\n") for read in reads[writes - 1 :: writes])
    assert len(server.messages) == 5


async def test_a_recipient_refused_in_a_pipeline_gets_its_reply_and_the_connection_goes_on(
    start_server: Start, make_channel: Callable[..., SmtpChannel]
) -> None:
    server = await start_server()
    channel = make_channel(server.port, pool_size=1)

    refused, sent = await channel.send(
        [email_to("never@example.ru", id=1), email_to("ok@example.ru", id=2)]
    )

    # The RCPT's reply, not the DATA's 503 that followed it in the same group.
    assert isinstance(refused, PermanentChannelError)
    assert (refused.code, refused.reply) == (550, "550 5.1.1 No such user here")
    assert isinstance(sent, Accepted)
    commands = [command.split(":")[0].split(" ")[0] for command in server.commands()]
    assert commands == ["EHLO", "MAIL", "RCPT", "DATA", "RSET", "MAIL", "RCPT", "DATA"]
    assert len(server.connections) == 1
    assert len(server.messages) == 1


async def test_a_refused_data_command_is_the_messages_outcome(
    start_server: Start, make_channel: Callable[..., SmtpChannel]
) -> None:
    server = await start_server()
    channel = make_channel(server.port, pool_size=1)

    refused, sent = await channel.send(
        [email_to("nodata@example.ru", id=1), email_to("ok@example.ru", id=2)]
    )

    assert isinstance(refused, PermanentChannelError)
    assert (refused.code, refused.reply) == (554, "554 5.7.1 Error: DATA refused")
    assert isinstance(sent, Accepted)
    assert "RSET" in server.commands()
    assert len(server.connections) == 1
    assert len(server.messages) == 1


async def test_data_accepted_after_the_only_recipient_was_refused_sends_an_empty_message(
    start_server: Start, make_channel: Callable[..., SmtpChannel]
) -> None:
    """RFC 2920 3.1: the client ends such a DATA with a lone ".", never the message."""
    server = await start_server()
    channel = make_channel(server.port, pool_size=1)

    refused, sent = await channel.send(
        [email_to("lenient@example.ru", id=1, text="секрет"), email_to("ok@example.ru", id=2)]
    )

    assert isinstance(refused, PermanentChannelError)
    assert refused.code == 550
    assert isinstance(sent, Accepted)
    assert len(server.messages) == 1  # the lone "." was refused with 554, and kept nowhere
    reads = b"".join(server.connections[0].reads)
    assert b"\r\nDATA\r\n.\r\nRSET\r\n" in reads
    assert "секрет".encode() not in reads


async def test_421_in_the_middle_of_a_pipeline_is_transient_and_the_connection_dropped(
    start_server: Start, make_channel: Callable[..., SmtpChannel]
) -> None:
    server = await start_server()
    channel = make_channel(server.port, pool_size=1)

    closing, sent = await channel.send(
        [email_to("closing@example.ru", id=1), email_to("ok@example.ru", id=2)]
    )

    assert isinstance(closing, TransientChannelError)
    assert (closing.code, closing.reply) == (421, "421 4.3.2 Service shutting down")
    assert isinstance(sent, Accepted)
    assert len(server.connections) == 2
    assert "RSET" not in server.commands()


async def test_a_connection_lost_mid_pipeline_is_transient_for_the_message_in_flight(
    start_server: Start, make_channel: Callable[..., SmtpChannel]
) -> None:
    server = await start_server()
    channel = make_channel(server.port, pool_size=1)

    lost, sent = await channel.send(
        [email_to("vanish@example.ru", id=1), email_to("ok@example.ru", id=2)]
    )

    assert isinstance(lost, TransientChannelError)
    assert lost.code is None
    assert "connection lost" in lost.reply.lower()
    assert isinstance(sent, Accepted)
    assert len(server.connections) == 2


async def test_a_refusal_stands_when_the_server_hangs_up_after_it(
    start_server: Start, make_channel: Callable[..., SmtpChannel]
) -> None:
    server = await start_server()
    channel = make_channel(server.port, pool_size=1)

    refused, sent = await channel.send(
        [email_to("slam@example.ru", id=1), email_to("ok@example.ru", id=2)]
    )

    # Permanent with the server's reply, not "connection lost" from the RSET after it.
    assert isinstance(refused, PermanentChannelError)
    assert (refused.code, refused.reply) == (550, "550 5.7.1 Go away")
    assert isinstance(sent, Accepted)
    assert len(server.connections) == 2


async def test_a_reused_connection_closed_at_mail_is_retried_on_a_fresh_one(
    start_server: Start, make_channel: Callable[..., SmtpChannel]
) -> None:
    server = await start_server()
    channel = make_channel(server.port, pool_size=1)
    accepted(await channel.send([email_to("ok-before@example.ru")]))
    server.drop_next_mail = True

    accepted(await channel.send([email_to("ok-after@example.ru")]))

    assert not server.drop_next_mail
    assert len(server.connections) == 2
    assert len(server.messages) == 2


async def test_multi_line_and_legacy_charset_replies_are_read_whole(
    start_server: Start, make_channel: Callable[..., SmtpChannel]
) -> None:
    server = await start_server()
    channel = make_channel(server.port, pool_size=1)

    multiline, legacy = await channel.send(
        [email_to("multiline@example.ru", id=1), email_to("cp1251@example.ru", id=2)]
    )

    assert isinstance(multiline, Accepted)
    assert multiline.reply == "250 2.0.0 Ok: queued as A1\n2.0.0 and kept"
    assert isinstance(legacy, PermanentChannelError)
    assert legacy.reply == "550 5.7.1 Получатель отклонён"
    assert len(server.connections) == 1


async def test_an_overlong_reply_line_is_transient_and_the_connection_dropped(
    start_server: Start, make_channel: Callable[..., SmtpChannel]
) -> None:
    server = await start_server()
    channel = make_channel(server.port, pool_size=1)

    overlong, sent = await channel.send(
        [email_to("long@example.ru", id=1), email_to("ok@example.ru", id=2)]
    )

    assert isinstance(overlong, TransientChannelError)
    assert overlong.code is None
    assert "longer than" in overlong.reply
    assert isinstance(sent, Accepted)
    assert len(server.connections) == 2


async def test_size_and_dsn_options_with_a_verp_sender(
    start_server: Start, make_channel: Callable[..., SmtpChannel]
) -> None:
    server = await start_server()
    verp = Verp("bounces.example.ru", b"a secret key")
    channel = make_channel(server.port, verp=verp)

    accepted(await channel.send([email_to("ok@example.ru", id=42)]))

    [mail] = [command for command in server.commands() if command.startswith("MAIL")]
    [message] = server.messages
    assert mail == (
        f"MAIL FROM:<{verp.address(42)}> SIZE={len(message)} BODY=8BITMIME"
        f" ENVID={verp.token(42)} RET=HDRS"
    )


async def test_lines_starting_with_a_dot_are_stuffed_on_the_wire(
    start_server: Start, make_channel: Callable[..., SmtpChannel]
) -> None:
    server = await start_server()
    channel = make_channel(server.port)
    text = ".first\n.\n..two\nend."

    accepted(await channel.send([email_to("ok@example.ru", text=text)]))

    [message] = server.messages
    assert b"\r\n..first\r\n..\r\n...two\r\nend.\r\n" in message


@pytest.mark.parametrize(
    ("data", "wire"),
    [
        (b"", b".\r\n"),
        (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
        (b".a\r\n.\r\nb.", b"..a\r\n..\r\nb.\r\n.\r\n"),
        (b"a\nb\rc\r\n", b"a\r\nb\r\nc\r\n.\r\n"),  # bare LF and CR become CRLF
        (b"a\n.b\n", b"a\r\n..b\r\n.\r\n"),
    ],
)
def test_dot_stuffing_and_line_ends(data: bytes, wire: bytes) -> None:
    """The byte transformation alone (no peer needed): what DATA puts on the wire."""
    assert dot_stuff(data) == wire


@pytest.mark.parametrize(("password", "sent"), [("s3cret", True), ("wrong", False)])
async def test_auth_cram_md5_when_it_is_all_the_server_offers(
    start_server: Start, make_channel: Callable[..., SmtpChannel], password: str, sent: bool
) -> None:
    server = await start_server(cram_md5=("crm", "s3cret"))
    channel = make_channel(server.port, username="crm", password=password)

    [outcome] = await channel.send([email_to("ok@example.ru")])

    if sent:
        assert isinstance(outcome, Accepted)
        assert server.authenticated == ["crm"]
    else:
        assert isinstance(outcome, TransientChannelError)  # our configuration, not the message
        assert outcome.code == 535
        assert server.messages == []


async def test_a_refused_recipient_inside_a_pipelined_batch_is_its_own_outcome(
    start_server: Start, make_channel: Callable[..., SmtpChannel]
) -> None:
    server = await start_server()
    channel = make_channel(server.port, pool_size=1)
    addresses = ["ok-1", "never-2", "ok-3", "lenient-4", "ok-5"]

    outcomes = await channel.send(
        [email_to(f"{local}@example.ru", id=n) for n, local in enumerate(addresses)]
    )

    kinds = [type(outcome) for outcome in outcomes]
    assert kinds == [Accepted, PermanentChannelError, Accepted, PermanentChannelError, Accepted]
    assert len(server.connections) == 1
    assert len(server.messages) == 3
    # After a refused envelope: RSET (and, where DATA was taken all the same, an empty
    # message), then the next envelope; after a message's content, no RSET.
    commands = [command.split(":")[0].split(" ")[0] for command in server.commands()]
    assert commands.count("RSET") == 2
    assert commands.count("MAIL") == 5


async def test_a_connection_lost_inside_a_batch_fails_only_the_message_under_way(
    start_server: Start, make_channel: Callable[..., SmtpChannel]
) -> None:
    server = await start_server()
    channel = make_channel(server.port, pool_size=1)
    addresses = ["ok-1", "ok-2", "vanish-3", "ok-4", "ok-5"]

    outcomes = await channel.send(
        [email_to(f"{local}@example.ru", id=n) for n, local in enumerate(addresses)]
    )

    kinds = [type(outcome) for outcome in outcomes]
    assert kinds == [Accepted, Accepted, TransientChannelError, Accepted, Accepted]
    # The messages after it were never begun: they went at once on a fresh connection.
    assert len(server.connections) == 2
    assert len(server.messages) == 4


async def test_a_server_gone_silent_inside_a_batch_times_out_only_the_message_under_way(
    start_server: Start, make_channel: Callable[..., SmtpChannel]
) -> None:
    server = await start_server()
    channel = make_channel(server.port, pool_size=1, timeout=0.5)
    addresses = ["ok-1", "ok-2", "mute-3", "ok-4", "ok-5"]

    loop = asyncio.get_running_loop()
    started = loop.time()
    outcomes = await channel.send(
        [email_to(f"{local}@example.ru", id=n) for n, local in enumerate(addresses)]
    )
    waited = loop.time() - started

    kinds = [type(outcome) for outcome in outcomes]
    assert kinds == [Accepted, Accepted, TransientChannelError, Accepted, Accepted]
    assert "Timed out" in str(outcomes[2])
    # One timeout (at least the configured one, at most half as long again) for the silent
    # round trip; the messages after it went at once on a fresh connection.
    assert 0.5 <= waited < 2.0
    assert len(server.connections) == 2
    assert len(server.messages) == 4
