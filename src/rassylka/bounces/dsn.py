"""Reading delivery status notifications (RFC 3464) with the standard library's ``email``.

:func:`parse` finds the ``message/delivery-status`` part of a mail (normally the second part of
a ``multipart/report; report-type=delivery-status``) and reads each recipient's Action, Status,
Final-Recipient and Diagnostic-Code; :meth:`Report.verdict` says what the report means for the
one message it is about. Whatever is not a DSN (an auto-reply, junk, a bounce in some MTA's own
prose) gives None.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email import policy
from email.message import Message
from email.parser import BytesParser, HeaderParser
from email.utils import getaddresses
from enum import StrEnum

DELIVERY_STATUS_TYPES = ("message/delivery-status", "message/global-delivery-status")
# RFC 3463: class.subject.detail, the class 2 (success), 4 (temporary) or 5 (permanent).
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
MAX_TEXT = 900
# A report names the recipients of one SMTP transaction; more blocks than this is not a DSN.
MAX_RECIPIENTS = 1000


class Kind(StrEnum):
    HARD = "hard"
    """Failed with a permanent status (5.x.x): the address does not take mail."""
    FAILED = "failed"
    """Failed without a permanent status (e.g. 4.4.7, given up after the queue lifetime): this
    message is lost, the address may be fine."""
    SOFT = "soft"
    """Delayed (4.x.x): still being tried; a note, nothing is final."""
    DELIVERED = "delivered"


# Which recipient's verdict wins when one report names several (aliases, forwarding).
_SEVERITY = {Kind.HARD: 3, Kind.FAILED: 2, Kind.SOFT: 1, Kind.DELIVERED: 0}


@dataclass(frozen=True)
class Verdict:
    kind: Kind
    status: str
    """The enhanced status code, ``5.1.1``; empty when the report gave none."""
    diagnostic: str | None = None
    recipient: str | None = None

    def describe(self) -> str:
        """``5.1.1 550 5.1.1 <ivan@example.ru>: Recipient address rejected``."""
        return " ".join(part for part in (self.status, self.diagnostic) if part)[:MAX_TEXT]


@dataclass(frozen=True)
class RecipientStatus:
    action: str
    """failed, delayed, delivered, relayed or expanded (lower-case)."""
    status: str | None
    final_recipient: str | None
    original_recipient: str | None
    diagnostic: str | None

    def verdict(self) -> Verdict | None:
        """None for relayed and expanded (nothing to report on the message) and nonsense."""
        permanent = self.status is not None and self.status.startswith("5.")
        if self.action == "failed":
            kind = Kind.HARD if permanent else Kind.FAILED
        elif self.action == "delayed" and not permanent:
            kind = Kind.SOFT
        elif self.action == "delivered":
            kind = Kind.DELIVERED
        else:
            return None
        recipient = self.final_recipient or self.original_recipient
        return Verdict(kind, self.status or "", self.diagnostic, recipient)


@dataclass(frozen=True)
class Report:
    envelope_id: str | None
    """Original-Envelope-Id: the ENVID given at MAIL FROM (our VERP token)."""
    recipients: tuple[RecipientStatus, ...]
    addressed_to: tuple[str, ...]
    """Where the report itself was sent (To, Delivered-To, X-Original-To, Envelope-To): for a
    report handed over outside SMTP, the VERP address is there."""

    def verdict(self) -> Verdict | None:
        verdicts = [v for r in self.recipients if (v := r.verdict()) is not None]
        if not verdicts:
            return None
        return max(verdicts, key=lambda verdict: _SEVERITY[verdict.kind])


def parse(raw: bytes) -> Report | None:
    """The report in ``raw`` (a whole mail), or None if it holds no delivery status."""
    try:
        return _parse(raw)
    except Exception:
        # The input is anyone's bytes, and the email package has raised on malformed headers
        # before (IndexError, AttributeError in its header parser); such a mail is no DSN.
        return None


def _parse(raw: bytes) -> Report | None:
    mail = BytesParser(policy=policy.compat32).parsebytes(raw)
    part = next(
        (p for p in mail.walk() if p.get_content_type() in DELIVERY_STATUS_TYPES),
        None,
    )
    if part is None:
        return None
    blocks = _blocks(part)
    if not blocks:
        return None
    per_message, per_recipient = blocks[0], blocks[1:]
    recipients = tuple(
        RecipientStatus(
            action=(_field(block, "Action") or "").lower().split(" ")[0],
            status=_status(_field(block, "Status")),
            final_recipient=_address(_field(block, "Final-Recipient")),
            original_recipient=_address(_field(block, "Original-Recipient")),
            diagnostic=_diagnostic(_field(block, "Diagnostic-Code")),
        )
        for block in per_recipient[:MAX_RECIPIENTS]
        if _field(block, "Action") or _field(block, "Final-Recipient")
    )
    if not recipients:
        return None
    headers = [
        _text(value)
        for name in ("To", "Delivered-To", "X-Original-To", "Envelope-To")
        for value in mail.get_all(name) or []
    ]
    addressed_to = tuple(address for _, address in getaddresses(headers) if address)
    envelope_id = _field(per_message, "Original-Envelope-Id")
    return Report(envelope_id, recipients, addressed_to)


def _blocks(part: Message) -> list[Message]:
    """The field groups of a delivery-status part: per message first, then per recipient."""
    payload = part.get_payload()
    if part.get_content_type() == "message/delivery-status" and isinstance(payload, list):
        # The parser has split it already, one Message per blank-line separated group.
        return [block for block in payload if isinstance(block, Message)]
    if isinstance(payload, list):
        # message/global-delivery-status is parsed like message/rfc822: one nested message
        # whose headers are the first group and whose body holds the rest.
        text = "".join(_text(block.as_string()) for block in payload if isinstance(block, Message))
    else:
        decoded = part.get_payload(decode=True)
        text = decoded.decode("utf-8", "replace") if isinstance(decoded, bytes) else str(payload)
    groups = re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n").strip())
    parser = HeaderParser(policy=policy.compat32)
    return [parser.parsestr(group + "\n") for group in groups if group.strip()]


def _field(block: Message, name: str) -> str | None:
    value = block.get(name)
    if value is None:
        return None
    text = " ".join(_text(value).split())  # unfolded
    return text or None


def _text(value: object) -> str:
    """A header as text: compat32 hands back non-ASCII bytes as surrogates (or a Header)."""
    text = str(value)
    if text.isascii():
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _status(value: str | None) -> str | None:
    match = _STATUS.search(value or "")
    return None if match is None else ".".join(match.groups())


def _typed(value: str | None) -> str | None:
    """The value of a typed field (``rfc822; ivan@example.ru``, ``smtp; 550 …``)."""
    if value is None:
        return None
    kind, semicolon, rest = value.partition(";")
    text = (rest if semicolon and " " not in kind.strip() else value).strip()
    return text or None


def _address(value: str | None) -> str | None:
    address = _typed(value)
    return address.strip("<>") if address else None


def _diagnostic(value: str | None) -> str | None:
    text = _typed(value)
    return text[:MAX_TEXT] if text else None
