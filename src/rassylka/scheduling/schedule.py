"""When a mailing runs: one moment, a cron expression or an RFC 5545 RRULE — pure time logic.

Nothing here reads the clock: every function takes ``now``/``after`` as a parameter, takes and
returns timezone-aware UTC datetimes (a naive one is a ValueError), and is deterministic.

Rules
-----
* ``once``: the single occurrence is ``start``. It is due as soon as ``start <= now``, however
  long ago that was: a moment in the past means "start now". It runs at most once.
* ``cron`` / ``rrule``: occurrences are computed in the *wall time* of ``timezone`` (``0 10 * * *``
  in Europe/Moscow is 10:00 Moscow time, whatever the offset that day), at or after ``start``, at
  or before ``until``, and at most ``max_runs`` of them (counted by the caller as
  ``runs_so_far``). Granularity is the minute: cron has exactly 5 fields (or an ``@daily``-style
  alias); an RRULE may not use ``FREQ=SECONDLY`` or ``BYSECOND``.
* RRULE: one rule line, with or without the ``RRULE:`` prefix. DTSTART is ``start`` in local
  wall time (truncated to the minute), so the rule itself may not carry DTSTART, RDATE or EXDATE.
  COUNT and UNTIL are allowed (not both, as RFC 5545 says), on top of our ``until`` and
  ``max_runs``; COUNT counts from DTSTART. UNTIL with ``Z`` is UTC, without it local wall time,
  a bare date (``UNTIL=20251231``) means the end of that local day. Fields the rule leaves out
  come from DTSTART as RFC 5545 says (``FREQ=DAILY`` alone fires at start's hour and minute).
* Daylight saving time — one rule for cron and RRULE, enforced here, not left to the library:
  a wall time that does not exist (02:30 on the spring-forward night in Europe/Berlin) fires
  once, at the first instant after the gap (03:00 local); several gap times collapse into that
  one firing, together with a 03:00 occurrence if there is one. A wall time that happens twice
  (02:30 on the fall-back night) fires once, at its first occurrence (summer time).
  (Measured with croniter 7.0 fed zone-aware datetimes: it also moves a gap time to 03:00, but
  fires a repeated wall time *twice* — 00:30 and 01:30 UTC for ``30 2 * * *`` in Berlin on
  2024-10-27. So both libraries are fed naive wall times and the mapping to UTC is ours.)
* Catch-up after downtime (:func:`due_occurrence`): of the occurrences after the last scheduled
  one (or from ``start``) up to ``now``, only the newest can start, and never more than one: it
  starts if it is at most ``grace`` old (an on-time start), or, when older, only with
  ``catch_up="once"``; with ``"skip"`` missed occurrences are dropped and the next one awaited.
  The run's scheduled time is always the occurrence's own time, never ``now``.
* Validation raises :class:`ScheduleError` with the field and a message for a person, in
  Russian: a bad cron or RRULE, one that never fires within five years of ``start``, ``until``
  before ``start`` or before the first occurrence, ``max_runs`` below 1, an unknown time zone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Literal, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterError, croniter
from dateutil.rrule import rrule as RRule
from dateutil.rrule import rrulestr

from rassylka.scheduling._wall import (
    require_aware,
    utc_to_wall,
    wall_offset_repeat,
    wall_to_utc,
)

ScheduleKind = Literal["once", "cron", "rrule"]
CatchUp = Literal["once", "skip"]

KINDS: tuple[ScheduleKind, ...] = ("once", "cron", "rrule")
#: A recurring schedule must fire at least once this soon after ``start`` to be accepted.
NEVER_FIRES_HORIZON_YEARS = 5
_HORIZON = timedelta(days=366 * NEVER_FIRES_HORIZON_YEARS)
_TICK = timedelta(microseconds=1)

CRON_ALIASES = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
)
_CRON_FIELDS = "минута, час, день месяца, месяц, день недели"
_HASHED_TOKEN = re.compile(r"^[HR](\(|/|$)", re.IGNORECASE)
_UNTIL_VALUE = re.compile(r"^(\d{8})(?:T(\d{6})(Z)?)?$", re.IGNORECASE)
_REBASE_STEPS = {
    "MINUTELY": timedelta(minutes=1),
    "HOURLY": timedelta(hours=1),
    "DAILY": timedelta(days=1),
    "WEEKLY": timedelta(weeks=1),
}


class ScheduleError(ValueError):
    """A schedule that cannot be accepted: ``field`` names the input, ``message`` says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class _Recurrence(Protocol):
    """Occurrences as naive wall times (no DST applied)."""

    def next_after(self, wall: datetime, limit: datetime | None = None) -> datetime | None:
        """The first occurrence strictly after ``wall``; None also allowed past ``limit``."""
        ...

    def last_at_or_before(self, wall: datetime) -> datetime | None:
        """The last occurrence at or before ``wall``."""
        ...


