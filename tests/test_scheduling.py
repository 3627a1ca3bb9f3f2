"""Pure time logic of schedules, send windows and the recipient's zone, on explicit datetimes."""

from __future__ import annotations

import random
import time as clock
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from dateutil.rrule import rrulestr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rassylka.scheduling import (
    Schedule,
    ScheduleError,
    SendWindow,
    WindowError,
    contains,
    due_occurrence,
    first_occurrence,
    next_occurrence,
    opening_at_or_after,
    parse_window,
    phone_zones,
    recipient_zone,
    upcoming,
    wall_to_utc,
    window_end_after,
)
from rassylka.scheduling.schedule import _rrule_recurrence, _RRuleRecurrence

BERLIN = ZoneInfo("Europe/Berlin")
MOSCOW = ZoneInfo("Europe/Moscow")
NEW_YORK = ZoneInfo("America/New_York")


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def local(zone: ZoneInfo, *parts: int, fold: int = 0) -> datetime:
    """The UTC instant of a wall time that exists (fold picks the pass of a repeated one)."""
    return datetime(*parts, tzinfo=zone, fold=fold).astimezone(UTC)  # type: ignore[misc]


def cron(
    expr: str, zone: str = "Europe/Moscow", start: datetime | None = None, **kw: object
) -> Schedule:
    return Schedule("cron", start or utc(2024, 1, 1), zone, cron=expr, **kw)  # type: ignore[arg-type]


