"""What a bounce does to its message: hard → ``bounced`` and the address suppressed in the
project; failed → ``bounced``; soft → a note on the ``sent`` message; delivered → ``delivered``.

Unlike other services this one owns its transactions (it takes a sessionmaker): suppressing the
address (and skipping what is queued for it) and settling the message each write message
events, and events must be the last rows of a transaction (messages/queue.py). So they are two
transactions, suppression first; both are idempotent, so a failure between them is repaired by
the MTA's (or the provider's) retry of the same bounce.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from rassylka.bounces import repository
from rassylka.bounces.arf import Complaint
from rassylka.bounces.dsn import Kind, Report, Verdict
from rassylka.bounces.schemas import BounceReport
from rassylka.bounces.verp import Verp
from rassylka.channels.email_message import MessageIds
from rassylka.clients.optout import normalized, opt_out
from rassylka.db import utcnow
from rassylka.errors import NotFound, ValidationFailed
from rassylka.mailings.models import Channel
from rassylka.messages import queue
from rassylka.messages.models import MessageStatus
from rassylka.metrics import definitions as metrics
from rassylka.projects import service as project_service
from rassylka.suppressions import service as suppression_service
from rassylka.suppressions.schemas import MAX_REASON

STATUS_OF = {
    Kind.HARD: MessageStatus.BOUNCED,
    Kind.FAILED: MessageStatus.BOUNCED,
    Kind.SOFT: MessageStatus.SENT,
    Kind.DELIVERED: MessageStatus.DELIVERED,
}
SOFT_PREFIX = "soft bounce"
SUPPRESSION_PREFIX = "bounced"


@dataclass(frozen=True)
class Applied:
    message_id: int
    status: str
    """The message's status afterwards."""
    changed: bool
    """False when the message was no longer ``sent`` (a duplicate or late bounce)."""
    suppressed: str | None
    """The address put on the project's suppression list (a hard bounce)."""


def reason_of(verdict: Verdict) -> str | None:
    text = verdict.describe()
    if verdict.kind is Kind.SOFT:
        return f"{SOFT_PREFIX} {text}".strip()
    return text or None


async def apply(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    message_id: int,
    verdict: Verdict,
    project_id: int | None = None,
) -> Applied | None:
    """Apply ``verdict`` to the message; None if there is no such message (or, with
    ``project_id``, none in that project: a project-scoped key's).

    A message that is no longer ``sent`` changes nothing, and then nothing is suppressed
    either: the bounce is a duplicate, or came after a verdict already given.
    """
    applied = await _apply(
        sessionmaker, message_id=message_id, verdict=verdict, project_id=project_id
    )
    metrics.receipt("bounce", metrics.UNMATCHED if applied is None else metrics.MATCHED)
    return applied


async def _apply(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    message_id: int,
    verdict: Verdict,
    project_id: int | None,
) -> Applied | None:
    suppressed: str | None = None
    async with sessionmaker() as session, session.begin():
        target = await repository.target(session, message_id=message_id)
        if target is None or project_id not in (None, target.project_id):
            return None
        if target.status != MessageStatus.SENT:
            return Applied(target.id, target.status, False, None)
        if verdict.kind is Kind.HARD and target.address:
            suppressed = normalized(target.address)
            reason = f"{SUPPRESSION_PREFIX}: {verdict.describe()}"[:MAX_REASON]
            await suppression_service.suppress(
                session, project_id=target.project_id, address=suppressed, reason=reason
            )
    status = STATUS_OF[verdict.kind]
    async with sessionmaker() as session, session.begin():
        changed = await queue.settle(
            session,
            verdicts=[queue.Verdict(message_id, status, reason_of(verdict))],
            now=utcnow(),
        )
        if not changed:  # settled by someone else between the two transactions
            target = await repository.target(session, message_id=message_id)
            return Applied(message_id, target.status if target else status, False, suppressed)
    return Applied(message_id, status, True, suppressed)


