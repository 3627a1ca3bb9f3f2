"""Mailing rules: its template belongs to its project and has a text for every channel."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from rassylka.config import get_settings
from rassylka.db import utcnow
from rassylka.errors import FieldError, NotFound, ValidationFailed
from rassylka.mailings import lifecycle, repository, timing
from rassylka.mailings.models import Channel, Mailing, MailingStatus
from rassylka.mailings.schemas import (
    Counts,
    EventRead,
    MailingCreate,
    MailingStats,
    MailingUpdate,
    MessageRead,
    RetryResult,
    RunRead,
    RunStats,
    ScheduleIn,
    SchedulePreview,
)
from rassylka.messages import queue
from rassylka.messages import repository as message_repository
from rassylka.projects import repository as project_repository
from rassylka.projects import service as project_service
from rassylka.scheduling import ScheduleError, upcoming
from rassylka.templates import repository as template_repository
from rassylka.templates.models import Template

# Fields an update may set to null: the mailing then has none.
CLEARABLE = frozenset({"schedule", "ends_at", "send_window", "audience"})

# Also the answer to a key of another project (access.scope): the same, to reveal nothing.
NOT_FOUND = "Рассылка {} не найдена"


async def create(session: AsyncSession, *, data: MailingCreate) -> Mailing:
    project = await project_repository.get(session, data.project_id)
    if project is None:
        raise ValidationFailed.on("project_id", f"Проект {data.project_id} не найден")
    template = await _template_for(session, project_id=project.id, template_id=data.template_id)
    if problems := channel_problems(template, data.channels):
        raise ValidationFailed(problems)
    if data.status not in (MailingStatus.DRAFT, MailingStatus.ACTIVE, MailingStatus.PAUSED):
        raise ValidationFailed.on(
            "status",
            "Новая рассылка — черновик (0), активна (1) или на паузе (2); завершённой (3) "
            "или отменённой (4) её делает только жизненный цикл",
        )
    timezone = data.timezone or get_settings().default_timezone
    window = timing.checked_window(_dump(data.send_window))
    mailing = Mailing(
        project_id=project.id,
        template_id=template.id,
        name=data.name,
        status=data.status,
        channels=data.channels,
        kind=data.kind,
        timezone=timezone,
        send_window=window,
        audience=_dump(data.audience),
        runs_count=0,
    )
    _set_event(mailing, data.event)
    _set_schedule(mailing, data.schedule)
    mailing.ends_at = timing.end_moment(data.ends_at, timezone) if data.ends_at else None
    timing.plan(mailing)
    await queue.notify_schedule(session)
    return await repository.add(session, mailing)


async def update(session: AsyncSession, *, mailing_id: int, data: MailingUpdate) -> Mailing:
    data.check_path_id(mailing_id)
    mailing = await get(session, mailing_id=mailing_id)
    changes = data.model_dump(exclude_unset=True, exclude={"primary_key"})
    if cleared := [
        name for name, value in changes.items() if value is None and name not in CLEARABLE
    ]:
        raise ValidationFailed(
            [FieldError(field=name, message="Поле нельзя очистить") for name in cleared]
        )
    template_id = changes.get("template_id", mailing.template_id)
    template = await _template_for(session, project_id=mailing.project_id, template_id=template_id)
    channels = changes.get("channels", mailing.channels)
    if problems := channel_problems(template, channels):
        raise ValidationFailed(problems)
    if "status" in changes:
        status = changes.pop("status")
        if status != mailing.status:
            await lifecycle.change(session, mailing, status)
    mailing.timezone = changes.pop("timezone", mailing.timezone)
    if "send_window" in changes:
        mailing.send_window = timing.checked_window(changes.pop("send_window"))
    if "event" in changes:
        # An event given without an offset is read in the mailing's (possibly new) zone.
        _set_event(mailing, changes.pop("event"))
    if "schedule" in changes:
        changes.pop("schedule")
        _set_schedule(mailing, data.schedule)
    if "ends_at" in changes:
        ends_at = changes.pop("ends_at")
        mailing.ends_at = timing.end_moment(ends_at, mailing.timezone) if ends_at else None
    if "audience" in changes:
        changes.pop("audience")
        mailing.audience = _dump(data.audience)
    for name, value in changes.items():
        setattr(mailing, name, value)
    if mailing.status in (MailingStatus.DRAFT, MailingStatus.ACTIVE, MailingStatus.PAUSED):
        timing.plan(mailing)
    await queue.notify_schedule(session)
    await session.flush()
    return mailing


def _dump(model: BaseModel | None) -> dict[str, Any] | None:
    return model.model_dump(exclude_none=True) if model is not None else None


def _set_event(mailing: Mailing, event: str | None) -> None:
    """The one-off moment or the recurrence's start; none given means now."""
    window = timing.window_of(mailing)
    mailing.event_at = timing.moment(event, mailing.timezone, window=window) if event else utcnow()


