"""Wall-clock ↔ UTC conversion with one rule for the times a time zone skips or repeats.

Every local wall time is turned into exactly one instant:

* a time that exists once is that instant;
* a time inside a spring-forward gap (it never shows on the clock, e.g. 02:30 in Europe/Berlin on
  the last Sunday of March) is the first instant after the gap — the moment the clock jumps,
  03:00 local;
* a time that happens twice in a fall-back overlap (02:30 on the last Sunday of October in Berlin)
  is its first occurrence (``fold=0``, still summer time).

The map is non-decreasing: a later wall time never gives an earlier instant, so walking wall times
in order walks instants in order (several gap times collapse into the one instant after the gap).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


@lru_cache(maxsize=1024)
def known_zone(name: str) -> bool:
    """Whether ``name`` is an IANA zone this machine can load."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def require_aware(moment: datetime, name: str) -> datetime:
    """``moment`` in UTC; a naive datetime is a programming error (ValueError)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {moment!r}")
    return moment.astimezone(UTC)


def utc_to_wall(moment: datetime, zone: ZoneInfo) -> datetime:
    """The naive local wall time in ``zone`` at the instant ``moment``."""
    return moment.astimezone(zone).replace(tzinfo=None)


def wall_to_utc(wall: datetime, zone: ZoneInfo) -> datetime:
    """The instant (UTC) of the naive wall time ``wall`` in ``zone``, by the rule above."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if first <= second:
        # Exists: once (equal) or twice (fold=0 is the earlier of the two).
        return first
    # In a gap, fold=0 reads the wall time with the offset from before the jump and fold=1 with
    # the one after, so the jump itself lies in (second, first]: find it to the second.
    return _transition_between(second, first, zone)


def _offset(timestamp: int, zone: ZoneInfo) -> timedelta | None:
    return datetime.fromtimestamp(timestamp, zone).utcoffset()


def _transition_between(before: datetime, after: datetime, zone: ZoneInfo) -> datetime:
    low = math.floor(before.timestamp())
    high = math.ceil(after.timestamp())
    offset_after = _offset(high, zone)
    while high - low > 1:
        middle = (low + high) // 2
        if _offset(middle, zone) == offset_after:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


def wall_offset_repeat(moment: datetime, zone: ZoneInfo) -> timedelta:
    """How far past ``moment``'s wall time the wall clock still reads times already passed.

    Zero except in the second pass of a fall-back overlap (``fold=1``), where it is the size of
    the overlap: wall times up to that much later were first shown before ``moment``.
    """
    local = moment.astimezone(zone)
    if not local.fold:
        return timedelta(0)
    earlier = local.replace(fold=0).utcoffset()
    later = local.utcoffset()
    if earlier is None or later is None or earlier <= later:
        return timedelta(0)
    return earlier - later
