"""The database going away under the engine's loops: said once, waited out, said back.

Every loop of a worker (claimer, writer, scheduler, webhook sender, receipt inbox, …) retries
what failed. When the failure is the database being unreachable (a restart, a network cut:
``errors.database_unavailable``), each retry fails the same way; logged as an error with its
traceback, a 15 s restart made ~500 such lines per worker and hid anything else. So while the
database is away the process says so once (a WARNING, no traceback), each loop waits longer
between tries (0.5 s doubling to 5 s) instead of spinning, and the first loop that gets through
says once that it is back (INFO). Any other error is still logged with its traceback.
"""

from __future__ import annotations

import logging
import time

from rassylka.errors import _first_line, database_unavailable

logger = logging.getLogger(__name__)

FIRST_DELAY = 0.5
MAX_DELAY = 5.0

# Per process: one WARNING for the outage, whichever loop meets it first.
_away_since: float | None = None


def is_away() -> bool:
    """Whether the database is known to be unreachable (no loop got through since)."""
    return _away_since is not None


def database_back() -> None:
    """A loop got through to the database: if it was away, say once that it is back."""
    global _away_since
    if _away_since is not None:
        logger.info("the database is reachable again after %.1f s", time.monotonic() - _away_since)
        _away_since = None


def failed(error: BaseException, log: logging.Logger, message: str, *args: object) -> bool:
    """Log a failed database step: ``message`` with the traceback, or, if the database is
    unreachable, one WARNING for the whole outage. Whether the database is unreachable."""
    global _away_since
    if not database_unavailable(error):
        log.exception(message, *args)
        return False
    if _away_since is None:
        _away_since = time.monotonic()
        logger.warning(
            "the database is unreachable (%s); waiting for it, retrying every %s–%s s",
            _first_line(error),
            FIRST_DELAY,
            MAX_DELAY,
        )
    return True


class Backoff:
    """One loop's retry delay: ``delay`` after a generic failure; while the database is away,
    ``FIRST_DELAY`` doubling up to ``MAX_DELAY``."""

    def __init__(self, delay: float = 1.0) -> None:
        self._delay = delay
        self._next = FIRST_DELAY

    def failed(
        self, error: BaseException, log: logging.Logger, message: str, *args: object
    ) -> float:
        """Log ``error`` as the loop should and return the seconds to wait before retrying."""
        if not failed(error, log, message, *args):
            return self._delay
        delay, self._next = self._next, min(self._next * 2, MAX_DELAY)
        return delay

    def succeeded(self) -> None:
        self._next = FIRST_DELAY
        database_back()
