"""A rate limit for one channel of one worker: evenly spaced sends, no bursts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class RateLimiter:
    """At most ``rate`` acquisitions per second, spaced ``1/rate`` apart (0: no limit).

    Each caller reserves the next free slot and sleeps until it; reservation is synchronous,
    so concurrent callers on one event loop never share a slot.
    """

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if rate < 0:
            raise ValueError("rate must not be negative")
        self.rate = rate
        self._interval = 1.0 / rate if rate else 0.0
        self._next = 0.0
        self._clock = clock

    def reserve(self) -> float:
        """Take the next free slot: seconds from now until it (0 if it is now)."""
        if not self._interval:
            return 0.0
        now = self._clock()
        slot = max(now, self._next)
        self._next = slot + self._interval
        return slot - now

    async def acquire(self) -> None:
        delay = self.reserve()
        if delay > 0:
            await asyncio.sleep(delay)
