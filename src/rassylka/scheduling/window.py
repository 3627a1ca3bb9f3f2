"""Send windows: the hours of the recipient's own day in which a message may go out.

A window is a pair of local wall times and, optionally, the ISO weekdays (1 = Monday … 7 = Sunday)
on which it *opens*. ``end`` later than ``start`` is a window within one day (09:00–21:00);
``end`` earlier than ``start`` crosses midnight (21:00–09:00 is the night from the opening day
to the next morning); ``start == end`` is rejected.

Rules
-----
* Half-open: a window opened on local date D is the span of instants ``[open, close)`` with
  ``open`` = D at ``start`` and ``close`` = D (or D+1 when crossing midnight) at ``end``. The
  instant the window opens is inside, the instant it closes is not.
* ``days`` filters the day the window opens on: with Mon–Fri 21:00–09:00, Friday night through
  Saturday 09:00 is inside; Sunday night is not.
* Daylight saving time: both edges are turned into instants by the same rule as schedules
  (:mod:`rassylka.scheduling._wall`): an edge at a wall time that does not exist (in a
  spring-forward gap) is the first instant after the gap — a window "02:30–…" opens at 03:00
  that day, a window "…–02:30" closes at 03:00, i.e. when the clock jumps (every wall time
  shown before the jump was earlier than 02:30); a window lying wholly in the gap is empty that
  day. An edge at a wall time that happens twice is its first occurrence: a window opening at
  02:30 on the fall-back night opens at the first 02:30, one closing at 02:30 closes at the
  first 02:30, so the repeated half hour after it is outside. Windows that are inside by wall
  clock on both passes (01:00–04:00) contain the whole repeated hour.
* Contains and next opening agree: :func:`opening_at_or_after` returns the input itself when
  :func:`contains` is true, otherwise the earliest opening after it, and no instant between
  the input and that opening is inside.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from rassylka.scheduling._wall import require_aware, utc_to_wall, wall_to_utc

_CLOCK = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
_DAY = timedelta(days=1)
_FIELDS = frozenset({"start", "end", "days"})
#: Instances opening on these days around a moment's local date may contain it (an overnight
#: window opens the day before; zones have skipped a whole date, e.g. Pacific/Apia in 2011).
_AROUND = range(-2, 2)
#: Every allowed weekday comes back within a week; a day whose window falls wholly in a DST gap
#: (or a skipped date) is empty, so look two weeks ahead.
_AHEAD = range(-2, 16)


class WindowError(ValueError):
    """A window that cannot be accepted: ``field`` names the input, ``message`` says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class SendWindow:
    """Local wall times ``[start, end)`` on the ISO weekdays ``days`` (None: every day)."""

    start: time
    end: time
    days: frozenset[int] | None = None

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            if not isinstance(value, time) or value.tzinfo is not None:
                raise WindowError(name, "Время окна — местное время без часового пояса")
        if self.start == self.end:
            raise WindowError("end", "Окно не может начинаться и заканчиваться в одно время")
        if self.days is not None:
            if not self.days:
                raise WindowError("days", "Список дней пуст: окно никогда не откроется")
            if any(
                isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= 7 for d in self.days
            ):
                raise WindowError(
                    "days", "Дни недели — числа от 1 (понедельник) до 7 (воскресенье)"
                )

    @property
    def overnight(self) -> bool:
        """Whether the window crosses midnight (closes on the day after it opens)."""
        return self.end < self.start

    def as_dict(self) -> dict[str, Any]:
        """The API form that :func:`parse_window` reads."""
        return {
            "start": self.start.strftime("%H:%M"),
            "end": self.end.strftime("%H:%M"),
            "days": None if self.days is None else sorted(self.days),
        }


def _clock(value: object, name: str) -> time:
    if isinstance(value, str):
        match = _CLOCK.match(value.strip())
        if match is not None:
            return time(int(match.group(1)), int(match.group(2)))
    raise WindowError(name, "Время — в формате ЧЧ:ММ от 00:00 до 23:59, например 09:00")


def parse_window(data: Mapping[str, object]) -> SendWindow:
    """A window from its API form ``{"start": "09:00", "end": "21:00", "days": [1, 2, 3]}``.

    ``days`` may be absent or null (every day). Raises :class:`WindowError` with the field.
    """
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise WindowError(unknown[0], "Неизвестное поле окна: ожидаются start, end и days")
    for name in ("start", "end"):
        if data.get(name) is None:
            raise WindowError(name, "Обязательное поле")
    start = _clock(data["start"], "start")
    end = _clock(data["end"], "end")
    raw_days = data.get("days")
    days: frozenset[int] | None = None
    if raw_days is not None:
        if not isinstance(raw_days, list | tuple | set | frozenset) or any(
            isinstance(day, bool) or not isinstance(day, int) for day in raw_days
        ):
            raise WindowError(
                "days", "Дни недели — список чисел от 1 (понедельник) до 7 (воскресенье)"
            )
        days = frozenset(raw_days)
    return SendWindow(start=start, end=end, days=days)


def _instance(window: SendWindow, opening_day: date, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """``[open, close)`` in UTC of the window opening on local date ``opening_day``."""
    closing_day = opening_day + _DAY if window.overnight else opening_day
    opened = wall_to_utc(datetime.combine(opening_day, window.start), zone)
    closed = wall_to_utc(datetime.combine(closing_day, window.end), zone)
    return opened, closed


def _instances(
    window: SendWindow, moment: datetime, zone: ZoneInfo, offsets: range
) -> Iterator[tuple[datetime, datetime]]:
    local_day = utc_to_wall(moment, zone).date()
    for offset in offsets:
        day = local_day + timedelta(days=offset)
        if window.days is None or day.isoweekday() in window.days:
            yield _instance(window, day, zone)


def window_end_after(window: SendWindow, moment: datetime, zone: ZoneInfo) -> datetime | None:
    """When the window containing ``moment`` closes (UTC), or None if ``moment`` is outside."""
    moment = require_aware(moment, "moment")
    for opened, closed in _instances(window, moment, zone, _AROUND):
        if opened <= moment < closed:
            return closed
    return None


def contains(window: SendWindow, moment: datetime, zone: ZoneInfo) -> bool:
    """Whether the instant ``moment`` lies in the window, read in ``zone``'s wall time."""
    return window_end_after(window, moment, zone) is not None


def opening_at_or_after(window: SendWindow, moment: datetime, zone: ZoneInfo) -> datetime:
    """``moment`` (UTC) if it is inside the window, else the next instant the window opens."""
    moment = require_aware(moment, "moment")
    if contains(window, moment, zone):
        return moment
    for opened, closed in _instances(window, moment, zone, _AHEAD):
        if opened < closed and opened >= moment:
            return opened
    raise AssertionError(  # pragma: no cover - an allowed weekday recurs within a week
        f"no opening of {window} in {zone} within two weeks of {moment}"
    )