def rule(
    text: str, zone: str = "Europe/Moscow", start: datetime | None = None, **kw: object
) -> Schedule:
    return Schedule("rrule", start or utc(2024, 1, 1), zone, rrule=text, **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Schedule validation


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("0 0 30 2 *", "никогда не срабатывает"),
        ("0 0 31 4 *", "никогда не срабатывает"),
        ("* * * * * *", "секунды и год не поддерживаются"),
        ("0 0 * * * 0 2030", "секунды и год не поддерживаются"),
        ("0 0 * *", "нужно 5 полей"),
        ("0 25 * * *", "вне допустимого диапазона"),
        ("61 * * * *", "вне допустимого диапазона"),
        ("a b c d e", "не удаётся разобрать"),
        ("H H * * *", "H и R не поддерживаются"),
        ("R 10 * * *", "H и R не поддерживаются"),
        ("@reboot", "из сокращений поддерживаются"),
        ("   ", "нужно cron-выражение"),
    ],
)
def test_bad_cron_is_rejected_with_a_russian_message(expression: str, fragment: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        cron(expression)
    assert caught.value.field == "cron"
    assert fragment in caught.value.message
    assert caught.value.message[0].isupper()


def test_cron_that_fires_only_beyond_five_years_is_rejected() -> None:
    # 29 February after 2096 is in 2104 (2100 is no leap year): nothing within five years.
    with pytest.raises(ScheduleError, match="никогда не срабатывает") as caught:
        cron("0 0 29 2 *", "UTC", start=utc(2097, 3, 1))
    assert caught.value.field == "cron"
    assert first_occurrence(cron("0 0 29 2 *", "UTC", start=utc(2095, 3, 1))) == utc(2096, 2, 29)


def test_cron_text_is_normalised_and_aliases_accepted() -> None:
    assert cron("  0   10 * *  1-5 ").cron == "0 10 * * 1-5"
    daily = cron("@DAILY", "UTC")
    assert daily.cron == "@daily"
    assert upcoming(daily, utc(2024, 5, 1, 12), 2) == [utc(2024, 5, 2), utc(2024, 5, 3)]
    # Names, L, # and W are croniter's and allowed.
    assert cron("0 9 * * mon-fri").cron == "0 9 * * mon-fri"
    assert next_occurrence(cron("0 9 L * *", "UTC"), utc(2024, 2, 1), runs_so_far=0) == utc(
        2024, 2, 29, 9
    )


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("FREQ=BOGUS", "Неверное правило RRULE"),
        ("BYDAY=MO;BYHOUR=10", "нет FREQ"),
        ("DTSTART:20240101T000000\nRRULE:FREQ=DAILY", "без DTSTART"),
        ("DTSTART=20240101T000000;FREQ=DAILY", "DTSTART не задаётся"),
        ("EXDATE:20240102T090000", "без DTSTART, RDATE и EXDATE"),
        ("FREQ=SECONDLY", "секунды не поддерживаются"),
        ("FREQ=DAILY;BYSECOND=5", "секунды не поддерживаются"),
        ("FREQ=DAILY;COUNT=3;UNTIL=20250101", "COUNT и UNTIL"),
        ("FREQ=DAILY;FOO=1", "Неверное правило RRULE"),
        ("FREQ=DAILY;BYHOUR=25", "Неверное правило RRULE"),
        ("FREQ=DAILY;FREQ=WEEKLY", "FREQ повторяется"),
        ("FREQ=DAILY;BYHOUR", "не вида ИМЯ=ЗНАЧЕНИЕ"),
        ("FREQ=DAILY;INTERVAL=x", "INTERVAL=X"),
        ("FREQ=DAILY;COUNT=0", "COUNT=0"),
        ("FREQ=DAILY;COUNT=-2", "COUNT=-2"),
        ("FREQ=DAILY;UNTIL=tomorrow", "UNTIL=TOMORROW"),
        ("FREQ=DAILY;UNTIL=20241332", "UNTIL=20241332"),
        ("FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30", "нет таких дней"),
        ("FREQ=MONTHLY;BYMONTH=4,6;BYMONTHDAY=31,-31", "нет таких дней"),
        ("FREQ=YEARLY;BYYEARDAY=1;BYMONTH=6", "не даёт ни одного запуска"),
        ("FREQ=DAILY;UNTIL=20231231", "не даёт ни одного запуска"),
        ("", "нужно правило RRULE"),
    ],
)
def test_bad_rrule_is_rejected_with_a_russian_message(text: str, fragment: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        rule(text)
    assert caught.value.field == "rrule"
    assert fragment in caught.value.message


def test_impossible_rrule_is_rejected_quickly() -> None:
    began = clock.perf_counter()
    with pytest.raises(ScheduleError):
        rule("FREQ=MONTHLY;BYMONTH=2;BYMONTHDAY=31")
    assert clock.perf_counter() - began < 0.1  # dateutil alone scans to year 9999 (~0.5 s)


def test_rrule_accepts_the_prefix_and_lower_case() -> None:
    for text in (
        "RRULE:FREQ=WEEKLY;BYDAY=MO",
        "rrule:freq=weekly;byday=mo;",
        " FREQ=WEEKLY;BYDAY=MO",
    ):
        schedule = rule(text, start=utc(2024, 1, 1, 7))  # Monday 10:00 in Moscow
        assert upcoming(schedule, utc(2024, 1, 1), 2) == [utc(2024, 1, 1, 7), utc(2024, 1, 8, 7)]


@pytest.mark.parametrize(
    ("changes", "field", "fragment"),
    [
        ({"until": utc(2023, 12, 31)}, "until", "until раньше начала"),
        ({"max_runs": 0}, "max_runs", "не меньше 1"),
        ({"max_runs": -3}, "max_runs", "не меньше 1"),
        ({"max_runs": True}, "max_runs", "не меньше 1"),
        ({"timezone": "Mars/Olympus"}, "timezone", "Неизвестный часовой пояс «Mars/Olympus»"),
        ({"timezone": ""}, "timezone", "Неизвестный часовой пояс"),
        ({"kind": "weekly"}, "kind", "Неизвестный вид расписания"),
        ({"start": datetime(2024, 1, 1)}, "start", "с часовым поясом"),
        ({"until": datetime(2025, 1, 1)}, "until", "с часовым поясом"),
        ({"rrule": "FREQ=DAILY"}, "rrule", "не задаётся"),
        ({"cron": None}, "cron", "нужно cron-выражение"),
    ],
)
def test_bad_schedule_fields(changes: dict[str, object], field: str, fragment: str) -> None:
    values: dict[str, object] = {
        "kind": "cron",
        "start": utc(2024, 1, 1),
        "timezone": "Europe/Moscow",
        "cron": "0 10 * * *",
    }
    values.update(changes)
    with pytest.raises(ScheduleError) as caught:
        Schedule(**values)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert fragment in caught.value.message
    assert isinstance(caught.value, ValueError)


def test_once_takes_neither_cron_nor_rrule() -> None:
    with pytest.raises(ScheduleError) as caught:
        Schedule("once", utc(2024, 1, 1), "UTC", cron="0 10 * * *")
    assert caught.value.field == "cron"
    with pytest.raises(ScheduleError) as caught:
        Schedule("rrule", utc(2024, 1, 1), "UTC")
    assert caught.value.field == "rrule"


def test_until_before_the_first_occurrence_is_rejected() -> None:
    with pytest.raises(ScheduleError) as caught:
        cron("0 10 1 1 *", start=utc(2024, 6, 1), until=utc(2024, 8, 1))
    assert caught.value.field == "until"
    assert "2025-01-01 10:00" in caught.value.message


def test_start_and_until_are_kept_in_utc() -> None:
    schedule = Schedule(
        "once",
        datetime(2024, 6, 1, 12, tzinfo=MOSCOW),
        "Europe/Moscow",
        until=datetime(2024, 6, 2, 12, tzinfo=MOSCOW),
    )
    assert schedule.start == utc(2024, 6, 1, 9)
    assert schedule.start.tzinfo is UTC
    assert schedule.until == utc(2024, 6, 2, 9)
    assert schedule == Schedule(
        "once", utc(2024, 6, 1, 9), "Europe/Moscow", until=utc(2024, 6, 2, 9)
    )
    assert {schedule}  # hashable


# --------------------------------------------------------------------------------------------
# Occurrences


def test_once_is_its_start_until_it_has_run() -> None:
    once = Schedule("once", utc(2024, 6, 1, 9), "Europe/Moscow")
    assert next_occurrence(once, utc(2024, 5, 1), runs_so_far=0) == utc(2024, 6, 1, 9)
    # A moment in the past is still due: it means "start now".
    assert next_occurrence(once, utc(2024, 7, 1), runs_so_far=0) == utc(2024, 6, 1, 9)
    assert next_occurrence(once, utc(2024, 5, 1), runs_so_far=1) is None
    assert upcoming(once, utc(2024, 5, 1), 5) == [utc(2024, 6, 1, 9)]
    assert upcoming(once, utc(2024, 5, 1), 5, 1) == []
    assert first_occurrence(once) == utc(2024, 6, 1, 9)


def test_cron_is_evaluated_in_local_wall_time() -> None:
    schedule = cron("0 10 * * *", start=utc(2024, 6, 1))
    assert upcoming(schedule, utc(2024, 6, 1), 3) == [
        utc(2024, 6, 1, 7),
        utc(2024, 6, 2, 7),
        utc(2024, 6, 3, 7),
    ]


def test_next_is_strictly_after_and_start_is_inclusive() -> None:
    schedule = cron("0 10 * * *", start=utc(2024, 6, 1, 7))  # start on an occurrence
    assert next_occurrence(schedule, utc(2024, 5, 1), runs_so_far=0) == utc(2024, 6, 1, 7)
    assert next_occurrence(schedule, utc(2024, 6, 1, 7), runs_so_far=1) == utc(2024, 6, 2, 7)
    assert next_occurrence(schedule, utc(2024, 6, 1, 6, 59, 59), runs_so_far=0) == utc(
        2024, 6, 1, 7
    )
    late = cron("0 10 * * *", start=utc(2024, 6, 1, 7, 0, 1))
    assert first_occurrence(late) == utc(2024, 6, 2, 7)


def test_until_is_inclusive_and_max_runs_caps() -> None:
    schedule = cron("0 10 * * *", start=utc(2024, 6, 1), until=utc(2024, 6, 3, 7))
    assert upcoming(schedule, utc(2024, 5, 1), 10) == [
        utc(2024, 6, 1, 7),
        utc(2024, 6, 2, 7),
        utc(2024, 6, 3, 7),
    ]
    assert next_occurrence(schedule, utc(2024, 6, 3, 7), runs_so_far=3) is None
    capped = cron("0 10 * * *", start=utc(2024, 6, 1), max_runs=3)
    assert len(upcoming(capped, utc(2024, 5, 1), 10)) == 3
    assert upcoming(capped, utc(2024, 6, 1, 8), 10, 1) == [utc(2024, 6, 2, 7), utc(2024, 6, 3, 7)]
    assert next_occurrence(capped, utc(2024, 6, 10), runs_so_far=3) is None
    assert upcoming(capped, utc(2024, 5, 1), 0) == []
    with pytest.raises(ValueError, match="count"):
        upcoming(capped, utc(2024, 5, 1), -1)


def test_naive_datetimes_are_refused() -> None:
    schedule = cron("0 10 * * *")
    with pytest.raises(ValueError, match="timezone-aware"):
        next_occurrence(schedule, datetime(2024, 6, 1), runs_so_far=0)
    with pytest.raises(ValueError, match="timezone-aware"):
        due_occurrence(
            schedule, last_scheduled=None, now=datetime(2024, 6, 1), runs_so_far=0, catch_up="once"
        )


def test_rrule_weekly_days_in_local_time() -> None:
    schedule = rule("FREQ=WEEKLY;BYDAY=MO,WE;BYHOUR=10;BYMINUTE=0", start=utc(2024, 1, 1))
    assert upcoming(schedule, utc(2024, 1, 1), 4) == [
        utc(2024, 1, 1, 7),
        utc(2024, 1, 3, 7),
        utc(2024, 1, 8, 7),
        utc(2024, 1, 10, 7),
    ]


def test_rrule_takes_missing_fields_from_start_truncated_to_the_minute() -> None:
    schedule = rule("FREQ=DAILY", start=local(MOSCOW, 2024, 3, 5, 10, 15))
    assert upcoming(schedule, utc(2024, 1, 1), 2) == [
        local(MOSCOW, 2024, 3, 5, 10, 15),
        local(MOSCOW, 2024, 3, 6, 10, 15),
    ]
    # Seconds of start are dropped from DTSTART; the occurrence before start is skipped.
    with_seconds = rule("FREQ=DAILY", start=local(MOSCOW, 2024, 3, 5, 10, 15, 30))
    assert first_occurrence(with_seconds) == local(MOSCOW, 2024, 3, 6, 10, 15)


def test_rrule_count_and_until_forms() -> None:
    counted = rule("FREQ=DAILY;COUNT=3;BYHOUR=9;BYMINUTE=0", start=utc(2024, 1, 1))
    assert len(upcoming(counted, utc(2023, 1, 1), 10)) == 3
    # With both COUNT and max_runs, the tighter wins.
    assert len(upcoming(rule("FREQ=DAILY;COUNT=3", max_runs=2), utc(2023, 1, 1), 10)) == 2
    # UNTIL in UTC: 2024-01-03 06:00Z is 09:00 in Moscow, so the 09:00 occurrence of Jan 3 is in.
    in_utc = rule("FREQ=DAILY;BYHOUR=9;BYMINUTE=0;UNTIL=20240103T060000Z", start=utc(2024, 1, 1))
    assert upcoming(in_utc, utc(2023, 1, 1), 10)[-1] == local(MOSCOW, 2024, 1, 3, 9)
    # UNTIL without Z is Moscow wall time: 08:59 local excludes Jan 3.
    in_local = rule("FREQ=DAILY;BYHOUR=9;BYMINUTE=0;UNTIL=20240103T085900", start=utc(2024, 1, 1))
    assert upcoming(in_local, utc(2023, 1, 1), 10)[-1] == local(MOSCOW, 2024, 1, 2, 9)
    # A bare date is the whole local day.
    by_date = rule("FREQ=DAILY;BYHOUR=23;BYMINUTE=30;UNTIL=20240103", start=utc(2024, 1, 1))
    assert upcoming(by_date, utc(2023, 1, 1), 10)[-1] == local(MOSCOW, 2024, 1, 3, 23, 30)
    # And our own until on top of the rule's.
    both = rule("FREQ=DAILY;BYHOUR=9;BYMINUTE=0", start=utc(2024, 1, 1), until=utc(2024, 1, 2, 6))
    assert upcoming(both, utc(2023, 1, 1), 10) == [local(MOSCOW, 2024, 1, 1, 9), utc(2024, 1, 2, 6)]


# DST: our rule — a nonexistent wall time fires once at the first instant after the gap, a
# repeated one once at its first occurrence — for cron and RRULE alike.

BERLIN_SPRING = date(2024, 3, 31)  # 02:00 CET -> 03:00 CEST at 01:00 UTC
BERLIN_FALL = date(2024, 10, 27)  # 03:00 CEST -> 02:00 CET at 01:00 UTC


def test_croniter_itself_fires_a_repeated_wall_time_twice() -> None:
    """The library fact that makes us feed it naive wall times (croniter 7.0)."""
    iterator = croniter("30 2 * * *", datetime(2024, 10, 26, 12, tzinfo=BERLIN))
    fired = [iterator.get_next(datetime).astimezone(UTC) for _ in range(2)]
    assert fired == [utc(2024, 10, 27, 0, 30), utc(2024, 10, 27, 1, 30)]
    iterator = croniter("30 2 * * *", datetime(2024, 3, 30, 12, tzinfo=BERLIN))
    assert iterator.get_next(datetime).astimezone(UTC) == utc(2024, 3, 31, 1)  # 03:00 CEST


@pytest.mark.parametrize(
    "make",
    [
        lambda: cron("30 2 * * *", "Europe/Berlin", start=utc(2024, 3, 1)),
        lambda: rule("FREQ=DAILY;BYHOUR=2;BYMINUTE=30", "Europe/Berlin", start=utc(2024, 3, 1)),
    ],
    ids=["cron", "rrule"],
)
def test_berlin_gap_and_overlap_fire_once(make: object) -> None:
    schedule = make()  # type: ignore[operator]
    spring = upcoming(schedule, utc(2024, 3, 29, 12), 3)
    assert spring == [
        local(BERLIN, 2024, 3, 30, 2, 30),
        utc(2024, 3, 31, 1),  # 02:30 does not exist: 03:00 CEST, the first instant after the gap
        local(BERLIN, 2024, 4, 1, 2, 30),
    ]
    fall = upcoming(schedule, utc(2024, 10, 26, 12), 2)
    assert fall == [
        utc(2024, 10, 27, 0, 30),  # the first 02:30 (CEST); the second (01:30 UTC) does not fire
        local(BERLIN, 2024, 10, 28, 2, 30),
    ]


def test_gap_times_collapse_into_one_firing() -> None:
    every_half_hour = cron("*/30 * * * *", "Europe/Berlin", start=utc(2024, 3, 1))
    assert upcoming(every_half_hour, utc(2024, 3, 31, 0, 15), 3) == [
        utc(2024, 3, 31, 0, 30),  # 01:30 CET
        utc(2024, 3, 31, 1, 0),  # 02:00, 02:30 and 03:00 local: one run at 03:00 CEST
        utc(2024, 3, 31, 1, 30),  # 03:30 CEST
    ]
    assert upcoming(every_half_hour, utc(2024, 10, 26, 23, 15), 5) == [
        utc(2024, 10, 26, 23, 30),  # 01:30 CEST
        utc(2024, 10, 27, 0, 0),  # 02:00 CEST
        utc(2024, 10, 27, 0, 30),  # 02:30 CEST
        utc(2024, 10, 27, 2, 0),  # 03:00 CET: the repeated 02:00 and 02:30 CET do not fire
        utc(2024, 10, 27, 2, 30),
    ]
    # Asked from inside the repeated hour, the next firing is after it.
    assert next_occurrence(every_half_hour, utc(2024, 10, 27, 1, 10), runs_so_far=0) == utc(
        2024, 10, 27, 2
    )


def test_new_york_gap_and_overlap() -> None:
    spring = cron("30 2 * * *", "America/New_York", start=utc(2024, 3, 1))
    assert next_occurrence(spring, utc(2024, 3, 9, 12), runs_so_far=0) == utc(2024, 3, 10, 7)
    fall = cron("30 1 * * *", "America/New_York", start=utc(2024, 3, 1))
    assert upcoming(fall, utc(2024, 11, 2, 12), 2) == [
        utc(2024, 11, 3, 5, 30),  # 01:30 EDT, not also 01:30 EST (06:30 UTC)
        utc(2024, 11, 4, 6, 30),
    ]


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        (date(2010, 1, 15), utc(2010, 1, 15, 9)),  # MSK, UTC+3 in winter
        (date(2010, 7, 1), utc(2010, 7, 1, 8)),  # MSD, UTC+4 in summer
        (date(2012, 1, 15), utc(2012, 1, 15, 8)),  # UTC+4 all year 2011-2014
        (date(2012, 7, 1), utc(2012, 7, 1, 8)),
        (date(2015, 1, 15), utc(2015, 1, 15, 9)),  # UTC+3 since 26 Oct 2014
        (date(2015, 7, 1), utc(2015, 7, 1, 9)),
    ],
)
def test_moscow_history(day: date, expected: datetime) -> None:
    schedule = cron("0 12 * * *", "Europe/Moscow", start=utc(2009, 1, 1))
    after = datetime.combine(day, time(), tzinfo=UTC)
    assert next_occurrence(schedule, after, runs_so_far=0) == expected
    assert (
        next_occurrence(
            rule("FREQ=DAILY;BYHOUR=12;BYMINUTE=0", start=utc(2009, 1, 1)), after, runs_so_far=0
        )
        == expected
    )


