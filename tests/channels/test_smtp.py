"""The SMTP transport against a real SMTP server (aiosmtpd) on 127.0.0.1.

The server's verdict depends on the recipient's local part: ``ok…`` is accepted, ``later…``
gets 450 and ``never…`` 550 at RCPT, ``bounce-data…`` 554 at the end of DATA. Every test with
an aiosmtpd peer runs twice: with PIPELINING announced (aiosmtpd takes pipelined commands but
does not announce it by itself) and without, one command a round trip.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SmtpServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from rassylka.channels.base import (
    Accepted,
    ChannelKind,
    OutboundMessage,
    Outcome,
    PermanentChannelError,
    TransientChannelError,
)
from rassylka.channels.smtp import SmtpChannel, SmtpConfig

SENDER = "Рассылка <rassylka@example.ru>"
USERNAME, PASSWORD = "crm", "s3cret-пароль"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def email_to(to: str, id: int = 1, **fields: Any) -> OutboundMessage:
    return OutboundMessage(id=id, kind=ChannelKind.EMAIL, to=to, text="Здравствуйте!", **fields)


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    mail_options: list[str]
    message: EmailMessage
    authenticated: bool
    tls: bool


@dataclass
class Handler:
    """Per-recipient verdicts, and a record of what the server saw."""

    received: list[Received] = field(default_factory=list)
    connections: set[object] = field(default_factory=set)  # peer (host, port) per connection
    refuse_next_mail: str | None = None
    drop_next_mail: bool = False
    data_delay: float = 0.0
    pipelining: bool = True

    async def handle_EHLO(
        self,
        server: SmtpServer,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname  # what aiosmtpd does itself when there is no hook
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self,
        server: SmtpServer,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        self.connections.add(session.peer)
        if self.drop_next_mail:
            self.drop_next_mail = False
            return drop(server)
        if self.refuse_next_mail is not None:
            reply, self.refuse_next_mail = self.refuse_next_mail, None
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SmtpServer,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        if address.startswith("later"):
            return "450 4.2.1 Mailbox busy, try again later"
        if address.startswith("never"):
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SmtpServer, session: Session, envelope: Envelope) -> str:
        await asyncio.sleep(self.data_delay)
        if any(rcpt.startswith("drop-data") for rcpt in envelope.rcpt_tos):
            return drop(server)
        if any(rcpt.startswith("bounce-data") for rcpt in envelope.rcpt_tos):
            return "554 5.6.0 Message content rejected"
        content = envelope.original_content  # bytes even when the server decodes data
        assert content is not None
        assert envelope.mail_from is not None
        transport = server.transport
        self.received.append(
            Received(
                mail_from=envelope.mail_from,
                rcpt_tos=list(envelope.rcpt_tos),
                mail_options=list(envelope.mail_options),
                # What came over the wire has CRLF line ends; the parser keeps them in bodies.
                message=email.message_from_bytes(
                    content.replace(b"\r\n", b"\n"), policy=policy.default
                ),
                authenticated=bool(session.authenticated),
                tls=transport is not None and transport.get_extra_info("ssl_object") is not None,
            )
        )
        return "250 2.0.0 Ok: queued"


def drop(server: SmtpServer) -> str:
    """Close the connection without answering (the reply returned is never written)."""
    assert server.transport is not None
    server.transport.close()
    return "451 4.3.0 this reply must not reach the client"


def authenticate(
    server: SmtpServer, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
        USERNAME.encode(),
        PASSWORD.encode(),
    )
    # handled=False: on failure aiosmtpd itself answers 535 (handled=True would mean we did).
    return AuthResult(success=ok, handled=False)


class Peer:
    """An aiosmtpd server in its own thread; restartable on the same port."""

    def __init__(self, pipelining: bool = True, **server_options: Any) -> None:
        self.handler = Handler(pipelining=pipelining)
        self.port = free_port()
        self.options = server_options
        self.controller: Controller | None = None

    def start(self) -> None:
        self.controller = Controller(
            self.handler,
            hostname="127.0.0.1",
            port=self.port,
            server_hostname="localhost",
            **self.options,
        )
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


@pytest.fixture(params=[True, False], ids=["pipelining", "one-at-a-time"])
def start_peer(request: pytest.FixtureRequest) -> Iterator[Callable[..., Peer]]:
    peers: list[Peer] = []

    def start(**server_options: Any) -> Peer:
        peer = Peer(pipelining=request.param, **server_options)
        peer.start()
        peers.append(peer)
        return peer

    yield start
    for peer in peers:
        peer.stop()


@pytest.fixture
def peer(start_peer: Callable[..., Peer]) -> Peer:
    return start_peer()


@pytest.fixture
async def make_channel() -> AsyncIterator[Callable[..., SmtpChannel]]:
    channels: list[SmtpChannel] = []

    def make(port: int, tls_context: ssl.SSLContext | None = None, **options: Any) -> SmtpChannel:
        config = SmtpConfig(
            **{"host": "127.0.0.1", "port": port, "sender": SENDER, "timeout": 5.0, **options}
        )
        channel = SmtpChannel(config, tls_context=tls_context)
        channels.append(channel)
        return channel

    yield make
    for channel in channels:
        await channel.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (the venv has no ``cryptography``; openssl)."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    command = [
        *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
        *("-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)),
        *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
    ]
    subprocess.run(
        command,
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


@pytest.fixture
def client_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificate[0]))


def accepted(outcomes: list[Outcome]) -> list[Accepted]:
    assert all(isinstance(outcome, Accepted) for outcome in outcomes), outcomes
    return [outcome for outcome in outcomes if isinstance(outcome, Accepted)]


async def test_mixed_batch_gives_each_message_its_own_outcome(
    peer: Peer, make_channel: Callable[..., SmtpChannel]
) -> None:
    channel = make_channel(peer.port, pool_size=2)
    recipients = [
        "ok-1@example.ru",
        "later@example.ru",
        "never@example.ru",
        "bounce-data@example.ru",
        "ok-2@example.ru",
    ]
    batch = [email_to(to, id=number) for number, to in enumerate(recipients)]

    first, later, never, bounce, second = await channel.send(batch)

    assert isinstance(first, Accepted)
    assert isinstance(second, Accepted)
    assert first.reply == second.reply == "250 2.0.0 Ok: queued"
    assert first.peer_message_id != second.peer_message_id
    assert isinstance(later, TransientChannelError)
    assert (later.code, later.reply) == (450, "450 4.2.1 Mailbox busy, try again later")
    assert isinstance(never, PermanentChannelError)
    assert (never.code, never.reply) == (550, "550 5.1.1 No such user here")
    assert isinstance(bounce, PermanentChannelError)
    assert (bounce.code, bounce.reply) == (554, "554 5.6.0 Message content rejected")
    assert sorted(r.rcpt_tos[0] for r in peer.handler.received) == [
        "ok-1@example.ru",
        "ok-2@example.ru",
    ]
    # Refusals were reset (RSET) rather than costing connections.
    assert len(peer.handler.connections) <= 2


async def test_message_headers_and_cyrillic_parts_arrive_intact(
    peer: Peer, make_channel: Callable[..., SmtpChannel]
) -> None:
    subject = "Скидка 20% только сегодня — не пропустите!"
    text = "Здравствуйте, Иван!\nВаша скидка ждёт вас."
    html = "<p>Здравствуйте, <b>Иван</b>!</p>"
    message = email_to(
        "Иван Петров <ok-ivan@example.ru>",
        subject=subject,
        html=html,
        headers={"List-Unsubscribe": "<mailto:unsubscribe@example.ru>"},
    )
    message = dataclasses.replace(message, text=text)

    [outcome] = accepted(await make_channel(peer.port).send([message]))

    [received] = peer.handler.received
    assert received.mail_from == "rassylka@example.ru"
    assert received.rcpt_tos == ["ok-ivan@example.ru"]
    assert "BODY=8BITMIME" in received.mail_options
    mail = received.message
    assert mail["Subject"] == subject
    assert str(mail["From"]) == SENDER
    assert str(mail["To"]) == "Иван Петров <ok-ivan@example.ru>"
    assert mail["Message-ID"] == outcome.peer_message_id
    assert outcome.peer_message_id is not None
    assert outcome.peer_message_id.endswith("@example.ru>")
    assert mail["List-Unsubscribe"] == "<mailto:unsubscribe@example.ru>"
    sent_at = parsedate_to_datetime(mail["Date"])
    assert abs(sent_at - datetime.now(UTC)) < timedelta(minutes=1)
    assert mail.get_content_type() == "multipart/alternative"
    plain, rich = mail.get_body(("plain",)), mail.get_body(("html",))
    assert plain is not None
    assert rich is not None
    assert plain.get_content_charset() == rich.get_content_charset() == "utf-8"
    assert plain.get_content().rstrip("\n") == text
    assert rich.get_content().rstrip("\n") == html


async def test_text_only_message_and_idn_recipient(
    peer: Peer, make_channel: Callable[..., SmtpChannel]
) -> None:
    accepted(await make_channel(peer.port).send([email_to("ok@пример.рф", subject="Тема")]))

    [received] = peer.handler.received
    # The domain travels in its ASCII form, so no SMTPUTF8 is needed.
    assert received.rcpt_tos == ["ok@xn--e1afmkfd.xn--p1ai"]
    assert received.message.get_content_type() == "text/plain"
    assert received.message.get_content().rstrip("\n") == "Здравствуйте!"


async def test_non_ascii_local_part_goes_with_smtputf8(
    peer: Peer, make_channel: Callable[..., SmtpChannel]
) -> None:
    accepted(await make_channel(peer.port).send([email_to("ok-иван@example.ru")]))

    [received] = peer.handler.received
    assert received.rcpt_tos == ["ok-иван@example.ru"]
    assert "SMTPUTF8" in received.mail_options
    assert received.message["To"] == "ok-иван@example.ru"


async def test_server_without_8bitmime_or_smtputf8(
    start_peer: Callable[..., Peer], make_channel: Callable[..., SmtpChannel]
) -> None:
    # decode_data=True makes aiosmtpd stop offering 8BITMIME.
    peer = start_peer(decode_data=True, enable_SMTPUTF8=False)
    channel = make_channel(peer.port)

    sent, refused = await channel.send(
        [
            email_to("ok@example.ru", id=1, html="<p>Привет</p>"),
            email_to("ok-иван@example.ru", id=2),
        ]
    )

    assert isinstance(sent, Accepted)
    [received] = peer.handler.received
    assert "BODY=8BITMIME" not in received.mail_options
    plain, rich = received.message.get_body(("plain",)), received.message.get_body(("html",))
    assert plain is not None
    assert rich is not None
    assert plain["Content-Transfer-Encoding"] == "base64"
    # Text is base64-encoded in its canonical form, CRLF line ends (RFC 2046 §4.1.1).
    assert plain.get_content() == "Здравствуйте!\r\n"
    assert rich.get_content() == "<p>Привет</p>\r\n"
    assert isinstance(refused, PermanentChannelError)
    assert "SMTPUTF8" in refused.reply


async def test_connections_are_reused_within_and_across_sends(
    peer: Peer, make_channel: Callable[..., SmtpChannel]
) -> None:
    channel = make_channel(peer.port, pool_size=2)

    accepted(await channel.send([email_to(f"ok-{n}@example.ru", id=n) for n in range(12)]))
    accepted(await channel.send([email_to("ok-again@example.ru")]))
    accepted(await channel.send([email_to("ok-once-more@example.ru")]))

    assert len(peer.handler.received) == 14
    assert 1 <= len(peer.handler.connections) <= 2


async def test_a_trickle_of_messages_keeps_one_connection(
    peer: Peer, make_channel: Callable[..., SmtpChannel]
) -> None:
    channel = make_channel(peer.port, pool_size=4)

    for number in range(3):
        accepted(await channel.send([email_to(f"ok-{number}@example.ru")]))

    assert len(peer.handler.connections) == 1


async def test_server_restart_between_sends_reconnects(
    peer: Peer, make_channel: Callable[..., SmtpChannel]
) -> None:
    channel = make_channel(peer.port, pool_size=1)
    accepted(await channel.send([email_to("ok-before@example.ru")]))

    await asyncio.to_thread(peer.stop)
    await asyncio.to_thread(peer.start)
    accepted(await channel.send([email_to("ok-after@example.ru")]))

    assert [r.rcpt_tos for r in peer.handler.received] == [
        ["ok-before@example.ru"],
        ["ok-after@example.ru"],
    ]
    assert len(peer.handler.connections) == 2


async def test_idle_timeout_at_the_server_reconnects(
    start_peer: Callable[..., Peer], make_channel: Callable[..., SmtpChannel]
) -> None:
    peer = start_peer(timeout=0.2)
    channel = make_channel(peer.port, pool_size=1)
    accepted(await channel.send([email_to("ok-before@example.ru")]))

    await asyncio.sleep(0.4)
    accepted(await channel.send([email_to("ok-after@example.ru")]))

    assert len(peer.handler.received) == 2
    assert len(peer.handler.connections) == 2


async def test_421_on_a_reused_connection_is_retried_on_a_fresh_one(
    peer: Peer, make_channel: Callable[..., SmtpChannel]
) -> None:
    channel = make_channel(peer.port, pool_size=1)
    accepted(await channel.send([email_to("ok-before@example.ru")]))
    peer.handler.refuse_next_mail = "421 4.3.2 Service shutting down"

    accepted(await channel.send([email_to("ok-after@example.ru")]))

    assert peer.handler.refuse_next_mail is None  # the 421 was given
    assert len(peer.handler.received) == 2
    assert len(peer.handler.connections) == 2


async def test_421_on_a_fresh_connection_is_transient_and_the_next_send_reconnects(
    peer: Peer, make_channel: Callable[..., SmtpChannel]
) -> None:
    channel = make_channel(peer.port, pool_size=1)
    peer.handler.refuse_next_mail = "421 4.3.2 Service shutting down"

    [refused] = await channel.send([email_to("ok-1@example.ru")])
    [outcome] = await channel.send([email_to("ok-2@example.ru")])

    assert isinstance(refused, TransientChannelError)
    assert (refused.code, refused.reply) == (421, "421 4.3.2 Service shutting down")
    assert isinstance(outcome, Accepted)
    assert [r.rcpt_tos for r in peer.handler.received] == [["ok-2@example.ru"]]
    assert len(peer.handler.connections) == 2


async def test_reused_connection_dropped_at_mail_is_retried_on_a_fresh_one(
    peer: Peer, make_channel: Callable[..., SmtpChannel]
) -> None:
    channel = make_channel(peer.port, pool_size=1)
    accepted(await channel.send([email_to("ok-before@example.ru")]))
    peer.handler.drop_next_mail = True

    accepted(await channel.send([email_to("ok-after@example.ru")]))

    assert not peer.handler.drop_next_mail  # the connection was dropped
    assert len(peer.handler.received) == 2
    assert len(peer.handler.connections) == 2


async def test_connection_dropped_after_data_is_transient_not_lost(
    peer: Peer, make_channel: Callable[..., SmtpChannel]
) -> None:
    channel = make_channel(peer.port, pool_size=1)

    dropped, after = await channel.send(
        [email_to("drop-data@example.ru", id=1), email_to("ok@example.ru", id=2)]
    )

    # The server may or may not have kept it: only a retry can tell, never a silent success.
    assert isinstance(dropped, TransientChannelError)
    assert dropped.code is None
    assert "lost" in dropped.reply.lower() or "eof" in dropped.reply.lower()
    assert isinstance(after, Accepted)
    assert len(peer.handler.connections) == 2


async def test_connection_refused_is_transient_for_every_message(
    make_channel: Callable[..., SmtpChannel],
) -> None:
    channel = make_channel(free_port(), pool_size=2)

    outcomes = await channel.send([email_to(f"ok-{n}@example.ru", id=n) for n in range(3)])

    assert len(outcomes) == 3
    for outcome in outcomes:
        assert isinstance(outcome, TransientChannelError)
        assert outcome.code is None
        assert "127.0.0.1" in outcome.reply


async def test_cancelling_a_send_propagates_and_the_pool_recovers(
    peer: Peer, make_channel: Callable[..., SmtpChannel]
) -> None:
    channel = make_channel(peer.port, pool_size=1)
    peer.handler.data_delay = 2.0
    sending = asyncio.create_task(channel.send([email_to("ok-slow@example.ru")]))
    await asyncio.sleep(0.3)

    sending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sending

    peer.handler.data_delay = 0.0
    accepted(await channel.send([email_to("ok-next@example.ru")]))
    assert [r.rcpt_tos for r in peer.handler.received][-1] == ["ok-next@example.ru"]


async def test_auth_with_the_right_credentials(
    start_peer: Callable[..., Peer], make_channel: Callable[..., SmtpChannel]
) -> None:
    peer = start_peer(auth_require_tls=False, authenticator=authenticate)
    channel = make_channel(peer.port, username=USERNAME, password=PASSWORD)

    accepted(await channel.send([email_to("ok@example.ru")]))

    [received] = peer.handler.received
    assert received.authenticated


@pytest.mark.parametrize("mechanism", ["LOGIN", "PLAIN"])
async def test_auth_with_one_mechanism_offered(
    start_peer: Callable[..., Peer], make_channel: Callable[..., SmtpChannel], mechanism: str
) -> None:
    other = {"LOGIN": "PLAIN", "PLAIN": "LOGIN"}[mechanism]
    peer = start_peer(
        auth_require_tls=False, authenticator=authenticate, auth_exclude_mechanism=[other]
    )
    channel = make_channel(peer.port, username=USERNAME, password=PASSWORD)

    accepted(await channel.send([email_to("ok@example.ru")]))

    [received] = peer.handler.received
    assert received.authenticated


async def test_auth_with_wrong_credentials_is_temporary_for_the_message(
    start_peer: Callable[..., Peer], make_channel: Callable[..., SmtpChannel]
) -> None:
    peer = start_peer(auth_require_tls=False, authenticator=authenticate)
    channel = make_channel(peer.port, pool_size=2, username=USERNAME, password="wrong")

    outcomes = await channel.send([email_to(f"ok-{n}@example.ru", id=n) for n in range(2)])

    for outcome in outcomes:
        # Bad credentials are our configuration's fault, not the message's: it waits, and the
        # mailing's error budget pauses the mailing.
        assert isinstance(outcome, TransientChannelError)
        assert outcome.code == 535
        assert outcome.reply.startswith("535 ")
    assert peer.handler.received == []


async def test_starttls(
    start_peer: Callable[..., Peer],
    make_channel: Callable[..., SmtpChannel],
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
) -> None:
    peer = start_peer(tls_context=server_tls, require_starttls=True, authenticator=authenticate)
    channel = make_channel(
        peer.port, client_tls, tls="starttls", username=USERNAME, password=PASSWORD
    )

    accepted(await channel.send([email_to("ok@example.ru", subject="Через STARTTLS")]))

    [received] = peer.handler.received
    assert received.tls
    assert received.authenticated  # AUTH is offered only once TLS is up (the default)
    assert received.message["Subject"] == "Через STARTTLS"


async def test_implicit_tls(
    start_peer: Callable[..., Peer],
    make_channel: Callable[..., SmtpChannel],
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
) -> None:
    peer = start_peer(ssl_context=server_tls)
    channel = make_channel(peer.port, client_tls, tls="tls")

    accepted(await channel.send([email_to("ok@example.ru", subject="Через TLS")]))

    [received] = peer.handler.received
    assert received.tls
    assert received.message["Subject"] == "Через TLS"


async def test_untrusted_certificate_is_refused(
    start_peer: Callable[..., Peer],
    make_channel: Callable[..., SmtpChannel],
    server_tls: ssl.SSLContext,
) -> None:
    peer = start_peer(ssl_context=server_tls)
    channel = make_channel(peer.port, tls="tls")  # the system's trust store only

    [outcome] = await channel.send([email_to("ok@example.ru")])

    assert isinstance(outcome, TransientChannelError)
    assert "certificate" in outcome.reply.lower()
    assert peer.handler.received == []


async def test_unusable_messages_are_permanent_without_touching_the_server(
    peer: Peer, make_channel: Callable[..., SmtpChannel]
) -> None:
    channel = make_channel(peer.port)
    batch = [
        email_to("not an address", id=1),
        email_to("ok@example.ru", id=2, headers={"X-Bad": "a\r\nBcc: spy@example.ru"}),
        email_to("ok@example.ru", id=3, headers={"Content-Type": "text/html"}),
        OutboundMessage(id=4, kind=ChannelKind.SMS, to="+79990000000", text="SMS"),
        email_to("ok@example.ru", id=5),
    ]

    *unusable, good = await channel.send(batch)

    assert all(isinstance(outcome, PermanentChannelError) for outcome in unusable), unusable
    assert isinstance(good, Accepted)
    assert len(peer.handler.received) == 1


def test_config_from_settings() -> None:
    from rassylka.config import Settings

    settings = Settings(
        smtp_host="mail.example.ru",
        smtp_port=587,
        smtp_username="crm",
        smtp_password="secret",
        smtp_tls="starttls",
        smtp_pool_size=8,
        smtp_timeout=10,
        email_from="CRM <crm@example.ru>",
    )

    assert SmtpConfig.from_settings(settings) == SmtpConfig(
        host="mail.example.ru",
        port=587,
        username="crm",
        password="secret",
        tls="starttls",
        pool_size=8,
        timeout=10.0,
        sender="CRM <crm@example.ru>",
    )
    with pytest.raises(ValueError, match="RASSYLKA_SMTP_HOST"):
        SmtpConfig.from_settings(Settings())
