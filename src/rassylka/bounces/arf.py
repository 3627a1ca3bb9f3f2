"""Reading complaint reports (ARF, RFC 5965) with the standard library's ``email``.

A mailbox provider's feedback loop sends one when a recipient marks a mail as spam: a
``multipart/report; report-type=feedback-report`` whose ``message/feedback-report`` part says
what happened (Feedback-Type ``abuse``, ``fraud``, …; Original-Mail-From, the envelope sender we
used) and whose third part is the original message or its headers. :func:`parse` gives the
report's facts and every reference to our message it carries — the VERP envelope sender
(Original-Mail-From, the original's Return-Path) and the original's Message-ID — so the caller
can find the message by whichever it can check. Whatever is not such a report gives None.
"""

from __future__ import annotations

from dataclasses import dataclass
from email import policy
from email.message import Message
from email.parser import BytesParser, HeaderParser
from email.utils import getaddresses

FEEDBACK_TYPE = "message/feedback-report"
ORIGINAL_TYPES = (
    "message/rfc822",
    "text/rfc822-headers",
    "message/global",
    "message/global-headers",
)
NOT_A_COMPLAINT = "not-spam"
MAX_TEXT = 200


@dataclass(frozen=True)
class Complaint:
    feedback_type: str
    """abuse, fraud, virus, other… (lower-case)."""
    reporter: str | None
    """Who reports: the report's User-Agent or Reporting-MTA."""
    envelope_senders: tuple[str, ...]
    """Original-Mail-From and the original's Return-Path: our VERP address if it was ours."""
    message_ids: tuple[str, ...]
    """The original's Message-ID."""

    def describe(self) -> str:
        """``жалоба на спам (abuse, Yahoo!-Mail-Feedback/2.0)``."""
        facts = ", ".join(part for part in (self.feedback_type, self.reporter) if part)
        return f"жалоба на спам ({facts})"[:MAX_TEXT]


def parse(raw: bytes) -> Complaint | None:
    """The complaint in ``raw`` (a whole mail), or None if it is none (or says not-spam)."""
    try:
        return _parse(raw)
    except Exception:
        # Anyone's bytes: the email package has raised on malformed headers before.
        return None


def _parse(raw: bytes) -> Complaint | None:
    mail = BytesParser(policy=policy.compat32).parsebytes(raw)
    report = next((p for p in mail.walk() if p.get_content_type() == FEEDBACK_TYPE), None)
    if report is None:
        return None
    fields = _fields(report)
    if fields is None:
        return None
    feedback_type = _text(fields.get("Feedback-Type")).lower().split(" ")[0]
    if not feedback_type or feedback_type == NOT_A_COMPLAINT:
        return None
    reporter = _text(fields.get("User-Agent")) or _text(fields.get("Reporting-MTA")) or None
    senders = [_text(value) for value in fields.get_all("Original-Mail-From") or []]
    message_ids: list[str] = []
    original = next((p for p in mail.walk() if p.get_content_type() in ORIGINAL_TYPES), None)
    if original is not None and (headers := _original_headers(original)) is not None:
        senders.extend(_text(value) for value in headers.get_all("Return-Path") or [])
        message_ids.extend(_text(value) for value in headers.get_all("Message-ID") or [])
    envelope_senders = tuple(address for _, address in getaddresses(senders) if address)
    return Complaint(
        feedback_type,
        reporter[:MAX_TEXT] if reporter else None,
        envelope_senders,
        tuple(value for value in message_ids if value),
    )


def _fields(part: Message) -> Message | None:
    """The report's fields: the email package reads a message/* part as a message (its
    headers are the fields); a part left as text is read here."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return payload[0] if payload and isinstance(payload[0], Message) else None
    if isinstance(payload, str):
        return HeaderParser(policy=policy.compat32).parsestr(payload.lstrip())
    return None


def _original_headers(part: Message) -> Message | None:
    payload = part.get_payload()
    if isinstance(payload, list):
        return payload[0] if payload and isinstance(payload[0], Message) else None
    data = part.get_payload(decode=True)
    if isinstance(data, bytes):
        return BytesParser(policy=policy.compat32).parsebytes(data, headersonly=True)
    return None


def _text(value: object) -> str:
    return " ".join(str(value or "").split())