def test_moscow_last_transitions() -> None:
    # 27 March 2011: 02:00 -> 03:00 for good (UTC+4); 02:30 fires at 03:00 MSK = 23:00 UTC.
    gap = cron("30 2 * * *", start=utc(2011, 1, 1))
    assert next_occurrence(gap, utc(2011, 3, 26, 12), runs_so_far=0) == utc(2011, 3, 26, 23)
    # 26 October 2014: 02:00 -> 01:00 (UTC+3); 01:30 fires once, at the first (UTC+4).
    overlap = cron("30 1 * * *", start=utc(2014, 1, 1))
    assert upcoming(overlap, utc(2014, 10, 25, 12), 2) == [
        utc(2014, 10, 25, 21, 30),
        utc(2014, 10, 26, 22, 30),
    ]


def test_wall_to_utc_rule() -> None:
    assert wall_to_utc(datetime(2024, 3, 31, 2, 30), BERLIN) == utc(2024, 3, 31, 1)
    assert wall_to_utc(datetime(2024, 3, 31, 2, 0), BERLIN) == utc(2024, 3, 31, 1)
    assert wall_to_utc(datetime(2024, 3, 31, 3, 0), BERLIN) == utc(2024, 3, 31, 1)
    assert wall_to_utc(datetime(2024, 10, 27, 2, 30), BERLIN) == utc(2024, 10, 27, 0, 30)
    assert wall_to_utc(datetime(2024, 6, 1, 12), ZoneInfo("Asia/Kolkata")) == utc(2024, 6, 1, 6, 30)
    # Samoa skipped 30 December 2011 entirely: any time that day is the first instant after.
    apia = ZoneInfo("Pacific/Apia")
    assert wall_to_utc(datetime(2011, 12, 30, 12), apia) == datetime(2011, 12, 31, tzinfo=apia)


