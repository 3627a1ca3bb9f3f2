"""Turning due mailings into runs and messages (the simple start rule: an active mailing
whose ``event`` has come; the scheduling issue adds recurrence and send windows)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from rassylka.db import utcnow
from rassylka.messages import repository


async def start_due_mailings(session: AsyncSession) -> list[int]:
    """Start every due mailing once; returns the ids of the runs this call created."""
    now = utcnow()
    runs: list[int] = []
    for mailing in await repository.due_mailings(session, now=now):
        run_id = await repository.create_run(
            session, mailing_id=mailing.id, scheduled_at=mailing.event_at, now=now
        )
        if run_id is None:
            continue
        await repository.materialize(
            session,
            run_id=run_id,
            mailing_id=mailing.id,
            project_id=mailing.project_id,
            channels=mailing.channels,
            now=now,
        )
        runs.append(run_id)
    return runs