class _CronRecurrence:
    def __init__(self, expression: str) -> None:
        self._expression = expression

    def next_after(self, wall: datetime, limit: datetime | None = None) -> datetime | None:
        try:
            return croniter(self._expression, wall).get_next(datetime)
        except CroniterBadDateError:
            return None

    def last_at_or_before(self, wall: datetime) -> datetime | None:
        try:
            return croniter(self._expression, wall + _TICK).get_prev(datetime)
        except CroniterBadDateError:
            return None


class _RRuleRecurrence:
    """An RRULE over naive wall times.

    dateutil walks every occurrence from DTSTART on each query (a year of ``FREQ=MINUTELY`` costs
    ~1.6 s), so for MINUTELY/HOURLY/DAILY/WEEKLY rules without COUNT the query starts from a
    DTSTART moved forward by whole intervals: the lattice of periods, the defaults taken from
    DTSTART (second; minute; hour; weekday) and so the occurrences after the new DTSTART are
    the same, and the cost is that of the distance queried, not of the schedule's age.
    """

    def __init__(
        self, rule: RRule, dtstart: datetime, step: timedelta | None, until: datetime | None
    ) -> None:
        self._rule = rule
        self._dtstart = dtstart
        self._step = step
        self._until = until

    def _rebased(self, wall: datetime) -> RRule:
        if self._step is None or wall <= self._dtstart:
            return self._rule
        periods = (wall - self._dtstart) // self._step
        if periods < 2:
            return self._rule
        return self._rule.replace(dtstart=self._dtstart + (periods - 1) * self._step)

    def next_after(self, wall: datetime, limit: datetime | None = None) -> datetime | None:
        rule = self._rebased(wall)
        if limit is not None:
            # Bounds the search for a rule whose next occurrence is decades away (dateutil stops
            # at the first candidate past UNTIL). A rule with none at all still scans to 9999
            # (~0.5 s): the common case, 30 February, is refused before (_no_such_day).
            # Dropping COUNT (>= 1) never hides the first occurrence, which is all this is for.
            until = limit if self._until is None else min(limit, self._until)
            rule = rule.replace(until=until, count=None)
        return rule.after(wall, inc=False)

    def last_at_or_before(self, wall: datetime) -> datetime | None:
        if self._step is None:
            return self._rule.before(wall, inc=True)
        back = self._step
        while True:
            anchor = wall - back
            if anchor <= self._dtstart:
                return self._rule.before(wall, inc=True)
            found = self._rebased(anchor).before(wall, inc=True)
            if found is not None:
                return found
            back *= 4


@dataclass(frozen=True)
class _RRuleSpec:
    text: str
    freq: str
    interval: int
    counted: bool
    until: datetime | None