# --------------------------------------------------------------------------------------------
# Catch-up


def test_due_once() -> None:
    once = Schedule("once", utc(2024, 6, 1, 9), "UTC")
    before = due_occurrence(
        once, last_scheduled=None, now=utc(2024, 6, 1, 8), runs_so_far=0, catch_up="skip"
    )
    assert before == (None, utc(2024, 6, 1, 9))
    # Long past: still starts now, even with skip.
    late = due_occurrence(
        once, last_scheduled=None, now=utc(2024, 9, 1), runs_so_far=0, catch_up="skip"
    )
    assert late == (utc(2024, 6, 1, 9), None)
    done = due_occurrence(
        once, last_scheduled=utc(2024, 6, 1, 9), now=utc(2024, 9, 1), runs_so_far=1, catch_up="once"
    )
    assert done == (None, None)


def due(
    schedule: Schedule,
    now: datetime,
    last: datetime | None = None,
    runs: int = 0,
    catch_up: str = "skip",
    **kw: object,
) -> tuple[datetime | None, datetime | None]:
    return due_occurrence(
        schedule, last_scheduled=last, now=now, runs_so_far=runs, catch_up=catch_up, **kw
    )  # type: ignore[arg-type]


def test_due_on_time_within_grace() -> None:
    hourly = cron("0 * * * *", "UTC", start=utc(2024, 6, 1))
    assert due(hourly, utc(2024, 6, 1, 10, 0, 30), last=utc(2024, 6, 1, 9)) == (
        utc(2024, 6, 1, 10),
        utc(2024, 6, 1, 11),
    )
    # Exactly grace old is still on time; a second more is missed.
    assert due(hourly, utc(2024, 6, 1, 10, 5), last=utc(2024, 6, 1, 9))[0] == utc(2024, 6, 1, 10)
    assert due(hourly, utc(2024, 6, 1, 10, 5, 1), last=utc(2024, 6, 1, 9)) == (
        None,
        utc(2024, 6, 1, 11),
    )
    assert due(
        hourly, utc(2024, 6, 1, 10, 5, 1), last=utc(2024, 6, 1, 9), grace=timedelta(minutes=10)
    )[0] == utc(2024, 6, 1, 10)
    # Nothing new since the last scheduled one.
    assert due(hourly, utc(2024, 6, 1, 10, 1), last=utc(2024, 6, 1, 10)) == (
        None,
        utc(2024, 6, 1, 11),
    )
    # Asked exactly at the occurrence.
    assert due(hourly, utc(2024, 6, 1, 10), last=utc(2024, 6, 1, 9)) == (
        utc(2024, 6, 1, 10),
        utc(2024, 6, 1, 11),
    )