def _set_schedule(mailing: Mailing, schedule: ScheduleIn | None) -> None:
    mailing.cron = schedule.cron if schedule else None
    mailing.rrule = schedule.rrule if schedule else None
    mailing.max_runs = schedule.max_runs if schedule else None
    mailing.catch_up = schedule.catch_up if schedule else "once"
    mailing.until_at = (
        timing.end_moment(schedule.until, mailing.timezone)
        if schedule is not None and schedule.until
        else None
    )


def channel_problems(template: Template, channels: Sequence[int]) -> list[FieldError]:
    problems = []
    if Channel.EMAIL in channels and not template.has_email:
        problems.append(
            FieldError(
                field="channels",
                message=f"Канал email: в шаблоне {template.id} нет письма (темы и текста)",
            )
        )
    if Channel.SMS in channels and not template.has_sms:
        problems.append(
            FieldError(
                field="channels", message=f"Канал sms: в шаблоне {template.id} нет текста SMS"
            )
        )
    return problems


async def get(session: AsyncSession, *, mailing_id: int) -> Mailing:
    mailing = await repository.get(session, mailing_id)
    if mailing is None:
        raise NotFound.on("id", NOT_FOUND.format(mailing_id))
    return mailing


async def page(
    session: AsyncSession, *, project: str | int | None, status: int | None, limit: int, offset: int
) -> tuple[Sequence[Mailing], int]:
    project_id = None
    if project is not None:
        project_id = (await project_service.resolve(session, reference=project, field="project")).id
    return await repository.page(
        session, project_id=project_id, status=status, limit=limit, offset=offset
    )


async def delete(session: AsyncSession, *, mailing_id: int) -> None:
    """The mailing with its runs (the database's cascade), its messages and events."""
    mailing = await get(session, mailing_id=mailing_id)
    await message_repository.forget_mailings(
        session, mailing_ids=select(Mailing.id).where(Mailing.id == mailing.id)
    )
    await repository.delete(session, mailing)


async def _template_for(session: AsyncSession, *, project_id: int, template_id: int) -> Template:
    template = await template_repository.get(session, template_id)
    if template is None:
        raise ValidationFailed.on("template_id", f"Шаблон {template_id} не найден")
    if template.project_id != project_id:
        raise ValidationFailed.on(
            "template_id",
            f"Шаблон {template_id} принадлежит другому проекту ({template.project_id})",
        )
    return template


def preview(mailing: Mailing, *, count: int) -> SchedulePreview:
    """The next ``count`` run times from now (none once the mailing is over)."""
    zone = ZoneInfo(mailing.timezone)
    times: list[datetime] = []
    if mailing.status in (MailingStatus.DRAFT, MailingStatus.ACTIVE, MailingStatus.PAUSED):
        try:
            schedule = timing.schedule_of(mailing)
        except ScheduleError as error:
            raise ValidationFailed.on(f"schedule.{error.field}", error.message) from None
        now = utcnow()
        if mailing.next_run_at is not None:
            times = [mailing.next_run_at]
            times += upcoming(
                schedule, max(now, mailing.next_run_at), count - 1, mailing.runs_count + 1
            )
        times = [moment for moment in times if mailing.ends_at is None or moment < mailing.ends_at]
    return SchedulePreview(
        timezone=mailing.timezone,
        runs=[moment.astimezone(zone).isoformat() for moment in times[:count]],
    )


async def runs(
    session: AsyncSession, *, mailing_id: int, limit: int, offset: int
) -> tuple[list[RunRead], int]:
    await get(session, mailing_id=mailing_id)
    found, total, counts = await message_repository.runs_page(
        session, mailing_id=mailing_id, limit=limit, offset=offset
    )
    return [
        RunRead(
            id=run.id,
            scheduled_at=run.scheduled_at,
            status=run.status,
            started_at=run.started_at,
            finished_at=run.finished_at,
            total=sum(counts[run.id].values()),
            counts=counts[run.id],
        )
        for run in found
    ], total


