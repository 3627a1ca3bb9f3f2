"""Pure time logic of mailing schedules: occurrences, send windows, the recipient's zone.

No database, no HTTP, no clock: ``now`` is always a parameter and every datetime in or out is
timezone-aware (UTC out). See each module's docstring for its rules.
"""

from rassylka.scheduling._wall import wall_to_utc
from rassylka.scheduling.schedule import (
    CatchUp,
    Schedule,
    ScheduleError,
    ScheduleKind,
    due_occurrence,
    first_occurrence,
    next_occurrence,
    upcoming,
)
from rassylka.scheduling.window import (
    SendWindow,
    WindowError,
    contains,
    opening_at_or_after,
    parse_window,
    window_end_after,
)
from rassylka.scheduling.zones import phone_zone, phone_zones, recipient_zone, zone_or_utc

__all__ = [
    "CatchUp",
    "Schedule",
    "ScheduleError",
    "ScheduleKind",
    "SendWindow",
    "WindowError",
    "contains",
    "due_occurrence",
    "first_occurrence",
    "next_occurrence",
    "opening_at_or_after",
    "parse_window",
    "phone_zone",
    "phone_zones",
    "recipient_zone",
    "upcoming",
    "wall_to_utc",
    "window_end_after",
    "zone_or_utc",
]