def test_due_after_downtime_starts_at_most_one() -> None:
    hourly = cron("0 * * * *", "UTC", start=utc(2024, 6, 1))
    now = utc(2024, 6, 4, 10, 20)  # three days down; the newest missed is 10:00, 20 min old
    assert due(hourly, now, last=utc(2024, 6, 1, 9), catch_up="once") == (
        utc(2024, 6, 4, 10),
        utc(2024, 6, 4, 11),
    )
    assert due(hourly, now, last=utc(2024, 6, 1, 9), catch_up="skip") == (None, utc(2024, 6, 4, 11))
    # Never run at all: the same, counting from start.
    assert due(hourly, now, catch_up="once") == (utc(2024, 6, 4, 10), utc(2024, 6, 4, 11))
    # Once started, asking again starts nothing more.
    assert due(hourly, now, last=utc(2024, 6, 4, 10), runs=1, catch_up="once") == (
        None,
        utc(2024, 6, 4, 11),
    )


def test_due_before_start_and_after_the_end() -> None:
    daily = cron("0 10 * * *", "UTC", start=utc(2024, 6, 1), until=utc(2024, 6, 3, 10), max_runs=5)
    assert due(daily, utc(2024, 5, 20)) == (None, utc(2024, 6, 1, 10))
    # until passed while down: the last occurrence before until may still be caught up, once.
    assert due(daily, utc(2024, 6, 10), last=utc(2024, 6, 1, 10), runs=1, catch_up="once") == (
        utc(2024, 6, 3, 10),
        None,
    )
    assert due(daily, utc(2024, 6, 10), last=utc(2024, 6, 1, 10), runs=1, catch_up="skip") == (
        None,
        None,
    )
    # max_runs: the run started now is counted for the next one.
    two = cron("0 10 * * *", "UTC", start=utc(2024, 6, 1), max_runs=2)
    assert due(two, utc(2024, 6, 2, 10, 1), last=utc(2024, 6, 1, 10), runs=1) == (
        utc(2024, 6, 2, 10),
        None,
    )
    assert due(two, utc(2024, 6, 3, 10, 1), last=utc(2024, 6, 2, 10), runs=2) == (None, None)


def test_due_in_the_repeated_hour() -> None:
    quarterly = cron("*/15 * * * *", "Europe/Berlin", start=utc(2024, 10, 1))
    now = utc(2024, 10, 27, 1, 10)  # 02:10 CET, the second pass of 02:xx
    # The newest occurrence is 02:45 CEST (00:45 UTC), 25 minutes ago, not "02:00 CET".
    assert due(quarterly, now, last=utc(2024, 10, 27, 0, 30), catch_up="once") == (
        utc(2024, 10, 27, 0, 45),
        utc(2024, 10, 27, 2),
    )
    assert due(quarterly, now, last=utc(2024, 10, 27, 0, 45)) == (None, utc(2024, 10, 27, 2))


def test_due_argument_checks() -> None:
    hourly = cron("0 * * * *", "UTC")
    with pytest.raises(ValueError, match="grace"):
        due(hourly, utc(2024, 6, 1), grace=timedelta(seconds=-1))
    with pytest.raises(ValueError, match="catch_up"):
        due(hourly, utc(2024, 6, 1), catch_up="all")


@pytest.mark.parametrize(
    ("make", "begin"),
    [
        (
            lambda: cron("*/30 * * * *", "Europe/Berlin", start=utc(2024, 10, 1)),
            utc(2024, 10, 26, 12),
        ),
        (
            lambda: cron("*/30 * * * *", "Europe/Berlin", start=utc(2024, 3, 1)),
            utc(2024, 3, 30, 12),
        ),
        (
            lambda: rule("FREQ=HOURLY;BYMINUTE=0,30", "America/New_York", start=utc(2024, 3, 1)),
            utc(2024, 11, 2, 12),
        ),
        (lambda: cron("30 1 * * *", "Europe/Moscow", start=utc(2014, 1, 1)), utc(2014, 10, 24)),
    ],
)
def test_a_scheduler_ticking_every_minute_starts_exactly_the_upcoming_occurrences(
    make: object, begin: datetime
) -> None:
    schedule: Schedule = make()  # type: ignore[operator]
    started: list[datetime] = []
    last: datetime | None = None
    now = begin
    while now < begin + timedelta(hours=36):
        occurrence, following = due(schedule, now, last=last, runs=len(started), catch_up="skip")
        if occurrence is not None:
            started.append(occurrence)
            last = occurrence
        assert following is not None
        assert following > now
        now += timedelta(minutes=1)
    last_tick = now - timedelta(minutes=1)
    expected = upcoming(schedule, begin - timedelta(microseconds=1), 500)
    assert started == [moment for moment in expected if moment <= last_tick]
    assert len(started) == len(set(started))


