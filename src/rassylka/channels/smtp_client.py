"""A small asyncio SMTP client: one connection, one transaction at a time, pipelined (RFC 2920)
where the server offers PIPELINING.

Why our own: aiosmtplib, the maintained asyncio client, waits for every reply before the next
command (MAIL, RCPT, DATA, the body: four round trips a message); with PIPELINING the envelope
is one write and one round trip, the body the second. The client speaks only what the SMTP
transport needs: EHLO (HELO if refused), STARTTLS or implicit TLS, AUTH PLAIN / LOGIN /
CRAM-MD5, one MAIL + RCPT + DATA per message, RSET, QUIT.

    SmtpError
    ├── SmtpRefused           the server answered with a refusal (``reply`` has code and text)
    ├── SmtpNotSupported      an extension we were told to use is not offered (STARTTLS, AUTH)
    ├── SmtpProtocolError     a reply that is not SMTP (garbled, line too long): out of step
    ├── SmtpStale             a reused connection was closed before the server took anything
    ├── SmtpConnectionLost    also a ConnectionError: closed or reset mid-exchange
    ├── SmtpConnectError      also a ConnectionError: could not connect (refused, TLS failed)
    └── SmtpTimeout           also a TimeoutError: no reply in time

After any error but ``SmtpRefused`` the connection is closed; after a refusal it is reset (RSET)
and can carry the next transaction, unless the reply was 421 (the server is closing it).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import re
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NoReturn

TlsMode = Literal["none", "starttls", "tls"]

# RFC 5321 allows 512 octets a reply line; real servers go over, but not by this much.
MAX_LINE = 8192
# A multi-line reply longer than this is a server talking nonsense, not an EHLO list.
_MAX_REPLY_LINES = 256
_CLOSING = 421
# MAIL and RCPT are answered 2xx, DATA 354 (3xx).
_ENVELOPE_CLASSES = (2, 2, 3)
_BARE_LINE_END = re.compile(rb"\r(?!\n)|(?<!\r)\n")


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    text: str
    """Lines joined with ``\\n``, decoded (UTF-8, else CP1251: old Russian servers)."""

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


class SmtpError(Exception):
    pass


class SmtpRefused(SmtpError):
    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


class SmtpNotSupported(SmtpError):
    pass


class SmtpProtocolError(SmtpError):
    pass


class SmtpStale(SmtpError):
    pass


class SmtpConnectionLost(SmtpError, ConnectionError):
    pass


class SmtpConnectError(SmtpError, ConnectionError):
    pass


class SmtpTimeout(SmtpError, TimeoutError):
    pass


@dataclass(frozen=True, slots=True)
class ClientConfig:
    host: str
    port: int
    tls: TlsMode = "none"
    username: str | None = None
    password: str | None = None
    timeout: float = 30.0
    """For each round trip: connecting, a reply, a pipelined group's replies, TLS handshakes
    (inside ``send_many``'s run: at least this, at most half as long again)."""
    tls_context: ssl.SSLContext | None = None
    """None: the system's trust store."""


class SmtpClient:
    """One SMTP connection, opened on demand and reopened after it is closed."""

    def __init__(self, config: ClientConfig) -> None:
        self._config = config
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reused = False
        # While ``send_many`` runs: one timeout for all its round trips, pushed forward as they
        # go (``_exchange``), instead of a timeout made and cancelled for each of them.
        self._run_timeout: asyncio.Timeout | None = None
        self.extensions: dict[str, str] = {}
        """EHLO keywords (upper case) and their parameters; empty after HELO."""

    @property
    def is_connected(self) -> bool:
        return self._writer is not None

    def supports(self, extension: str) -> bool:
        return extension.upper() in self.extensions

    async def ensure_connected(self) -> None:
        """Connect, greet, STARTTLS, AUTH, unless already connected. A refusal on the way is
        ``SmtpRefused``; the connection is then closed."""
        if self._reader is not None and self._reader.at_eof():
            self.close()  # the server hung up while the connection was idle
        if self._writer is not None:
            return
        try:
            await self._open()
        except BaseException:
            self.close()
            raise

    async def send(
        self, sender: str, recipient: str, data: bytes, *, options: str = "", utf8: bool = False
    ) -> Reply:
        """One transaction: MAIL FROM (with ``options``), RCPT TO, DATA, the message (CRLF
        line ends, not dot-stuffed); the reply to its end. Pipelined where offered.

        ``SmtpStale`` if this connection carried an earlier transaction and was closed (or
        given 421) before this one's MAIL was taken: the caller may try a fresh connection.
        """
        mail, rcpt = _envelope(Transaction(sender, recipient, data, options, utf8))
        reused, self._reused = self._reused, True
        try:
            if self.supports("PIPELINING"):
                replies = await self._exchange(mail + rcpt + b"DATA\r\n", 3, reused=reused)
            else:
                replies = await self._sequence((mail, rcpt, b"DATA\r\n"), reused=reused)
            refusal = _refusal(replies, _ENVELOPE_CLASSES)
            if refusal is not None:
                await self._refused(refusal, replies)
            [done] = await self._exchange(dot_stuff(data), 1)
            if done.code // 100 != 2:
                await self._refused(done, [done])
            return done
        except SmtpRefused:
            raise
        except BaseException:
            self.close()
            raise

    async def send_many(
        self, transactions: Sequence[Transaction]
    ) -> list[Reply | SmtpError | None]:
        """Several transactions, one round trip each where the server offers PIPELINING: each
        message's content goes in one write with the next one's MAIL, RCPT and DATA (RFC 2920
        3.1: message content may come first in a group), so its end and the next envelope are
        answered together. Without PIPELINING, ``send`` one after another.

        The outcome of each, in order: the reply to its end, its refusal (``SmtpRefused``), or
        the error that ended the connection while it was under way. ``None`` for those after
        it, which the server never began: they may go on another connection at once.
        ``SmtpStale`` (raised) as for ``send``: a reused connection closed before the first
        MAIL was taken.
        """
        if not transactions:
            return []
        envelopes = [b"".join(_envelope(transaction)) + b"DATA\r\n" for transaction in transactions]
        outcomes: list[Reply | SmtpError | None] = [None] * len(transactions)
        if not self.supports("PIPELINING"):
            for index, transaction in enumerate(transactions):
                try:
                    outcomes[index] = await self.send(
                        transaction.sender,
                        transaction.recipient,
                        transaction.data,
                        options=transaction.options,
                        utf8=transaction.utf8,
                    )
                except SmtpRefused as error:
                    outcomes[index] = error
                except SmtpStale:
                    if index == 0:
                        raise
                    break  # never begun: None
                except SmtpError as error:
                    outcomes[index] = error
                    break
                if not self.is_connected:
                    break
            return outcomes
        reused, self._reused = self._reused, True
        try:
            async with asyncio.timeout(None) as self._run_timeout:
                await self._run(transactions, envelopes, outcomes, reused)
        except SmtpStale:
            self.close()
            raise
        except (SmtpError, OSError) as error:
            # The transaction under way gets the error (its content may have gone); those after
            # it were never begun (None). TimeoutError is an OSError: the run's timeout.
            self.close()
            if isinstance(error, TimeoutError) and not isinstance(error, SmtpError):
                error = SmtpTimeout("Timed out waiting for the server's reply")
            under_way = next((i for i, outcome in enumerate(outcomes) if outcome is None), None)
            if under_way is not None:
                outcomes[under_way] = (
                    error if isinstance(error, SmtpError) else SmtpConnectionLost(str(error))
                )
        except BaseException:
            self.close()
            raise
        finally:
            self._run_timeout = None
        return outcomes

    async def _run(
        self,
        transactions: Sequence[Transaction],
        envelopes: list[bytes],
        outcomes: list[Reply | SmtpError | None],
        reused: bool,
    ) -> None:
        """``send_many``'s pipelined loop: fills ``outcomes`` in order; an error ends it."""
        pending = envelopes[0]
        index = 0
        while index < len(transactions):
            replies = await self._exchange(pending, 3, reused=reused and index == 0)
            refusal = _refusal(replies, _ENVELOPE_CLASSES)
            following = envelopes[index + 1] if index + 1 < len(transactions) else b""
            if refusal is not None:
                try:
                    await self._refused(refusal, replies)
                except SmtpRefused as error:
                    outcomes[index] = error
                if not self.is_connected:
                    return
                pending, index = following, index + 1
                continue
            [done] = await self._exchange(dot_stuff(transactions[index].data) + following, 1)
            # The transaction is over whatever the answer: no RSET, which would reset the
            # next one, already under way.
            outcomes[index] = done if done.code // 100 == 2 else SmtpRefused(done)
            if done.code == _CLOSING:
                self.close()
                return
            pending, index = b"", index + 1

    async def quit(self) -> None:
        """QUIT, then close; the server's answer does not matter."""
        try:
            if self._writer is not None:
                await self._exchange(b"QUIT\r\n", 1)
        except (SmtpError, OSError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        self._reused = False
        self.extensions = {}
        if writer is not None:
            writer.close()

    async def _open(self) -> None:
        config = self._config
        context = _tls_context(config) if config.tls == "tls" else None
        try:
            async with asyncio.timeout(config.timeout):
                self._reader, self._writer = await asyncio.open_connection(
                    config.host,
                    config.port,
                    ssl=context,
                    server_hostname=config.host if context else None,
                    limit=MAX_LINE,
                )
        except TimeoutError as error:
            raise SmtpConnectError(
                f"Timed out connecting to {config.host} on port {config.port}"
            ) from error
        except OSError as error:  # refused, unreachable, a certificate we do not trust
            raise SmtpConnectError(
                f"Error connecting to {config.host} on port {config.port}: {error}"
            ) from error
        [greeting] = await self._exchange(b"", 1)
        if greeting.code != 220:
            raise SmtpRefused(greeting)
        await self._hello()
        if config.tls == "starttls":
            if not self.supports("STARTTLS"):
                raise SmtpNotSupported("the server does not offer STARTTLS")
            [ready] = await self._exchange(b"STARTTLS\r\n", 1)
            if ready.code != 220:
                raise SmtpRefused(ready)
            assert self._writer is not None
            try:
                await self._writer.start_tls(
                    _tls_context(config),
                    server_hostname=config.host,
                    ssl_handshake_timeout=config.timeout,
                )
            except TimeoutError as error:
                raise SmtpTimeout("Timed out in the TLS handshake") from error
            except OSError as error:  # a certificate we do not trust, for one
                raise SmtpConnectError(f"TLS with {config.host} failed: {error}") from error
            await self._hello()  # RFC 3207: forget what was offered before TLS
        if config.username:
            await self._login(config.username, config.password or "")

    async def _hello(self) -> None:
        self.extensions = {}
        name = await _greeting_name()
        [reply] = await self._exchange(f"EHLO {name}\r\n".encode(), 1)
        if reply.code == 250:
            for line in reply.text.split("\n")[1:]:  # the first is the server's name
                keyword, _, parameters = line.strip().partition(" ")
                if keyword.upper().startswith("AUTH="):  # the pre-RFC 4954 spelling
                    keyword, parameters = "AUTH", keyword[5:] + " " + parameters
                self.extensions[keyword.upper()] = parameters
            return
        if not 500 <= reply.code < 600:
            raise SmtpRefused(reply)
        [reply] = await self._exchange(f"HELO {name}\r\n".encode(), 1)
        if reply.code != 250:
            raise SmtpRefused(reply)

    async def _login(self, username: str, password: str) -> None:
        if not self.supports("AUTH"):
            raise SmtpNotSupported("the server does not offer AUTH")
        offered = self.extensions["AUTH"].upper().split()
        methods = [method for method in ("PLAIN", "LOGIN", "CRAM-MD5") if method in offered]
        if not methods:
            raise SmtpNotSupported(f"no AUTH method we know among {' '.join(offered)}")
        user, secret = username.encode(), password.encode()
        refused: SmtpRefused | None = None
        for method in methods:
            try:
                await self._authenticate(method, user, secret)
                return
            except SmtpRefused as error:
                # Some servers offer a method they do not take: try the next one, but a
                # temporary failure (454) is an answer for all of them.
                if error.reply.code < 500:
                    raise
                refused = error
        assert refused is not None
        raise refused

    async def _authenticate(self, method: str, user: bytes, secret: bytes) -> None:
        if method == "PLAIN":
            token = _b64(b"\0" + user + b"\0" + secret)
            [reply] = await self._exchange(b"AUTH PLAIN " + token + b"\r\n", 1)
        elif method == "LOGIN":
            [reply] = await self._exchange(b"AUTH LOGIN\r\n", 1)
            for answer in (user, secret):
                if reply.code != 334:
                    break
                [reply] = await self._exchange(_b64(answer) + b"\r\n", 1)
        else:
            [reply] = await self._exchange(b"AUTH CRAM-MD5\r\n", 1)
            if reply.code == 334:
                try:
                    challenge = base64.b64decode(reply.text.encode(), validate=True)
                except ValueError as error:
                    raise SmtpProtocolError(f"a CRAM-MD5 challenge {reply}") from error
                digest = hmac.new(secret, challenge, "md5").hexdigest().encode()
                [reply] = await self._exchange(_b64(user + b" " + digest) + b"\r\n", 1)
        if reply.code != 235:
            if reply.code == 334:  # the server wants more than we have: abandon the exchange
                await self._exchange(b"*\r\n", 1)
            raise SmtpRefused(reply)

    async def _sequence(self, commands: tuple[bytes, ...], *, reused: bool) -> list[Reply]:
        """Without PIPELINING: one command a round trip, stopping at the first refusal."""
        replies: list[Reply] = []
        for command in commands:
            [reply] = await self._exchange(command, 1, reused=reused and not replies)
            replies.append(reply)
            if reply.code // 100 not in (2, 3):
                break  # a refusal: the rest would only be refused too
        return replies

    async def _exchange(self, data: bytes, count: int, *, reused: bool = False) -> list[Reply]:
        """Write ``data`` (if any) and read ``count`` replies, within one timeout; fewer if the
        server refused and then closed the connection (or said 421). With ``reused``, a closed
        connection or a 421 as the first reply is ``SmtpStale``."""
        reader, writer = self._reader, self._writer
        if reader is None or writer is None:
            raise SmtpConnectionLost("Connection lost: not connected")
        replies: list[Reply] = []
        try:
            run = self._run_timeout
            if run is None:
                async with asyncio.timeout(self._config.timeout):
                    await _talk(reader, writer, data, count, replies)
            else:
                # The run's timeout, pushed forward only when less than a whole timeout is left
                # (so every round trip gets between one and one and a half): rescheduling costs
                # about as much as a new timeout, and this skips it for most round trips.
                timeout = self._config.timeout
                now = asyncio.get_running_loop().time()
                when = run.when()
                if when is None or when - now < timeout:
                    run.reschedule(now + timeout * 1.5)
                await _talk(reader, writer, data, count, replies)
        except TimeoutError as error:
            raise SmtpTimeout("Timed out waiting for the server's reply") from error
        except ConnectionError as error:
            if reused and not replies:
                raise SmtpStale(str(error)) from error
            if not replies or replies[-1].code < 400:
                if isinstance(error, SmtpConnectionLost):
                    raise
                raise SmtpConnectionLost(f"Connection lost: {error}") from error
            # Refused, then hung up: the refusal is the answer, the rest will never come.
            self.close()
        if reused and replies[0].code == _CLOSING:
            raise SmtpStale(str(replies[0]))
        return replies

    async def _refused(self, refusal: Reply, replies: list[Reply]) -> NoReturn:
        """End a refused transaction with ``refusal`` as its answer. DATA answered 354 all the
        same (RFC 2920 3.1) is ended with an empty message, which a server with no valid
        recipient must not send; then RSET, so the connection can carry the next one."""
        if any(reply.code == _CLOSING for reply in replies):
            self.close()
            raise SmtpRefused(refusal)
        try:
            if len(replies) == len(_ENVELOPE_CLASSES) and replies[-1].code == 354:
                await self._exchange(b".\r\n", 1)
            [reset] = await self._exchange(b"RSET\r\n", 1)
            if reset.code != 250:
                self.close()
        except (SmtpError, OSError):
            # The refusal stands whatever became of the connection after it.
            self.close()
        raise SmtpRefused(refusal)


@dataclass(frozen=True, slots=True)
class Transaction:
    sender: str
    recipient: str
    data: bytes
    """The message, CRLF line ends, not dot-stuffed."""
    options: str = ""
    """MAIL FROM parameters (SIZE=, BODY=8BITMIME, SMTPUTF8, ENVID=...)."""
    utf8: bool = False


def _envelope(transaction: Transaction) -> tuple[bytes, bytes]:
    """The MAIL and RCPT commands of ``transaction``."""
    encoding = "utf-8" if transaction.utf8 else "ascii"
    sender, recipient, options = transaction.sender, transaction.recipient, transaction.options
    for address in (sender, recipient):
        if "\r" in address or "\n" in address:
            raise ValueError(f"a line break in the address {address!r}")
    mail = f"MAIL FROM:<{sender}>{' ' + options if options else ''}\r\n".encode(encoding)
    return mail, f"RCPT TO:<{recipient}>\r\n".encode(encoding)


def _refusal(replies: list[Reply], classes: tuple[int, ...]) -> Reply | None:
    """The first reply not of its expected class (2 for 2xx...), or None if all are; fewer
    replies than expected (a sequence cut short) means the last is a refusal."""
    for reply, expected in zip(replies, classes, strict=False):
        if reply.code // 100 != expected:
            return reply
    return None if len(replies) == len(classes) else replies[-1]


async def _talk(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    data: bytes,
    count: int,
    replies: list[Reply],
) -> None:
    """Write ``data`` (if any), then read up to ``count`` replies into ``replies`` (fewer if
    one is 421: nothing more will come). What was read stays in ``replies`` if it fails."""
    if data:
        writer.write(data)
        await writer.drain()
    while len(replies) < count:
        reply = await _read_reply(reader)
        replies.append(reply)
        if reply.code == _CLOSING:
            break


async def _read_reply(reader: asyncio.StreamReader) -> Reply:
    lines: list[bytes] = []
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as error:
            raise SmtpConnectionLost("Connection lost: the server closed it (EOF)") from error
        except asyncio.LimitOverrunError as error:
            raise SmtpProtocolError(f"a reply line longer than {MAX_LINE} bytes") from error
        code, separator = line[:3], line[3:4]
        if not code.isdigit() or separator not in (b"-", b" ", b"\r", b"\n"):
            raise SmtpProtocolError(f"not an SMTP reply: {line[:100]!r}")
        lines.append(line[4:].rstrip(b"\r\n"))
        if separator != b"-":
            return Reply(int(code), _decode(b"\n".join(lines)))
        if len(lines) >= _MAX_REPLY_LINES:
            raise SmtpProtocolError(f"a reply of more than {_MAX_REPLY_LINES} lines")


def dot_stuff(data: bytes) -> bytes:
    """The message as DATA carries it: CRLF line ends, a dot doubled at the start of a line,
    and the final ``.`` line."""
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
        data = _BARE_LINE_END.sub(b"\r\n", data)
    if data.startswith(b"."):
        data = b"." + data
    data = data.replace(b"\r\n.", b"\r\n..")
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


def _decode(raw: bytes) -> str:
    """A reply as storable text; a reply in a legacy charset (CP1251 from an old Russian
    server) is kept readable rather than turned into errors the database would refuse."""
    if raw.isascii():
        return raw.decode("ascii")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1251", "replace")


def _b64(raw: bytes) -> bytes:
    return base64.b64encode(raw)


def _tls_context(config: ClientConfig) -> ssl.SSLContext:
    return config.tls_context or ssl.create_default_context()


_local_name: str | None = None


async def _greeting_name() -> str:
    """The name we greet with: this host's FQDN, looked up once per process (in a thread: it
    may ask DNS)."""
    global _local_name
    if _local_name is None:
        name = await asyncio.to_thread(socket.getfqdn)
        _local_name = name if name.isascii() and name and " " not in name else "localhost"
    return _local_name
