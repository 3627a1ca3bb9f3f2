"""Building the MIME message of an email, shared by the SMTP and outbox transports.

:func:`compose` turns an ``OutboundMessage`` into a ``ComposedEmail``: the envelope (sender and
recipient, internationalised domains in their ASCII form), the message (text/plain, or
multipart/alternative with an HTML part; UTF-8 bodies; ``Date``, ``Message-ID``, when the
channel has one, ``Reply-To``, and with the message's unsubscribe URIs ``List-Unsubscribe`` and
RFC 8058's ``List-Unsubscribe-Post``), and whether it needs SMTPUTF8 (a non-ASCII local part).
``Senders`` gives each message its From and Reply-To: its project's, else the channel's.
``ComposedEmail.as_bytes`` gives its bytes as they go over SMTP, with 8-bit bodies or, for a
server without 8BITMIME, encoded to 7 bits. The Message-ID is the message row's, the same on
every attempt (``MessageIds``).

This is the hot path of every email sent, so the bytes are written directly rather than through
the stdlib's ``EmailMessage`` (its header parsing, policy folding and generator cost ~3 ms a
message). The rules it keeps:

- headers: non-ASCII text (Subject, display names) as RFC 2047 ``=?utf-8?b?…?=`` words of at
  most 75 characters, split on character boundaries; lines folded at 78 characters where the
  text allows and never longer than 998 (a header that cannot be folded so is refused); an
  address's local part stays as it is (UTF-8 only with SMTPUTF8);
- bodies: every line break of the text (``\\r\\n``, a lone ``\\r`` or ``\\n``) becomes CRLF and
  the body ends with one — the canonical form of MIME text (RFC 2046 §4.1.1), so a body decodes
  to the same string whatever transfer encoding carried it; other characters are kept as they
  are. Transfer encoding: ``7bit`` for ASCII, ``8bit`` for UTF-8 when the server takes it;
  otherwise, or when a line exceeds 998 octets (or the text holds a NUL), ``base64`` for
  non-ASCII text (a third smaller than quoted-printable for Cyrillic, where every byte would be
  ``=XX``) and ``quoted-printable`` for ASCII text (barely larger, and still readable).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
from binascii import b2a_base64, b2a_qp
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.errors import NonASCIILocalPartDefect
from email.headerregistry import Address, AddressHeader, HeaderRegistry
from email.utils import format_datetime
from typing import TYPE_CHECKING, Final

from rassylka.channels.base import ChannelKind, OutboundMessage, PermanentChannelError

if TYPE_CHECKING:
    from rassylka.channels.dkim import DkimKey

# Headers ``OutboundMessage.headers`` may not set: the MIME ones would break the structure
# built here, and a Bcc would be sent along (the envelope has one recipient anyway).
_RESERVED_HEADERS = re.compile(r"(?i)^(content-.*|mime-version|bcc|resent-bcc)$")
# RFC 5322 §2.2: a field name is printable ASCII except the colon.
_FIELD_NAME = re.compile(r"^[!-9;-~]+$")
_HEADER_REGISTRY = HeaderRegistry()

# The fast path for addresses: an ASCII dot-atom local part and a host name, alone or after a
# display name of plain words (no quotes, comments or specials). Whatever this does not match
# goes to the stdlib's parser, which takes every form RFC 5322 allows. What it matches, the
# stdlib parses to the same address (checked by a property test).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_ADDR_SPEC = rf"{_ATEXT}+(?:\.{_ATEXT}+)*@{_LABEL}(?:\.{_LABEL})*"
_PLAIN_ADDRESS = re.compile(rf"({_ADDR_SPEC})\Z")
# A display name word: no whitespace, controls, RFC 5322 specials or the start of an encoded
# word ("=?"); non-ASCII letters are fine (RFC 6532).
_NAME_WORD = r"""(?:[^\s\x00-\x1f\x7f"(),.:;<>@\[\]\\=]|=(?!\?))+"""
_NAMED_ADDRESS = re.compile(rf"((?:{_NAME_WORD} )+)<({_ADDR_SPEC})>\Z")
# A display name written as it is: atoms separated by single spaces (RFC 5322 phrase).
_ATOM_PHRASE = re.compile(rf"{_ATEXT}+(?: {_ATEXT}+)*\Z")

_MAX_LINE: Final = 78  # RFC 5322 §2.1.1: SHOULD
_MAX_OCTETS: Final = 998  # ... and MUST, without the CRLF
_ENCODED_WORD_OVERHEAD: Final = len("=?utf-8?b??=")
# 45 bytes make 60 base64 characters: a 72-character word, within RFC 2047's 75 and, after the
# folding space, within a 78-character line.
_ENCODED_WORD_BYTES: Final = 45


@dataclass(frozen=True, slots=True)
class Mailbox:
    """One address, domain in ASCII: what ``parse_sender`` gives, kept per channel."""

    display_name: str
    addr_spec: str
    """``local@domain``, the local part quoted if it needs to be."""
    domain: str

    @property
    def utf8(self) -> bool:
        return not self.addr_spec.isascii()

    def header(self, name: str) -> bytes:
        """The header line (or folded lines) naming this mailbox, CRLF included."""
        if not self.display_name:
            return _fold(name, [self.addr_spec]).encode()
        tokens = _phrase(self.display_name, len(name) + 2)
        tokens.append(f"<{self.addr_spec}>")
        return _fold(name, tokens).encode()


_MESSAGE_ID: Final = re.compile(r"<([1-9][0-9]{0,18})\.([0-9a-fA-F]{20})@([^<>@\s]+)>")
# The Message-ID key when none is given: random, so ids stay unguessable, but only this
# process's (see ``MessageIds``).
_PROCESS_KEY: Final = os.urandom(32)


@dataclass(frozen=True, slots=True)
class MessageIds:
    """The Message-ID of each message row: ``<{id}.{tag}@{domain}>``, where ``tag`` is the
    80-bit BLAKE2b of the id keyed with ``key`` (personalised ``rassylka-msgid``, so it is no
    other use's MAC of the same key), in 20 hex digits.

    The same row gets the same id on every attempt, in every process that has the same key, so
    a retry is the same mail to the recipient's server and to threading. The tag keeps ids of
    two installations sending from one domain apart (their keys differ) and lets no one outside
    guess another message's id from one they hold. The key is ``RASSYLKA_SECRET_KEY``; without
    one, the dispatcher gives each message the installation's stored key
    (``OutboundMessage.message_ids``), and a channel used alone a random key of its process
    (docs/engine.md).
    """

    key: bytes = _PROCESS_KEY
    # Keyed BLAKE2b is a MAC by design (RFC 7693), no HMAC around it needed; with the key
    # taken in once and the state copied per message it costs 0.5 µs a message, as the random
    # id did (HMAC-SHA256: 1.2–1.9 µs). Its key is at most 64 bytes: a longer one is hashed.
    _mac: hashlib.blake2b = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        key = self.key if len(self.key) <= 64 else hashlib.blake2b(self.key).digest()
        mac = hashlib.blake2b(key=key, digest_size=10, person=b"rassylka-msgid")
        object.__setattr__(self, "_mac", mac)

    def of(self, message_id: int, domain: str) -> str:
        mac = self._mac.copy()
        mac.update(b"%d" % message_id)
        return f"<{message_id}.{mac.hexdigest()}@{domain}>"

    def message_id_of(self, value: str) -> int | None:
        """The message row a Message-ID of ours names (its tag checked), else None."""
        match = _MESSAGE_ID.fullmatch(value.strip())
        if match is None:
            return None
        message_id = int(match[1])
        expected = self.of(message_id, match[3])
        return message_id if hmac.compare_digest(expected.lower(), value.strip().lower()) else None

    @classmethod
    def keyed(cls, secret: str | None) -> MessageIds | None:
        """Keyed with ``secret`` (``RASSYLKA_SECRET_KEY``); None without one (then
        ``parse_sender`` takes the process's key)."""
        return cls(secret.encode()) if secret else None


_PROCESS_MESSAGE_IDS: Final = MessageIds()


@dataclass(frozen=True, slots=True)
class Sender:
    """The From mailbox, its header line (and the Reply-To one, if any) built once for every
    message of a channel, and how its Message-IDs are made."""

    mailbox: Mailbox
    from_header: bytes
    reply_to_header: bytes = b""
    message_ids: MessageIds = _PROCESS_MESSAGE_IDS
    utf8: bool = False
    """From or Reply-To has a non-ASCII local part: every message needs SMTPUTF8."""

    @classmethod
    def of(
        cls,
        mailbox: Mailbox,
        *,
        reply_to: Mailbox | None = None,
        message_ids: MessageIds = _PROCESS_MESSAGE_IDS,
    ) -> Sender:
        reply_to_header = reply_to.header("Reply-To") if reply_to is not None else b""
        utf8 = mailbox.utf8 or (reply_to is not None and reply_to.utf8)
        return cls(mailbox, mailbox.header("From"), reply_to_header, message_ids, utf8)

    @property
    def addr_spec(self) -> str:
        return self.mailbox.addr_spec


@dataclass(frozen=True, slots=True)
class _Body:
    """A text part, line breaks already CRLF, and what its transfer encoding depends on."""

    subtype: str
    data: bytes
    ascii: bool
    encode: bool
    """A line too long for SMTP, or a NUL: never sent as it is."""

    def render(self, *, eight_bit: bool) -> bytes:
        if self.encode or not (self.ascii or eight_bit):
            if self.ascii:
                # b2a_qp breaks lines at LF; CRLF is restored after.
                body = b2a_qp(self.data.replace(b"\r\n", b"\n"), istext=True)
                encoding, body = b"quoted-printable", body.replace(b"\n", b"\r\n")
            else:
                encoding = b"base64"
                body = _base64_lines(self.data)
        else:
            encoding, body = (b"7bit" if self.ascii else b"8bit"), self.data
        return b"".join(
            (
                b'Content-Type: text/%s; charset="utf-8"\r\nContent-Transfer-Encoding: '
                % self.subtype.encode(),
                encoding,
                b"\r\n\r\n",
                body,
            )
        )


@dataclass(frozen=True, slots=True)
class ComposedEmail:
    """A message ready for any connection; its bytes depend on the connection (8BITMIME)."""

    sender: str
    """The envelope sender (MAIL FROM), where bounces go: the From address, or the message's
    own VERP address when bounces are taken in (the SMTP transport sets it)."""
    recipient: str
    """The envelope recipient (RCPT TO)."""
    message_id: str
    """The Message-ID header as sent, angle brackets included."""
    utf8: bool
    """Sender, Reply-To or recipient has a non-ASCII local part: needs SMTPUTF8."""
    head: bytes
    """Every header but the Content-* ones of a single part, CRLF-terminated."""
    bodies: tuple[_Body, ...]
    """The text part, and the HTML one if any (then multipart/alternative)."""
    boundary: bytes
    envelope_id: str | None = None
    """ENVID for DSN-capable servers (RFC 3461): the VERP token, echoed in the bounce."""
    dkim: DkimKey | None = None
    """The key the transport signs the bytes it sends with (they depend on 8BITMIME)."""

    def as_bytes(self, *, eight_bit: bool = True) -> bytes:
        """The message as DATA carries it (CRLF line ends, before dot-stuffing); without
        ``eight_bit`` (no 8BITMIME) non-ASCII bodies go in base64. Only ASCII unless
        ``utf8``."""
        if len(self.bodies) == 1:
            return self.head + self.bodies[0].render(eight_bit=eight_bit)
        # The CRLF before a delimiter belongs to it (RFC 2046 §5.1.1), not to the part.
        delimiter = b"\r\n--" + self.boundary + b"\r\n"
        parts = [
            self.head,
            b'Content-Type: multipart/alternative; boundary="%s"\r\n' % self.boundary,
        ]
        for body in self.bodies:
            parts += (delimiter, body.render(eight_bit=eight_bit))
        parts.append(b"\r\n--%s--\r\n" % self.boundary)
        return b"".join(parts)


def parse_sender(
    value: str, *, reply_to: str | None = None, message_ids: MessageIds | None = None
) -> Sender:
    """The From mailbox (and Reply-To, if given), domain in ASCII; ``PermanentChannelError``
    if either is unusable. ``message_ids``: the installation's (``MessageIds.keyed``), else
    this process's."""
    mailbox = _parse_address(value, "sender")
    reply_mailbox = _parse_address(reply_to, "reply-to") if reply_to else None
    try:
        return Sender.of(
            mailbox, reply_to=reply_mailbox, message_ids=message_ids or _PROCESS_MESSAGE_IDS
        )
    except (ValueError, _HeaderTooLong) as error:  # UnicodeEncodeError: a lone surrogate
        raise PermanentChannelError(
            f"invalid sender address {value!r} or reply-to {reply_to!r}"
        ) from error


class Senders:
    """A channel's sender and those of the projects with their own From or Reply-To, each
    parsed once; a project's unusable address fails its messages, not the channel."""

    _MAX_CACHED: Final = 1024

    def __init__(
        self, sender: str, *, reply_to: str | None = None, message_ids: MessageIds | None = None
    ) -> None:
        self.default = parse_sender(sender, reply_to=reply_to, message_ids=message_ids)
        self._sender = sender
        self._reply_to = reply_to
        self._message_ids = message_ids
        self._own: dict[tuple[str, str | None], Sender | str] = {}

    def of(self, message: OutboundMessage) -> Sender:
        """The message's sender; ``PermanentChannelError`` if its project's is unusable."""
        if message.sender is None and message.reply_to is None:
            return self.default
        key = (message.sender or self._sender, message.reply_to or self._reply_to)
        found = self._own.get(key)
        if found is None:
            try:
                found = parse_sender(key[0], reply_to=key[1], message_ids=self._message_ids)
            except PermanentChannelError as error:
                found = error.reply
            if len(self._own) >= self._MAX_CACHED:
                self._own.clear()
            self._own[key] = found
        if isinstance(found, str):
            raise PermanentChannelError(found)
        return found


def compose(message: OutboundMessage, *, sender: Sender | str) -> ComposedEmail:
    """The MIME message for ``message`` from ``sender`` (a ``parse_sender`` result, or text).

    Raises ``PermanentChannelError`` for what no retry can fix: not an email, a recipient that
    is not one valid address, a header that may not or cannot be set, text that is not Unicode
    (a lone surrogate).
    """
    if message.kind is not ChannelKind.EMAIL:
        raise PermanentChannelError(f"an {message.kind} message cannot go by email")
    from_sender = parse_sender(sender) if isinstance(sender, str) else sender
    from_mailbox = from_sender.mailbox
    recipient = _parse_address(message.to, "recipient")
    message_ids = message.message_ids or from_sender.message_ids
    message_id = message_ids.of(message.id, from_mailbox.domain)
    try:
        headers: dict[str, bytes] = {
            "from": from_sender.from_header,
            "to": recipient.header("To"),
        }
        if from_sender.reply_to_header:
            headers["reply-to"] = from_sender.reply_to_header
        if message.subject is not None:
            headers["subject"] = _unstructured("Subject", message.subject)
        headers["date"] = b"Date: %s\r\n" % _date().encode()
        headers["message-id"] = b"Message-ID: %s\r\n" % message_id.encode()
        if message.unsubscribe:
            headers.update(_list_unsubscribe(message.unsubscribe))
        for name, value in message.headers.items():
            if not _FIELD_NAME.match(name) or _RESERVED_HEADERS.match(name):
                raise PermanentChannelError(f"header {name!r} cannot be set on a message")
            if "\r" in value or "\n" in value:
                raise PermanentChannelError(f"header {name!r} has a line break in its value")
            key = name.lower()
            headers.pop(key, None)  # the caller's header replaces ours, as the last one
            line, sent = _custom(name, value)
            headers[key] = line
            if key == "message-id":
                # A caller's own Message-ID header wins; the peer id must be the one sent.
                message_id = sent
        text = _body("plain", message.text)
        bodies = (text,) if message.html is None else (text, _body("html", message.html))
    except (ValueError, _HeaderTooLong) as error:  # UnicodeEncodeError: a lone surrogate
        raise PermanentChannelError(f"cannot build the message: {error}") from error
    boundary = b""
    if len(bodies) > 1:
        boundary = _boundary(bodies)
    headers["mime-version"] = b"MIME-Version: 1.0\r\n"
    return ComposedEmail(
        sender=from_mailbox.addr_spec,
        recipient=recipient.addr_spec,
        message_id=message_id,
        utf8=recipient.utf8 or from_sender.utf8,
        head=b"".join(headers.values()),
        bodies=bodies,
        boundary=boundary,
    )


def _list_unsubscribe(uris: tuple[str, ...]) -> dict[str, bytes]:
    """``List-Unsubscribe`` (RFC 2369) with ``uris``, and ``List-Unsubscribe-Post`` (RFC 8058:
    a POST to the link unsubscribes at once) when one of them is an http(s) link."""
    for uri in uris:
        if not uri.isascii() or not uri.isprintable() or any(c in uri for c in " <>,"):
            raise PermanentChannelError(f"unsubscribe URI {uri!r} cannot go in a header")
    tokens = [f"<{uri}>," for uri in uris]
    tokens[-1] = tokens[-1][:-1]
    headers = {"list-unsubscribe": _fold("List-Unsubscribe", tokens).encode()}
    if any(uri.startswith(("https://", "http://")) for uri in uris):
        headers["list-unsubscribe-post"] = b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    return headers


class _HeaderTooLong(Exception):
    """A header value with a word that no folding gets within 998 octets a line."""


_date_cache: tuple[int, str] = (0, "")


def _date() -> str:
    """The Date header's value now; formatted once a second, as that is its resolution."""
    global _date_cache
    second = int(time.time())
    cached = _date_cache  # one read: another thread (the outbox's) may replace it meanwhile
    if cached[0] != second:
        cached = (second, format_datetime(datetime.fromtimestamp(second, UTC)))
        _date_cache = cached
    return cached[1]


def _boundary(bodies: tuple[_Body, ...]) -> bytes:
    # "=_" occurs in neither base64 nor quoted-printable; an 8-bit or 7-bit body is checked.
    while True:
        boundary = b"=_" + os.urandom(12).hex().encode()
        if not any(boundary in body.data for body in bodies):
            return boundary


def _body(subtype: str, text: str) -> _Body:
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.endswith("\n"):
        text += "\n"
    data = text.encode()
    encode = "\0" in text or (
        len(data) > _MAX_OCTETS and max(map(len, data.split(b"\n"))) > _MAX_OCTETS
    )
    return _Body(subtype, data.replace(b"\n", b"\r\n"), text.isascii(), encode)


def _base64_lines(data: bytes) -> bytes:
    # 57 bytes make a 76-character line (RFC 2045 §6.8).
    return b"".join(b2a_base64(data[i : i + 57]) for i in range(0, len(data), 57)).replace(
        b"\n", b"\r\n"
    )


def _unstructured(name: str, value: str) -> bytes:
    """``name: value`` as text (Subject): as it is if plain ASCII, else encoded words."""
    if _plain_text(value):
        try:
            return _fold(name, value.split(" ")).encode()
        except _HeaderTooLong:
            pass  # a word too long for a line: encoded words can be split anywhere
    return _fold(name, _encoded_words(value, len(name) + 2)).encode()


def _custom(name: str, value: str) -> tuple[bytes, str]:
    """A caller's header line and its value as sent. Plain ASCII values are folded here; the
    rest (non-ASCII text, tabs, runs of spaces) goes through the stdlib's policy, which knows
    each structured header's syntax — slow, but rare."""
    value = value.strip(" \t")
    if _plain_text(value):
        return _fold(name, value.split(" ")).encode(), value
    name, header = policy.SMTP.header_store_parse(name, value)
    line = policy.SMTP.fold_binary(name, header)  # CRLF: the SMTP policy's line ends
    if any(len(part) > _MAX_OCTETS for part in line.split(b"\r\n")):
        raise _HeaderTooLong(f"header {name!r} cannot be folded into lines of 998 octets")
    return line, str(header)


def _plain_text(value: str) -> bool:
    """Text a header carries unencoded, unchanged by unfolding: printable ASCII words between
    single spaces, nothing a reader would take for an encoded word."""
    return (
        value.isascii()
        and value.isprintable()
        and "=?" not in value
        and "  " not in value
        and not value.startswith(" ")
        and not value.endswith(" ")
    )


def _phrase(name: str, column: int) -> list[str]:
    """A display name as tokens: atoms, one quoted string, or encoded words."""
    if not _plain_text(name) or len(name) > _MAX_OCTETS // 2:
        return _encoded_words(name, column)
    if _ATOM_PHRASE.match(name):
        return name.split(" ")
    return ['"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"']


def _encoded_words(text: str, column: int) -> list[str]:
    """``text`` as ``=?utf-8?b?…?=`` words of whole characters; the first one sized to fit
    the line after ``column`` characters when there is room for a few."""
    data = text.encode()
    first = (_MAX_LINE - column - _ENCODED_WORD_OVERHEAD) // 4 * 3
    budget = min(first, _ENCODED_WORD_BYTES) if first >= 12 else _ENCODED_WORD_BYTES
    words = []
    start, size = 0, len(data)
    while start < size:
        end = start + budget
        if end < size:
            while data[end] & 0xC0 == 0x80:  # a UTF-8 continuation byte: not a boundary
                end -= 1
        words.append(f"=?utf-8?b?{b2a_base64(data[start:end], newline=False).decode()}?=")
        start, budget = end, _ENCODED_WORD_BYTES
    return words


def _fold(name: str, tokens: list[str]) -> str:
    """``name: tokens`` joined by spaces, folded before a token that would pass 78."""
    lines = []
    line = name + ":"
    bare = True  # nothing after the colon yet: a fold here would leave the value empty
    for token in tokens:
        if not bare and len(line) + 1 + len(token) > _MAX_LINE:
            lines.append(line)
            line = ""
        line += " " + token
        bare = False
        if len(line) > _MAX_OCTETS:
            raise _HeaderTooLong(f"header {name!r} cannot be folded into lines of 998 octets")
    lines.append(line)
    lines.append("")
    return "\r\n".join(lines)


def _parse_address(value: str, role: str) -> Mailbox:
    """One address (with a display name or not), its domain in ASCII."""
    match = _PLAIN_ADDRESS.match(value)
    if match is not None:
        return Mailbox("", value, value[value.index("@") + 1 :])
    match = _NAMED_ADDRESS.match(value)
    if match is not None:
        addr_spec = match[2]
        return Mailbox(match[1][:-1], addr_spec, addr_spec[addr_spec.index("@") + 1 :])
    return _parse_address_stdlib(value, role)


def _parse_address_stdlib(value: str, role: str) -> Mailbox:
    try:
        header = _HEADER_REGISTRY("To", value)
    # The parser raises what it will on garbage: ValueError, IndexError ("a@"),
    # UnboundLocalError ("<@[ "), HeaderParseError or AttributeError ("\\@["). An address it
    # cannot read is not a valid one, whatever the exception.
    except Exception as error:
        raise PermanentChannelError(f"invalid {role} address {value!r}") from error
    addresses = header.addresses if isinstance(header, AddressHeader) else ()
    # A non-ASCII local part is valid (RFC 6531) and handled with SMTPUTF8; any other defect
    # means the parser had to guess, and a guessed address is not where to send mail.
    defects = [d for d in header.defects if not isinstance(d, NonASCIILocalPartDefect)]
    if len(addresses) != 1 or defects:
        raise PermanentChannelError(f"{role} must be one valid address, not {value!r}")
    address = addresses[0]
    if not address.username or not address.domain:
        raise PermanentChannelError(f"invalid {role} address {value!r}")
    domain = address.domain
    if not domain.isascii():
        # An internationalised domain (пример.рф) in its ASCII form, so only a non-ASCII
        # local part needs SMTPUTF8.
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError as error:
            raise PermanentChannelError(f"invalid domain in {address.addr_spec!r}") from error
        address = Address(address.display_name, address.username, domain)
    return Mailbox(address.display_name, address.addr_spec, domain)