# --------------------------------------------------------------------------------------------
# RRULE performance and the rebasing it relies on


def test_old_minutely_rule_is_answered_fast() -> None:
    schedule = rule("FREQ=MINUTELY;INTERVAL=7", "Europe/Berlin", start=utc(2024, 1, 1))
    began = clock.perf_counter()
    for _ in range(10):
        started, following = due(schedule, utc(2026, 6, 1, 0, 3), catch_up="once")
    assert clock.perf_counter() - began < 0.5  # dateutil from DTSTART: ~1.6 s a year, each
    assert started is not None
    assert following is not None
    assert following - started == timedelta(minutes=7)


REBASE_RULES = [
    "FREQ=MINUTELY;INTERVAL=7",
    "FREQ=MINUTELY;INTERVAL=13;BYHOUR=9,10,11;BYDAY=MO,TU",
    "FREQ=HOURLY;INTERVAL=5;BYMINUTE=0,20",
    "FREQ=HOURLY;BYHOUR=3,9,15",
    "FREQ=DAILY;INTERVAL=3;BYHOUR=10;BYMINUTE=0",
    "FREQ=DAILY;BYMONTH=2,7;BYHOUR=8,20;BYMINUTE=5;BYSETPOS=-1",
    "FREQ=WEEKLY;INTERVAL=2;BYDAY=MO,FR;BYHOUR=9;BYMINUTE=30",
    "FREQ=WEEKLY;INTERVAL=3;WKST=SU;BYDAY=SU,SA",
    "FREQ=WEEKLY;BYDAY=TU;UNTIL=20251231T000000",
]


@settings(max_examples=60, deadline=None)
@given(
    text=st.sampled_from(REBASE_RULES),
    start_minutes=st.integers(0, 60 * 24 * 40),
    query_minutes=st.integers(0, 60 * 24 * 400),
    seconds=st.integers(0, 59),
)
def test_rebased_rrule_agrees_with_dateutil_from_dtstart(
    text: str, start_minutes: int, query_minutes: int, seconds: int
) -> None:
    start = utc(2024, 1, 1, 0, 0) + timedelta(minutes=start_minutes)
    recurrence = _rrule_recurrence(text, start, ZoneInfo("UTC"))
    assert isinstance(recurrence, _RRuleRecurrence)
    full = rrulestr(text, dtstart=start.replace(tzinfo=None))
    query = start.replace(tzinfo=None) + timedelta(minutes=query_minutes, seconds=seconds)
    assert recurrence.next_after(query) == full.after(query)
    assert recurrence.last_at_or_before(query) == full.before(query, inc=True)


# --------------------------------------------------------------------------------------------
# Send windows

WEEKDAYS = frozenset({1, 2, 3, 4, 5})
DAYTIME = SendWindow(time(9), time(21), WEEKDAYS)
NIGHT = SendWindow(time(21), time(9), WEEKDAYS)


def test_parse_window_and_back() -> None:
    window = parse_window({"start": "09:00", "end": "21:00", "days": [1, 2, 3, 4, 5]})
    assert window == DAYTIME
    assert window.as_dict() == {"start": "09:00", "end": "21:00", "days": [1, 2, 3, 4, 5]}
    assert parse_window(window.as_dict()) == window
    assert parse_window({"start": "9:05", "end": "00:00"}) == SendWindow(time(9, 5), time(0))
    assert parse_window({"start": "21:00", "end": "09:00", "days": None}).overnight


@pytest.mark.parametrize(
    ("data", "field", "fragment"),
    [
        ({"start": "9", "end": "21:00"}, "start", "ЧЧ:ММ"),
        ({"start": "24:00", "end": "21:00"}, "start", "ЧЧ:ММ"),
        ({"start": "09:00", "end": "21:60"}, "end", "ЧЧ:ММ"),
        ({"start": 900, "end": "21:00"}, "start", "ЧЧ:ММ"),
        ({"end": "21:00"}, "start", "Обязательное поле"),
        ({"start": "09:00", "end": "09:00"}, "end", "в одно время"),
        ({"start": "09:00", "end": "21:00", "days": []}, "days", "никогда не откроется"),
        ({"start": "09:00", "end": "21:00", "days": [0, 1]}, "days", "от 1 (понедельник)"),
        ({"start": "09:00", "end": "21:00", "days": [8]}, "days", "до 7 (воскресенье)"),
        ({"start": "09:00", "end": "21:00", "days": ["1"]}, "days", "список чисел"),
        ({"start": "09:00", "end": "21:00", "days": [True]}, "days", "список чисел"),
        ({"start": "09:00", "end": "21:00", "days": "1-5"}, "days", "список чисел"),
        ({"start": "09:00", "end": "21:00", "day": [1]}, "day", "Неизвестное поле"),
    ],
)
def test_bad_windows(data: dict[str, object], field: str, fragment: str) -> None:
    with pytest.raises(WindowError) as caught:
        parse_window(data)
    assert caught.value.field == field
    assert fragment in caught.value.message


def test_window_edges_are_half_open() -> None:
    friday_nine = local(MOSCOW, 2024, 6, 7, 9)
    assert contains(DAYTIME, friday_nine, MOSCOW)
    assert opening_at_or_after(DAYTIME, friday_nine, MOSCOW) == friday_nine
    assert not contains(DAYTIME, friday_nine - timedelta(microseconds=1), MOSCOW)
    assert opening_at_or_after(DAYTIME, friday_nine - timedelta(minutes=1), MOSCOW) == friday_nine
    friday_close = local(MOSCOW, 2024, 6, 7, 21)
    assert contains(DAYTIME, friday_close - timedelta(microseconds=1), MOSCOW)
    assert not contains(DAYTIME, friday_close, MOSCOW)
    assert window_end_after(DAYTIME, friday_nine, MOSCOW) == friday_close
    assert window_end_after(DAYTIME, friday_close, MOSCOW) is None