@dataclass(frozen=True)
class Schedule:
    """When a mailing runs; validated on construction (:class:`ScheduleError`).

    ``start`` and ``until`` must be timezone-aware and are kept in UTC. For ``once`` the moment
    is ``start``; for ``cron``/``rrule`` the recurrence begins at ``start`` (occurrences at or
    after it), evaluated in the wall time of ``timezone`` (an IANA name). ``until`` is the last
    moment an occurrence may have (inclusive); ``max_runs`` caps how many runs there are in all.
    """

    kind: ScheduleKind
    start: datetime
    timezone: str
    cron: str | None = None
    rrule: str | None = None
    until: datetime | None = None
    max_runs: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ScheduleError(
                "kind", f"Неизвестный вид расписания «{self.kind}»: ожидается once, cron или rrule"
            )
        zone = _zone(self.timezone)
        start = _aware(self.start, "start", "Время начала")
        object.__setattr__(self, "start", start)
        if self.until is not None:
            until = _aware(self.until, "until", "Время окончания (until)")
            if until < start:
                raise ScheduleError("until", "until раньше начала")
            object.__setattr__(self, "until", until)
        if self.max_runs is not None and (
            isinstance(self.max_runs, bool)
            or not isinstance(self.max_runs, int)
            or self.max_runs < 1
        ):
            raise ScheduleError("max_runs", "max_runs — целое число не меньше 1")

        if self.kind == "once":
            for name, value in (("cron", self.cron), ("rrule", self.rrule)):
                if value is not None:
                    raise ScheduleError(name, f"Для разового расписания (once) {name} не задаётся")
            return
        other = "rrule" if self.kind == "cron" else "cron"
        if getattr(self, other) is not None:
            raise ScheduleError(other, f"Для расписания {self.kind} поле {other} не задаётся")

        if self.kind == "cron":
            object.__setattr__(self, "cron", _parse_cron(self.cron))
        self._recurrence  # noqa: B018 - parses the rule now: a ScheduleError is raised here

        first = _first_after(self, start - _TICK, limit=start + _HORIZON, honour_until=False)
        if first is None:
            if self.kind == "cron":
                raise ScheduleError(
                    "cron",
                    f"Cron-выражение «{self.cron}» никогда не срабатывает"
                    f" (нет ни одного запуска за {NEVER_FIRES_HORIZON_YEARS} лет от начала)",
                )
            raise ScheduleError(
                "rrule",
                "Правило RRULE не даёт ни одного запуска"
                f" за {NEVER_FIRES_HORIZON_YEARS} лет от начала",
            )
        if self.until is not None and first > self.until:
            local = first.astimezone(zone).strftime("%Y-%m-%d %H:%M")
            raise ScheduleError(
                "until", f"До until нет ни одного запуска: первый был бы {local} ({self.timezone})"
            )

    @cached_property
    def _recurrence(self) -> _Recurrence | None:
        """The parsed cron/RRULE (None for once); cached, not a dataclass field."""
        if self.kind == "cron":
            return _CronRecurrence(_parse_cron(self.cron))
        if self.kind == "rrule":
            return _rrule_recurrence(self.rrule, self.start, self.zone)
        return None

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def recurring(self) -> bool:
        return self.kind != "once"


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ScheduleError(
            "timezone",
            f"Неизвестный часовой пояс «{name}» (ожидается имя IANA, например Europe/Moscow)",
        ) from None


