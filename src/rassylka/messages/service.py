"""Advancing a due mailing: its occurrence becomes a run with its messages, held for each
recipient's send window, and the next occurrence is set (the scheduler calls this)."""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy.ext.asyncio import AsyncSession

from rassylka.mailings import timing
from rassylka.mailings.models import Channel, Mailing, MailingStatus
from rassylka.messages import repository
from rassylka.projects import repository as project_repository
from rassylka.scheduling import CatchUp, ScheduleError, WindowError, due_occurrence


async def advance(session: AsyncSession, mailing: Mailing, *, now: datetime) -> int | None:
    """Start the mailing's due occurrence, if any, and set when the next one is due.

    At most one run per call whatever the downtime (the mailing's ``catch_up`` decides about
    missed occurrences); the run's messages are made in this transaction, each held until its
    recipient's send window opens. Returns the new run's id.
    """
    try:
        schedule = timing.schedule_of(mailing)
        window = timing.window_of(mailing)
    except (ScheduleError, WindowError) as error:
        # Stored by an older version, or a zone that vanished: stop, say why, send nothing.
        mailing.status = MailingStatus.PAUSED
        mailing.status_reason = f"Расписание не разобрать: {error}"
        mailing.next_run_at = None
        return None
    occurrence, following = due_occurrence(
        schedule,
        last_scheduled=mailing.last_run_at,
        now=now,
        runs_so_far=mailing.runs_count,
        catch_up=cast(CatchUp, mailing.catch_up),
    )
    if mailing.ends_at is not None and following is not None and following >= mailing.ends_at:
        following = None
    mailing.next_run_at = following
    if occurrence is None:
        return None
    mailing.last_run_at = occurrence
    mailing.runs_count += 1
    run_id = await repository.create_run(
        session, mailing_id=mailing.id, scheduled_at=occurrence, now=now
    )
    if run_id is None:
        return None
    project = await project_repository.get(session, mailing.project_id)
    caps: dict[int, int | None] = {}
    if project is not None:  # the project's caps: messages per client per channel per 24 h
        caps = {Channel.EMAIL: project.email_frequency_cap, Channel.SMS: project.sms_frequency_cap}
    await repository.materialize(
        session,
        run_id=run_id,
        mailing_id=mailing.id,
        project_id=mailing.project_id,
        channels=mailing.channels,
        audience=mailing.audience,
        mailing_timezone=mailing.timezone,
        now=now,
        window=window,
        kind=mailing.kind,
        caps=caps,
    )
    return run_id