NOT_CONFIGURED = "Возвраты по VERP не настроены (RASSYLKA_BOUNCE_DOMAIN)"


def verdict_of(report: BounceReport) -> Verdict:
    kind = Kind.HARD if report.type == "hard" else Kind.SOFT
    status = report.status or ("5.0.0" if kind is Kind.HARD else "4.0.0")
    return Verdict(kind, status, report.diagnostic)


async def find(session: AsyncSession, *, report: BounceReport, verp: Verp | None) -> int:
    """The id of the message a provider's report names; 404 if none, 400 if it cannot say."""
    if report.message_id is not None:
        return report.message_id
    if report.token is not None:
        if verp is None:
            raise ValidationFailed.on("token", NOT_CONFIGURED)
        message_id = verp.message_id_of_any(report.token)
        if message_id is None:
            raise NotFound.on("token", "Нет сообщения с таким токеном (или подпись неверна)")
        return message_id
    # The schema's rule: project and email come together.
    assert report.project is not None
    assert report.email is not None
    project = await project_service.resolve(session, reference=report.project, field="project")
    message_id = await repository.latest_email_to(
        session, project_id=project.id, address=normalized(report.email)
    )
    if message_id is None:
        raise NotFound.on("email", f"В проекте нет писем на {report.email}")
    return message_id


def find_in_dsn(report: Report | None, *, verp: Verp | None) -> tuple[int, Verdict]:
    """The message a DSN handed over outside SMTP is about (by its ENVID, or the VERP address
    it was sent to) and its verdict; 400 if it is none, 404 if it names no message of ours."""
    if verp is None:
        raise ValidationFailed.on("body", NOT_CONFIGURED)
    if report is None:
        raise ValidationFailed.on("body", "Не отчёт о доставке (RFC 3464, message/delivery-status)")
    verdict = report.verdict()
    if verdict is None:
        raise ValidationFailed.on(
            "body", "В отчёте нет получателя с действием failed, delayed или delivered"
        )
    if report.envelope_id is not None:
        message_id = verp.message_id(report.envelope_id)
        if message_id is not None:
            return message_id, verdict
    for address in report.addressed_to:
        message_id = verp.message_id_of(address, any_domain=True)
        if message_id is not None:
            return message_id, verdict
    raise NotFound.on("body", "Отчёт не называет ни одного сообщения Rassylka (ENVID или адрес)")


COMPLAINT = "complaint"


async def complain(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    message_id: int,
    description: str,
    project_id: int | None = None,
) -> Applied | None:
    """A recipient marked the message as spam: the address is opted out of the project's email
    (suppressed, consent denied, what is queued skipped, an ``unsubscribed`` event with the
    complaint as its reason — ``clients.optout``). The message keeps its status: it was
    delivered. None if there is no such email message (in ``project_id``, with one)."""
    async with sessionmaker() as session, session.begin():
        target = await repository.target(session, message_id=message_id)
        if (
            target is None
            or target.channel != Channel.EMAIL
            or not target.address
            or project_id not in (None, target.project_id)
        ):
            applied = None
        else:
            done = await opt_out(
                session,
                project_id=target.project_id,
                channel=Channel.EMAIL,
                address=target.address,
                source=description,
                now=utcnow(),
                message_id=target.id,
            )
            applied = Applied(target.id, target.status, done.changed, done.address)
    metrics.receipt(COMPLAINT, metrics.UNMATCHED if applied is None else metrics.MATCHED)
    return applied


def find_complained(
    complaint: Complaint, *, verp: Verp | None, message_ids: MessageIds | None
) -> int | None:
    """The message a complaint is about: by its VERP envelope sender, else its Message-ID."""
    if verp is not None:
        for address in complaint.envelope_senders:
            if (found := verp.message_id_of(address, any_domain=True)) is not None:
                return found
    if message_ids is not None:
        for value in complaint.message_ids:
            if (found := message_ids.message_id_of(value)) is not None:
                return found
    return None
