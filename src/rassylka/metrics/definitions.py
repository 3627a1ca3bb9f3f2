"""The metrics, on prometheus-client's default registry, and the helpers that count them.

Per process: each process counts what it did itself, and is scraped on its own (``rassylka api
--workers N`` is N targets; Prometheus sums them). The default registry also carries the
process and Python collectors prometheus-client installs.

Labels take bounded values only (two channels, a dozen statuses, a few sources and reasons):
each combination is made once, here, so a count on the hot path is a dict lookup and an
increment, never a label set built per message.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from rassylka.mailings.models import Channel
from rassylka.messages.models import MessageStatus

CHANNELS = {channel.value: channel.name.lower() for channel in Channel}

RETRIED = "retried"
"""A transient failure put the message back in the queue for a later attempt."""
REQUEUED = "requeued"
"""A person queued a failed or undelivered message again (retry-failed)."""
STATUSES = (
    MessageStatus.QUEUED.value,
    MessageStatus.SENT.value,
    MessageStatus.DELIVERED.value,
    MessageStatus.UNDELIVERED.value,
    MessageStatus.BOUNCED.value,
    MessageStatus.FAILED.value,
    MessageStatus.EXPIRED.value,
    MessageStatus.SKIPPED.value,
    RETRIED,
    REQUEUED,
)

MESSAGES = Counter(
    "rassylka_messages",
    "Message status changes made by this process, by channel and new status",
    ["channel", "status"],
)
SEND_SECONDS = Histogram(
    "rassylka_send_seconds",
    "Duration of one call of a channel's send (one message, or a batch where the transport "
    "takes batches)",
    ["channel"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
QUEUE_DEPTH = Gauge(
    "rassylka_queue_depth",
    "Messages queued and due now, by channel (counted at scrape time; NaN if the count failed)",
    ["channel"],
)

SOURCES = ("smpp", "http", "bounce", "complaint")
MATCHED = "matched"
"""The receipt found the message (or SMS part) it names."""
WAITING = "waiting"
"""Stored to wait for its part, not recorded sent yet (counted again when matched or dropped)."""
UNMATCHED = "unmatched"
"""Names no message of ours (an SMSC receipt or callback after a day of waiting)."""
REJECTED = "rejected"
"""Not taken: unreadable, or not stored (the SMSC is told to send it again)."""
OUTCOMES = (MATCHED, WAITING, UNMATCHED, REJECTED)
RECEIPTS = Counter(
    "rassylka_receipts",
    "Delivery receipts, provider callbacks and bounces handled, by source and outcome",
    ["source", "outcome"],
)

WEBHOOK_REASONS = ("http", "timeout", "connection", "error")
WEBHOOK_FAILURES = Counter(
    "rassylka_webhook_failures",
    "Webhook delivery attempts that failed: a non-2xx answer (http), no answer in time "
    "(timeout), no connection (connection), anything else (error)",
    ["reason"],
)

# Every series exists from the start (at 0), so that rate() sees the first increment.
_MESSAGES = {
    (channel, status): MESSAGES.labels(channel=name, status=status)
    for channel, name in CHANNELS.items()
    for status in STATUSES
}
_SEND_SECONDS = {channel: SEND_SECONDS.labels(channel=name) for channel, name in CHANNELS.items()}
_RECEIPTS = {
    (source, outcome): RECEIPTS.labels(source=source, outcome=outcome)
    for source in SOURCES
    for outcome in OUTCOMES
}
_WEBHOOK_FAILURES = {reason: WEBHOOK_FAILURES.labels(reason=reason) for reason in WEBHOOK_REASONS}
for _name in CHANNELS.values():
    QUEUE_DEPTH.labels(channel=_name)


def send_seconds(channel: int) -> Histogram:
    """The latency histogram of one channel (taken once by each dispatcher lane)."""
    return _SEND_SECONDS[channel]


def receipt(source: str, outcome: str, count: int = 1) -> None:
    if count:
        _RECEIPTS[source, outcome].inc(count)


def webhook_failed(reason: str) -> None:
    _WEBHOOK_FAILURES[reason].inc()


# -- counted when the transaction commits ---------------------------------------------------
#
# Status changes are written by repository functions inside their caller's transaction, which
# may still roll back: they note what they changed on the session, and it is counted when (and
# only if) that transaction commits. One listener for every session of the process; a commit
# that noted nothing costs it a dict lookup.

_PENDING = "rassylka_metrics_pending"


def _pending(session: AsyncSession) -> Tally[Any]:
    tally: Tally[Any] = session.info.setdefault(_PENDING, Tally())
    return tally


def on_commit(session: AsyncSession, changes: Iterable[tuple[int, str]]) -> None:
    """Count these (channel, status) changes once ``session``'s transaction commits."""
    tally = _pending(session)
    for key in changes:
        tally[_MESSAGES[key]] += 1


def on_commit_counts(session: AsyncSession, counts: Iterable[tuple[int, str, int]]) -> None:
    """``on_commit`` with counts: (channel, status, how many)."""
    tally = _pending(session)
    for channel, status, count in counts:
        if count:
            tally[_MESSAGES[channel, status]] += count


def receipt_on_commit(session: AsyncSession, source: str, outcome: str, count: int = 1) -> None:
    """Count receipts once ``session``'s transaction commits (an API request's, say)."""
    if count:
        _pending(session)[_RECEIPTS[source, outcome]] += count


def _committed(session: Session) -> None:
    tally: Tally[Any] | None = session.info.pop(_PENDING, None)
    if tally:
        for child, count in tally.items():
            child.inc(count)


def _rolled_back(session: Session, *_: Any) -> None:
    session.info.pop(_PENDING, None)


event.listen(Session, "after_commit", _committed)
event.listen(Session, "after_rollback", _rolled_back)
