"""A mailing's schedule and send window as the scheduling package sees them, and the moment
of its next run. The one bridge between the stored columns and ``rassylka.scheduling``."""

from __future__ import annotations

from datetime import date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from rassylka.errors import ValidationFailed
from rassylka.mailings.models import Mailing
from rassylka.mailings.schemas import parse_event
from rassylka.scheduling import (
    Schedule,
    ScheduleError,
    ScheduleKind,
    SendWindow,
    WindowError,
    first_occurrence,
    next_occurrence,
    parse_window,
    wall_to_utc,
)


def schedule_of(mailing: Mailing) -> Schedule:
    """The mailing's schedule; ScheduleError if its stored rule is no longer valid."""
    kind: ScheduleKind = "cron" if mailing.cron else "rrule" if mailing.rrule else "once"
    return Schedule(
        kind=kind,
        start=mailing.event_at,
        timezone=mailing.timezone,
        cron=mailing.cron,
        rrule=mailing.rrule,
        until=mailing.until_at,
        max_runs=mailing.max_runs,
    )


def window_of(mailing: Mailing) -> SendWindow | None:
    return parse_window(mailing.send_window) if mailing.send_window else None


def checked_window(data: dict[str, Any] | None) -> dict[str, Any] | None:
    """The API's send window, validated and stored in its canonical form."""
    if data is None:
        return None
    try:
        return parse_window(data).as_dict()
    except WindowError as error:
        raise ValidationFailed.on(f"send_window.{error.field}", error.message) from None


def moment(value: str, timezone: str, *, window: SendWindow | None = None) -> datetime:
    """The UTC moment an ``event``-style value names in ``timezone``: a bare date is that day at
    the window's opening when there is a window, else at 00:00."""
    parsed = parse_event(value)
    zone = ZoneInfo(timezone)
    if not isinstance(parsed, datetime):
        assert isinstance(parsed, date)
        opening = window.start if window is not None else time.min
        return wall_to_utc(datetime.combine(parsed, opening), zone)
    if parsed.tzinfo is None:
        return wall_to_utc(parsed, zone)
    return parsed.astimezone(ZoneInfo("UTC"))


def end_moment(value: str, timezone: str) -> datetime:
    """``ends_at``: a bare date means through that whole day (the next day's 00:00)."""
    parsed = parse_event(value)
    if not isinstance(parsed, datetime):
        following = date.fromordinal(parsed.toordinal() + 1)
        return wall_to_utc(datetime.combine(following, time.min), ZoneInfo(timezone))
    return moment(value, timezone)


def plan(mailing: Mailing) -> None:
    """Validate the mailing's schedule and set when its next run is due (None: no more)."""
    try:
        schedule = schedule_of(mailing)
    except ScheduleError as error:
        raise ValidationFailed.on(f"schedule.{error.field}", error.message) from None
    if mailing.ends_at is not None and mailing.ends_at <= mailing.event_at:
        raise ValidationFailed.on("ends_at", "Конец рассылки должен быть позже её начала")
    if mailing.runs_count == 0:
        mailing.next_run_at = first_occurrence(schedule)
    elif mailing.last_run_at is not None:
        mailing.next_run_at = next_occurrence(
            schedule, mailing.last_run_at, runs_so_far=mailing.runs_count
        )
    else:
        mailing.next_run_at = None