def test_window_days_in_moscow() -> None:
    assert contains(DAYTIME, local(MOSCOW, 2024, 6, 7, 20), MOSCOW)  # Friday 20:00
    monday_nine = local(MOSCOW, 2024, 6, 10, 9)
    assert opening_at_or_after(DAYTIME, local(MOSCOW, 2024, 6, 7, 21), MOSCOW) == monday_nine
    assert (
        opening_at_or_after(DAYTIME, local(MOSCOW, 2024, 6, 8, 12), MOSCOW) == monday_nine
    )  # Saturday
    assert monday_nine == utc(2024, 6, 10, 6)


def test_overnight_window_belongs_to_the_day_it_opens() -> None:
    assert contains(NIGHT, local(MOSCOW, 2024, 6, 7, 23), MOSCOW)  # Friday night
    assert contains(NIGHT, local(MOSCOW, 2024, 6, 8, 8, 59), MOSCOW)  # ... until Saturday 09:00
    monday_night = local(MOSCOW, 2024, 6, 10, 21)
    assert opening_at_or_after(NIGHT, local(MOSCOW, 2024, 6, 8, 9), MOSCOW) == monday_night
    assert (
        opening_at_or_after(NIGHT, local(MOSCOW, 2024, 6, 9, 23), MOSCOW) == monday_night
    )  # Sunday night
    assert not contains(NIGHT, local(MOSCOW, 2024, 6, 10, 3), MOSCOW)  # opened on Sunday: no
    assert contains(NIGHT, local(MOSCOW, 2024, 6, 11, 3), MOSCOW)  # opened on Monday
    assert window_end_after(NIGHT, local(MOSCOW, 2024, 6, 7, 23), MOSCOW) == local(
        MOSCOW, 2024, 6, 8, 9
    )


def test_window_in_far_east_and_odd_offsets() -> None:
    vladivostok = ZoneInfo("Asia/Vladivostok")  # UTC+10
    tuesday = utc(2024, 6, 3, 22, 30)  # Tuesday 08:30 local, Monday in UTC
    assert not contains(DAYTIME, tuesday, vladivostok)
    assert opening_at_or_after(DAYTIME, tuesday, vladivostok) == utc(2024, 6, 3, 23)
    kamchatka = ZoneInfo("Asia/Kamchatka")  # UTC+12
    saturday = utc(2024, 6, 7, 20, 59)  # Saturday 08:59 local, Friday 20:59 UTC
    assert not contains(DAYTIME, saturday, kamchatka)
    assert opening_at_or_after(DAYTIME, saturday, kamchatka) == utc(2024, 6, 9, 21)  # Mon 09:00
    assert contains(DAYTIME, utc(2024, 6, 7, 8, 59), kamchatka)  # Friday 20:59 local
    kolkata = ZoneInfo("Asia/Kolkata")  # UTC+5:30
    assert opening_at_or_after(DAYTIME, utc(2024, 6, 7, 3, 29), kolkata) == utc(2024, 6, 7, 3, 30)
    assert not contains(DAYTIME, utc(2024, 6, 7, 15, 30), kolkata)
    assert contains(DAYTIME, utc(2024, 6, 7, 15, 29, 59), kolkata)


def test_window_on_dst_days_in_berlin() -> None:
    everyday = SendWindow(time(9), time(21))
    assert opening_at_or_after(everyday, utc(2024, 3, 31, 0), BERLIN) == utc(2024, 3, 31, 7)  # CEST
    assert opening_at_or_after(everyday, utc(2024, 10, 27, 0), BERLIN) == utc(
        2024, 10, 27, 8
    )  # CET
    # Opening in the gap: at 03:00 CEST, the first instant after it.
    from_gap = SendWindow(time(2, 30), time(5))
    assert opening_at_or_after(from_gap, utc(2024, 3, 30, 23), BERLIN) == utc(2024, 3, 31, 1)
    # Closing in the gap: when the clock jumps.
    into_gap = SendWindow(time(1), time(2, 30))
    assert contains(into_gap, utc(2024, 3, 31, 0, 59), BERLIN)  # 01:59 CET
    assert window_end_after(into_gap, utc(2024, 3, 31, 0, 30), BERLIN) == utc(2024, 3, 31, 1)
    assert not contains(into_gap, utc(2024, 3, 31, 1), BERLIN)  # 03:00 CEST
    # Wholly in the gap: empty that Sunday, so the next Sunday.
    sunday_gap = SendWindow(time(2, 10), time(2, 40), frozenset({7}))
    assert opening_at_or_after(sunday_gap, utc(2024, 3, 30, 12), BERLIN) == local(
        BERLIN, 2024, 4, 7, 2, 10
    )
    # Opening at a repeated time: the first 02:30 (CEST).
    from_overlap = SendWindow(time(2, 30), time(5))
    assert opening_at_or_after(from_overlap, utc(2024, 10, 26, 23), BERLIN) == utc(
        2024, 10, 27, 0, 30
    )
    assert contains(from_overlap, utc(2024, 10, 27, 1, 15), BERLIN)  # 02:15 CET, second pass


def test_window_on_dst_days_in_new_york() -> None:
    # 10 March 2024: 02:00 EST -> 03:00 EDT at 07:00 UTC.
    assert opening_at_or_after(
        SendWindow(time(2, 30), time(5)), utc(2024, 3, 10, 5), NEW_YORK
    ) == utc(2024, 3, 10, 7)
    closing = SendWindow(time(1), time(2, 30))
    assert contains(closing, utc(2024, 3, 10, 6, 59), NEW_YORK)
    assert not contains(closing, utc(2024, 3, 10, 7), NEW_YORK)
    # 3 November 2024: 02:00 EDT -> 01:00 EST at 06:00 UTC; 01:00-02:00 happens twice.
    late_evening = SendWindow(time(22), time(1, 30))
    assert window_end_after(late_evening, utc(2024, 11, 3, 3), NEW_YORK) == utc(2024, 11, 3, 5, 30)
    assert not contains(late_evening, utc(2024, 11, 3, 6, 15), NEW_YORK)  # 01:15 EST: closed
    night = SendWindow(time(0), time(3))
    assert contains(night, utc(2024, 11, 3, 5, 15), NEW_YORK)  # 01:15 EDT
    assert contains(night, utc(2024, 11, 3, 6, 15), NEW_YORK)  # 01:15 EST
    assert window_end_after(night, utc(2024, 11, 3, 6, 15), NEW_YORK) == utc(2024, 11, 3, 8)
    assert opening_at_or_after(
        SendWindow(time(1, 30), time(9)), utc(2024, 11, 3, 4), NEW_YORK
    ) == utc(2024, 11, 3, 5, 30)


