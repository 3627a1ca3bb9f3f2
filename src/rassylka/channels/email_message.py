"""Building the MIME message of an email, shared by the SMTP and outbox transports.

:func:`compose` turns an ``OutboundMessage`` into a ``ComposedEmail``: the envelope (sender and
recipient, internationalised domains in their ASCII form), the ``EmailMessage`` (text/plain, or
multipart/alternative with an HTML part; UTF-8 bodies; ``Date`` and ``Message-ID``), and whether
it needs SMTPUTF8 (a non-ASCII local part). :func:`flatten` gives its bytes as they go over SMTP,
with 8-bit bodies or, for a server without 8BITMIME, re-encoded to 7 bits.
"""

from __future__ import annotations

import io
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.errors import NonASCIILocalPartDefect
from email.generator import BytesGenerator
from email.headerregistry import Address, AddressHeader, HeaderRegistry
from email.message import EmailMessage
from email.utils import format_datetime

from rassylka.channels.base import ChannelKind, OutboundMessage, PermanentChannelError

# Headers ``OutboundMessage.headers`` may not set: the MIME ones would break the structure
# built here, and a Bcc would be sent along (the envelope has one recipient anyway).
_RESERVED_HEADERS = re.compile(r"(?i)^(content-.*|mime-version|bcc|resent-bcc)$")
# RFC 5322 §2.2: a field name is printable ASCII except the colon.
_FIELD_NAME = re.compile(r"^[!-9;-~]+$")
_HEADER_REGISTRY = HeaderRegistry()


@dataclass(frozen=True)
class ComposedEmail:
    """A message ready for any connection; flattened per connection (8BITMIME or not)."""

    sender: str
    """The envelope sender (MAIL FROM), where bounces go: the From address, or the message's
    own VERP address when bounces are taken in (the SMTP transport sets it)."""
    recipient: str
    """The envelope recipient (RCPT TO)."""
    mail: EmailMessage
    message_id: str
    """The Message-ID header as sent, angle brackets included."""
    utf8: bool
    """Sender or recipient has a non-ASCII local part: needs SMTPUTF8."""
    envelope_id: str | None = None
    """ENVID for DSN-capable servers (RFC 3461): the VERP token, echoed in the bounce."""

    def as_bytes(self, *, eight_bit: bool = True) -> bytes:
        """The message as DATA carries it (CRLF line ends, before dot-stuffing)."""
        return flatten(self.mail, utf8=self.utf8, eight_bit=eight_bit)


def parse_sender(value: str) -> Address:
    """The From header's address, domain in ASCII; ``PermanentChannelError`` if unusable."""
    return _ascii_domain(_parse_address(value, "sender"))


def compose(message: OutboundMessage, *, sender: Address | str) -> ComposedEmail:
    """The MIME message for ``message`` from ``sender`` (a ``parse_sender`` result, or text).

    Raises ``PermanentChannelError`` for what no retry can fix: not an email, a recipient that
    is not one valid address, a header that may not or cannot be set.
    """
    if message.kind is not ChannelKind.EMAIL:
        raise PermanentChannelError(f"an {message.kind} message cannot go by email")
    from_header = parse_sender(sender) if isinstance(sender, str) else sender
    recipient = _ascii_domain(_parse_address(message.to, "recipient"))
    message_id = f"<{uuid.uuid4().hex}@{from_header.domain}>"
    mail = EmailMessage(policy=policy.SMTP)
    try:
        mail["From"] = from_header
        mail["To"] = recipient
        if message.subject is not None:
            mail["Subject"] = message.subject
        mail["Date"] = format_datetime(datetime.now(UTC))
        mail["Message-ID"] = message_id
        for name, value in message.headers.items():
            if not _FIELD_NAME.match(name) or _RESERVED_HEADERS.match(name):
                raise PermanentChannelError(f"header {name!r} cannot be set on a message")
            del mail[name]
            mail[name] = value
        mail.set_content(message.text)
        if message.html is not None:
            mail.add_alternative(message.html, subtype="html")
    except ValueError as error:  # a header value with a line break, for one
        raise PermanentChannelError(f"cannot build the message: {error}") from error
    return ComposedEmail(
        sender=from_header.addr_spec,
        recipient=recipient.addr_spec,
        mail=mail,
        # A caller's own Message-ID header wins; the peer id must be the one sent.
        message_id=str(mail["Message-ID"]),
        utf8=not (recipient.addr_spec.isascii() and from_header.addr_spec.isascii()),
    )


def flatten(mail: EmailMessage, *, utf8: bool, eight_bit: bool) -> bytes:
    chosen = policy.SMTPUTF8 if utf8 else policy.SMTP
    if not eight_bit:
        # Without 8BITMIME the generator re-encodes 8-bit bodies (base64 for UTF-8).
        chosen = chosen.clone(cte_type="7bit")
    buffer = io.BytesIO()
    BytesGenerator(buffer, policy=chosen).flatten(mail)
    return buffer.getvalue()


def _parse_address(value: str, role: str) -> Address:
    try:
        header = _HEADER_REGISTRY("To", value)
    except (ValueError, IndexError) as error:  # the parser's IndexError: "a@"
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
    return address


def _ascii_domain(address: Address) -> Address:
    """The address with an internationalised domain (``пример.рф``) in its ASCII form, so
    only a non-ASCII local part needs SMTPUTF8."""
    if address.domain.isascii():
        return address
    try:
        domain = address.domain.encode("idna").decode("ascii")
    except UnicodeError as error:
        raise PermanentChannelError(f"invalid domain in {address.addr_spec!r}") from error
    return Address(address.display_name, address.username, domain)