async def messages(
    session: AsyncSession,
    *,
    mailing_id: int | None = None,
    client_id: int | None = None,
    status: str | None = None,
    channel: int | None = None,
    limit: int,
    offset: int,
) -> tuple[list[MessageRead], int]:
    """Messages with their history: of a mailing, or (``client_id``) of a client."""
    if mailing_id is not None:
        await get(session, mailing_id=mailing_id)
    found, total, history = await message_repository.messages_page(
        session,
        mailing_id=mailing_id,
        client_id=client_id,
        status=status,
        channel=channel,
        limit=limit,
        offset=offset,
    )
    return [
        MessageRead.model_validate(message).model_copy(
            update={"history": [EventRead.model_validate(e) for e in history[message.id]]}
        )
        for message in found
    ], total


CHANNEL_NAMES = {Channel.EMAIL: "email", Channel.SMS: "sms"}
ATTEMPTED = ("sent", "delivered", "undelivered", "bounced", "failed", "expired")
REPORTED = ("delivered", "undelivered", "bounced")
RATE_WINDOW = 60.0


async def stats(session: AsyncSession, *, mailing_id: int) -> MailingStats:
    await get(session, mailing_id=mailing_id)
    now = utcnow()
    found = await message_repository.stats(
        session, mailing_id=mailing_id, since=now - timedelta(seconds=RATE_WINDOW)
    )
    total = _Tally()
    per_run: dict[int, _Tally] = {}
    runs_of: dict[int, datetime] = {}
    for run_id, scheduled_at, channel, status, count, parts, first, last in found["groups"]:
        runs_of[run_id] = _aware(scheduled_at)
        for tally in (total, per_run.setdefault(run_id, _Tally())):
            tally.add(channel, status, count, parts, first, last)
    return MailingStats(
        total=Counts(**total.counts()),
        runs=[
            RunStats(run_id=run_id, scheduled_at=runs_of[run_id], **tally.counts())
            for run_id, tally in sorted(per_run.items(), key=lambda item: runs_of[item[0]])
        ],
        send_rate=round(found["recent"] / RATE_WINDOW, 3),
    )


class _Tally:
    def __init__(self) -> None:
        self.by_status: dict[str, int] = {}
        self.by_channel: dict[str, dict[str, int]] = {}
        self.parts = 0
        self.first: datetime | None = None
        self.last: datetime | None = None

    def add(
        self,
        channel: int,
        status: str,
        count: int,
        parts: int,
        first: datetime | None,
        last: datetime | None,
    ) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + count
        name = CHANNEL_NAMES.get(Channel(channel), str(channel))
        per = self.by_channel.setdefault(name, {})
        per[status] = per.get(status, 0) + count
        if channel == Channel.SMS:
            self.parts += int(parts)
        if first is not None:
            first = _aware(first)
            self.first = first if self.first is None else min(self.first, first)
        if last is not None:
            last = _aware(last)
            self.last = last if self.last is None else max(self.last, last)

    def counts(self) -> dict[str, Any]:
        attempted = sum(self.by_status.get(status, 0) for status in ATTEMPTED)
        accepted = self.by_status.get("sent", 0) + self.by_status.get("delivered", 0)
        reported = sum(self.by_status.get(status, 0) for status in REPORTED)
        return {
            "messages": sum(self.by_status.values()),
            "by_status": self.by_status,
            "by_channel": self.by_channel,
            "accepted_rate": round(accepted / attempted, 4) if attempted else None,
            "delivery_rate": (
                round(self.by_status.get("delivered", 0) / reported, 4) if reported else None
            ),
            "sms_parts": self.parts,
            "first_sent_at": self.first,
            "last_sent_at": self.last,
        }


def _aware(moment: datetime) -> datetime:
    """Aggregates skip the column type: SQLite hands back naive UTC (or text)."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def retry_failed(session: AsyncSession, *, mailing_id: int) -> RetryResult:
    """Send the failed and undelivered messages again; a completed mailing becomes active."""
    mailing = await get(session, mailing_id=mailing_id)
    if mailing.status not in (
        MailingStatus.ACTIVE,
        MailingStatus.PAUSED,
        MailingStatus.COMPLETED,
    ):
        raise lifecycle.illegal(
            f"Рассылку {mailing.id} нельзя отправить повторно: она "
            f"{lifecycle.STATUS_NAMES[MailingStatus(mailing.status)]}"
        )
    count, run_ids = await message_repository.retry_failed(
        session, mailing_id=mailing.id, now=utcnow()
    )
    if count and mailing.status == MailingStatus.COMPLETED:
        mailing.status = MailingStatus.ACTIVE
        mailing.status_reason = None
    await queue.notify_work(session)
    await session.flush()
    return RetryResult(requeued=count, runs=run_ids)