PROPERTY_ZONES = [
    "Europe/Moscow",
    "Europe/Berlin",
    "America/New_York",
    "Asia/Vladivostok",
    "Asia/Kamchatka",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",  # a 30-minute DST shift
    "America/Havana",  # DST at midnight
    "America/Santiago",
    "Pacific/Apia",  # skipped 30 December 2011
    "UTC",
]
FIVE_MINUTES = timedelta(minutes=5)
grid_time = st.builds(time, st.integers(0, 23), st.sampled_from(range(0, 60, 5)))


@st.composite
def windows(draw: st.DrawFn) -> SendWindow:
    start = draw(grid_time)
    end = draw(grid_time.filter(lambda value: value != start))
    days = draw(st.none() | st.frozensets(st.integers(1, 7), min_size=1))
    return SendWindow(start, end, days)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    window=windows(),
    zone_name=st.sampled_from(PROPERTY_ZONES),
    moment=st.datetimes(datetime(2005, 1, 1), datetime(2035, 1, 1), timezones=st.just(UTC)),
)
def test_opening_is_the_first_inside_instant(
    window: SendWindow, zone_name: str, moment: datetime
) -> None:
    zone = ZoneInfo(zone_name)
    opening = opening_at_or_after(window, moment, zone)
    assert opening >= moment
    assert contains(window, opening, zone)
    if opening == moment:
        return
    # Window edges are whole 5-minute wall times and these zones' offsets and transitions are
    # whole 5-minute UTC times, so membership is constant on each 5-minute UTC step: checking
    # the input and every step boundary before the opening checks every minute (and instant).
    assert not contains(window, moment, zone)
    step = moment.replace(second=0, microsecond=0) + timedelta(minutes=5 - moment.minute % 5)
    while step < opening:
        assert not contains(window, step, zone), step
        step += FIVE_MINUTES
    end = window_end_after(window, opening, zone)
    assert end is not None
    assert end > opening


@settings(max_examples=200, deadline=None)
@given(
    window=windows(),
    zone_name=st.sampled_from(
        ["Europe/Moscow", "Asia/Kolkata", "Asia/Vladivostok", "Asia/Kamchatka", "UTC"]
    ),
    moment=st.datetimes(datetime(2016, 1, 1), datetime(2035, 1, 1), timezones=st.just(UTC)),
)
def test_contains_is_the_wall_clock_rule_where_there_is_no_dst(
    window: SendWindow, zone_name: str, moment: datetime
) -> None:
    zone = ZoneInfo(zone_name)
    wall = moment.astimezone(zone).replace(tzinfo=None)
    if window.overnight:
        opened_on = wall.date() if wall.time() >= window.start else wall.date() - timedelta(days=1)
        inside = wall.time() >= window.start or wall.time() < window.end
    else:
        opened_on = wall.date()
        inside = window.start <= wall.time() < window.end
    if window.days is not None:
        inside = inside and opened_on.isoweekday() in window.days
    assert contains(window, moment, zone) == inside


def test_window_rejects_naive_moments_and_bad_construction() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        contains(DAYTIME, datetime(2024, 6, 7, 12), MOSCOW)
    with pytest.raises(WindowError):
        SendWindow(time(9, tzinfo=UTC), time(21))
    with pytest.raises(WindowError):
        SendWindow(time(9), time(21), frozenset())


# --------------------------------------------------------------------------------------------
# The recipient's zone


def test_recipient_zone_order() -> None:
    assert recipient_zone("Asia/Omsk", "+74951234567", "Europe/Samara") == "Asia/Omsk"
    assert recipient_zone(None, "+74951234567", "Asia/Omsk") == "Europe/Moscow"  # Moscow landline
    assert recipient_zone(None, "+73832123456", "Europe/Moscow") == "Asia/Novosibirsk"
    assert recipient_zone(None, "+4930123456", "Europe/Moscow") == "Europe/Berlin"
    assert recipient_zone(None, "+12125551234", "Europe/Moscow") == "America/New_York"
    # Russian and Kazakh mobiles name many zones: the mailing's.
    assert recipient_zone(None, "+79161234567", "Asia/Omsk") == "Asia/Omsk"
    assert recipient_zone(None, "+77012345678", "Asia/Omsk") == "Asia/Omsk"
    assert recipient_zone("", None, "Asia/Omsk") == "Asia/Omsk"
    assert recipient_zone("Not/AZone", "garbage", "Asia/Omsk") == "Asia/Omsk"
    assert recipient_zone(None, "+999", "UTC") == "UTC"


def test_phone_zones_counts() -> None:
    assert len(phone_zones("+79161234567")) > 1
    assert len(phone_zones("+77012345678")) > 1
    assert phone_zones("+74951234567") == ("Europe/Moscow",)
    assert phone_zones("+77272501234") == ("Asia/Almaty",)
    assert phone_zones("not a number") == ()


def test_recipient_zone_is_cheap() -> None:
    phones = [f"+7495{index:07d}" for index in range(2000)]
    recipient_zone(None, phones[0], "UTC")
    began = clock.perf_counter()
    for phone in phones:
        recipient_zone(None, phone, "UTC")
    per_call = (clock.perf_counter() - began) / len(phones)
    assert per_call < 0.001  # ~20 µs measured; generous for a loaded machine


def test_random_cron_occurrences_match_croniter_where_there_is_no_dst() -> None:
    generator = random.Random(20240601)
    expressions = ["*/7 * * * *", "15 9-18 * * 1-5", "0 0 1 * *", "30 23 * * 0", "5 */3 * 2,8 *"]
    for expression in expressions:
        schedule = cron(expression, "Asia/Kolkata", start=utc(2020, 1, 1))
        for _ in range(20):
            after = utc(2020, 1, 1) + timedelta(minutes=generator.randrange(60 * 24 * 365 * 3))
            expected = croniter(expression, after.astimezone(ZoneInfo("Asia/Kolkata"))).get_next(
                datetime
            )
            assert next_occurrence(schedule, after, runs_so_far=0) == expected.astimezone(UTC)
