"""A mailing's life: draft → active ⇄ paused → completed, or cancelled; the legal moves only.

    start   0 → 1     the schedule begins (a due moment in the past starts at once)
    pause   1 → 2     no new sends within a second; queued messages wait
    resume  2 → 1     sending goes on; nothing sent is sent again
    cancel  0,1,2 → 4 what is still queued expires; no new runs

``3`` (completed) is reached by the engine only: the last run finished, or ``ends_at`` passed.
"""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy.ext.asyncio import AsyncSession

from rassylka.db import utcnow
from rassylka.errors import Conflict, FieldError
from rassylka.mailings.models import Mailing, MailingStatus
from rassylka.messages import queue

CANCELLED_REASON = "Рассылка отменена"
ILLEGAL = "Недопустимая смена статуса рассылки"
STATUS_NAMES = {
    MailingStatus.DRAFT: "черновик",
    MailingStatus.ACTIVE: "активна",
    MailingStatus.PAUSED: "приостановлена",
    MailingStatus.COMPLETED: "завершена",
    MailingStatus.CANCELLED: "отменена",
}


class Action(StrEnum):
    START = "start"
    PAUSE = "pause"
    RESUME = "resume"
    CANCEL = "cancel"


MOVES: dict[Action, tuple[frozenset[int], MailingStatus]] = {
    Action.START: (frozenset({MailingStatus.DRAFT}), MailingStatus.ACTIVE),
    Action.PAUSE: (frozenset({MailingStatus.ACTIVE}), MailingStatus.PAUSED),
    Action.RESUME: (frozenset({MailingStatus.PAUSED}), MailingStatus.ACTIVE),
    Action.CANCEL: (
        frozenset({MailingStatus.DRAFT, MailingStatus.ACTIVE, MailingStatus.PAUSED}),
        MailingStatus.CANCELLED,
    ),
}


async def apply(session: AsyncSession, mailing: Mailing, action: Action) -> Mailing:
    sources, target = MOVES[action]
    if mailing.status not in sources:
        current = STATUS_NAMES[MailingStatus(mailing.status)]
        raise illegal(f"Нельзя {_VERBS[action]} рассылку {mailing.id}: она {current}")
    now = utcnow()
    mailing.status = target
    mailing.status_reason = None
    if action is Action.CANCEL:
        mailing.next_run_at = None
        await session.flush()  # the mailing's row before the events (see messages.queue)
        await queue.expire_queued(session, mailing_id=mailing.id, reason=CANCELLED_REASON, now=now)
    await queue.notify_schedule(session)
    await session.flush()
    return mailing


async def change(session: AsyncSession, mailing: Mailing, status: int) -> Mailing:
    """A status set through update: the same moves as the actions, nothing else."""
    for action, (sources, target) in MOVES.items():
        if target == status and mailing.status in sources:
            return await apply(session, mailing, action)
    current = STATUS_NAMES[MailingStatus(mailing.status)]
    wanted = STATUS_NAMES[MailingStatus(status)]
    raise illegal(f"Рассылку {mailing.id} нельзя перевести из «{current}» в «{wanted}»")


def illegal(reason: str) -> Conflict:
    return Conflict([FieldError(field="status", message=reason)], message=ILLEGAL)


_VERBS = {
    Action.START: "запустить",
    Action.PAUSE: "приостановить",
    Action.RESUME: "возобновить",
    Action.CANCEL: "отменить",
}