def _aware(value: datetime, name: str, label: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ScheduleError(name, f"{label} должно быть с часовым поясом")
    return value.astimezone(UTC)


def _parse_cron(text: str | None) -> str:
    """The expression with single spaces, or ScheduleError("cron", ...)."""
    if text is None or not text.strip():
        raise ScheduleError("cron", "Для расписания cron нужно cron-выражение")
    fields = text.split()
    expression = " ".join(fields)
    bad = f"Неверное cron-выражение «{expression}»"
    if expression.startswith("@"):
        if expression.lower() in CRON_ALIASES and len(fields) == 1:
            return expression.lower()
        aliases = ", ".join(sorted(CRON_ALIASES))
        raise ScheduleError("cron", f"{bad}: из сокращений поддерживаются {aliases}")
    if len(fields) != 5:
        if len(fields) in (6, 7):
            reason = f"секунды и год не поддерживаются, нужно 5 полей: {_CRON_FIELDS}"
        else:
            reason = f"нужно 5 полей: {_CRON_FIELDS}"
        raise ScheduleError("cron", f"{bad}: {reason}")
    if any(_HASHED_TOKEN.match(part) for item in fields for part in item.split(",")):
        raise ScheduleError("cron", f"{bad}: случайные значения H и R не поддерживаются")
    try:
        croniter(expression, datetime(2000, 1, 1))
    except (CroniterBadCronError, CroniterError, ValueError, KeyError) as error:
        if "out of range" in str(error):
            reason = f"значение вне допустимого диапазона ({_CRON_FIELDS})"
        else:
            reason = f"не удаётся разобрать ({_CRON_FIELDS})"
        raise ScheduleError("cron", f"{bad}: {reason}") from None
    if not croniter.is_valid(expression, strict=True):
        raise ScheduleError(
            "cron", f"Cron-выражение «{expression}» никогда не срабатывает: в месяце нет такого дня"
        )
    return expression


def _bad_rrule(reason: str) -> ScheduleError:
    return ScheduleError("rrule", f"Неверное правило RRULE: {reason}")


def _parse_rrule(text: str | None, zone: ZoneInfo) -> _RRuleSpec:
    if text is None or not text.strip():
        raise ScheduleError("rrule", "Для расписания rrule нужно правило RRULE")
    body = text.strip()
    if body[:6].upper() == "RRULE:":
        body = body[6:].strip()
    if any(mark in body for mark in ("\n", "\r", ":")):
        raise _bad_rrule(
            "нужна одна строка RRULE без DTSTART, RDATE и EXDATE (начало задаётся полем start)"
        )
    parts: dict[str, str] = {}
    for part in filter(None, (piece.strip() for piece in body.split(";"))):
        name, sep, value = part.partition("=")
        name = name.strip().upper()
        if not sep or not name or not value.strip():
            raise _bad_rrule(f"часть «{part}» не вида ИМЯ=ЗНАЧЕНИЕ")
        if name in parts:
            raise _bad_rrule(f"{name} повторяется")
        parts[name] = value.strip().upper()
    if "DTSTART" in parts:
        raise _bad_rrule("DTSTART не задаётся в правиле: начало — поле start")
    freq = parts.get("FREQ")
    if freq is None:
        raise _bad_rrule("нет FREQ (например FREQ=WEEKLY;BYDAY=MO;BYHOUR=10;BYMINUTE=0)")
    if freq == "SECONDLY" or "BYSECOND" in parts:
        raise _bad_rrule("секунды не поддерживаются, расписание задаётся с точностью до минуты")
    if "COUNT" in parts and "UNTIL" in parts:
        raise _bad_rrule("COUNT и UNTIL не могут быть в одном правиле")
    if _no_such_day(parts):
        raise ScheduleError(
            "rrule",
            "Правило RRULE не даёт ни одного запуска:"
            " в указанных месяцах нет таких дней (BYMONTHDAY)",
        )
    until = None
    if "UNTIL" in parts:
        until = _local_until(parts["UNTIL"], zone)
        parts["UNTIL"] = until.strftime("%Y%m%dT%H%M%S")
    if "COUNT" in parts and not (parts["COUNT"].isdigit() and int(parts["COUNT"]) >= 1):
        raise _bad_rrule(f"COUNT={parts['COUNT']} — нужно целое число не меньше 1")
    try:
        interval = int(parts.get("INTERVAL", "1"))
    except ValueError:
        raise _bad_rrule(f"INTERVAL={parts['INTERVAL']} — не число") from None
    return _RRuleSpec(
        text=";".join(f"{name}={value}" for name, value in parts.items()),
        freq=freq,
        interval=interval,
        counted="COUNT" in parts,
        until=until,
    )


_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _no_such_day(parts: dict[str, str]) -> bool:
    """BYMONTHDAY that no BYMONTH month has (30 February): such a rule has no occurrence, and
    dateutil would look for one up to the year 9999 (~0.5 s). Unparsable values: not judged."""
    if "BYMONTHDAY" not in parts:
        return False
    try:
        days = [int(value) for value in parts["BYMONTHDAY"].split(",")]
        months = [
            int(value) for value in parts.get("BYMONTH", "1,2,3,4,5,6,7,8,9,10,11,12").split(",")
        ]
    except ValueError:
        return False
    if not all(1 <= month <= 12 for month in months) or not all(days):
        return False
    return not any(abs(day) <= _DAYS_IN_MONTH[month - 1] for month in months for day in days)


def _local_until(value: str, zone: ZoneInfo) -> datetime:
    """RRULE UNTIL as a naive local wall time, the form dateutil takes with a naive DTSTART."""
    match = _UNTIL_VALUE.match(value)
    reason = f"UNTIL={value}: ожидается дата и время вида 20251231T235959Z или дата 20251231"
    if match is None:
        raise _bad_rrule(reason)
    day, clock, utc = match.groups()
    try:
        moment = datetime.strptime(day + (clock or "235959"), "%Y%m%d%H%M%S")
    except ValueError:
        raise _bad_rrule(reason) from None
    if utc:
        moment = utc_to_wall(moment.replace(tzinfo=UTC), zone)
    return moment


def _rrule_recurrence(text: str | None, start: datetime, zone: ZoneInfo) -> _RRuleRecurrence:
    spec = _parse_rrule(text, zone)
    dtstart = utc_to_wall(start, zone).replace(second=0, microsecond=0)
    try:
        rule = rrulestr(spec.text, dtstart=dtstart)
    except (ValueError, TypeError, OverflowError) as error:
        raise _bad_rrule(str(error)) from None
    if not isinstance(rule, RRule):  # pragma: no cover - one line always gives an rrule
        raise _bad_rrule("нужно одно правило")
    base = _REBASE_STEPS.get(spec.freq)
    step = None if base is None or spec.counted or spec.interval < 1 else base * spec.interval
    return _RRuleRecurrence(rule, dtstart, step, spec.until)


def _recurrence_of(schedule: Schedule) -> _Recurrence:
    recurrence = schedule._recurrence
    if recurrence is None:  # pragma: no cover - set for every recurring schedule
        raise AssertionError(f"{schedule.kind} schedule has no recurrence")
    return recurrence


def _first_after(
    schedule: Schedule,
    lower: datetime,
    *,
    limit: datetime | None = None,
    honour_until: bool = True,
) -> datetime | None:
    """The first recurring occurrence strictly after ``lower`` (and at or after ``start``)."""
    recurrence = _recurrence_of(schedule)
    zone = schedule.zone
    lower = max(lower, schedule.start - _TICK)
    until = schedule.until if honour_until else None
    # Wall-time bound for the search, a day past the limit to cover any UTC offset change.
    wall_limit = None if limit is None else utc_to_wall(limit, zone) + timedelta(days=1)
    wall = recurrence.next_after(utc_to_wall(lower, zone), wall_limit)
    while wall is not None:
        moment = wall_to_utc(wall, zone)
        if (until is not None and moment > until) or (limit is not None and moment > limit):
            return None
        if moment > lower:
            return moment
        # Only in the second pass of a fall-back hour: this wall time was shown before `lower`.
        wall = recurrence.next_after(wall, wall_limit)
    return None


def _last_at_or_before(schedule: Schedule, upper: datetime) -> datetime | None:
    """The newest recurring occurrence at or before ``upper`` and at or after ``start``."""
    if upper < schedule.start:
        return None
    recurrence = _recurrence_of(schedule)
    zone = schedule.zone
    wall = recurrence.last_at_or_before(utc_to_wall(upper, zone) + wall_offset_repeat(upper, zone))
    while wall is not None:
        moment = wall_to_utc(wall, zone)
        if moment <= upper:
            return moment if moment >= schedule.start else None
        wall = recurrence.last_at_or_before(wall - _TICK)
    return None


def _exhausted(schedule: Schedule, runs_so_far: int) -> bool:
    return schedule.max_runs is not None and runs_so_far >= schedule.max_runs


def next_occurrence(schedule: Schedule, after: datetime, *, runs_so_far: int) -> datetime | None:
    """The first occurrence strictly after ``after`` (UTC), or None when there are no more.

    ``once``: ``start`` while ``runs_so_far == 0`` — even if ``start <= after``, since a moment in
    the past means "start now" — and None after that. Recurring: the first occurrence after
    ``after`` that is at or after ``start`` and at or before ``until``; None once ``runs_so_far``
    has reached ``max_runs``.
    """
    after = require_aware(after, "after")
    if _exhausted(schedule, runs_so_far):
        return None
    if schedule.kind == "once":
        return schedule.start if runs_so_far == 0 else None
    return _first_after(schedule, after)


def first_occurrence(schedule: Schedule) -> datetime:
    """The schedule's first occurrence (it always has one: construction checks that)."""
    if schedule.kind == "once":
        return schedule.start
    first = _first_after(schedule, schedule.start - _TICK)
    if first is None:  # pragma: no cover - rejected on construction
        raise AssertionError("a validated schedule has a first occurrence")
    return first


def upcoming(schedule: Schedule, now: datetime, count: int, runs_so_far: int = 0) -> list[datetime]:
    """The next ``count`` occurrences after ``now`` (fewer if the schedule ends), for a preview.

    Each is what :func:`next_occurrence` would give after the one before it, with one more run
    counted, so ``until``, ``max_runs`` and RRULE COUNT/UNTIL are honoured. A ``once`` schedule
    not yet run shows its moment even if it has passed (it starts at once).
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    moments: list[datetime] = []
    after = require_aware(now, "now")
    runs = runs_so_far
    while len(moments) < count:
        following = next_occurrence(schedule, after, runs_so_far=runs)
        if following is None:
            break
        moments.append(following)
        after = following
        runs += 1
    return moments


def due_occurrence(
    schedule: Schedule,
    *,
    last_scheduled: datetime | None,
    now: datetime,
    runs_so_far: int,
    catch_up: CatchUp,
    grace: timedelta = timedelta(minutes=5),
) -> tuple[datetime | None, datetime | None]:
    """What to start now and what to wait for: ``(scheduled time to start now, next occurrence)``.

    ``once``: due as soon as ``start <= now`` (however late); nothing once it has run
    (``runs_so_far > 0`` or ``last_scheduled`` set). Recurring: consider the occurrences after
    ``last_scheduled`` (or from ``start``), up to ``now`` and ``until``. Only the newest of them
    can start, and at most one: it starts when ``now - occurrence <= grace``; an older one starts
    only with ``catch_up="once"`` and is dropped with ``"skip"``. The second item is the first
    occurrence strictly after ``now`` (and after ``last_scheduled``) still allowed by ``until``
    and ``max_runs`` — counting the run started now — or None when the schedule is over.
    """
    now = require_aware(now, "now")
    if last_scheduled is not None:
        last_scheduled = require_aware(last_scheduled, "last_scheduled")
    if grace < timedelta(0):
        raise ValueError(f"grace must not be negative, got {grace}")
    if catch_up not in ("once", "skip"):
        raise ValueError(f"catch_up must be 'once' or 'skip', got {catch_up!r}")
    if _exhausted(schedule, runs_so_far):
        return None, None
    if schedule.kind == "once":
        if runs_so_far > 0 or last_scheduled is not None:
            return None, None
        if schedule.start <= now:
            return schedule.start, None
        return None, schedule.start

    upper = now if schedule.until is None else min(now, schedule.until)
    newest = _last_at_or_before(schedule, upper)
    if newest is not None and last_scheduled is not None and newest <= last_scheduled:
        newest = None
    start_now = None
    if newest is not None and (now - newest <= grace or catch_up == "once"):
        start_now = newest
    runs = runs_so_far + (1 if start_now is not None else 0)
    lower = now if last_scheduled is None else max(now, last_scheduled)
    return start_now, next_occurrence(schedule, lower, runs_so_far=runs)
