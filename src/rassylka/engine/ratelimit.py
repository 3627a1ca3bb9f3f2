"""A rate limit for one channel of one worker: evenly spaced sends, no bursts."""

from __future__ import annotations

import asyncio
import time


class RateLimiter:
    """At most ``rate`` acquisitions per second, spaced ``1/rate`` apart (0: no limit).

    Each caller reserves the next free slot and sleeps until it; reservation is synchronous,
    so concurrent callers on one event loop never share a slot.
    """

    def __init__(self, rate: float) -> None:
        if rate < 0:
            raise ValueError("rate must not be negative")
        self.rate = rate
        self._interval = 1.0 / rate if rate else 0.0
        self._next = 0.0

    async def acquire(self) -> None:
        if not self._interval:
            return
        now = time.monotonic()
        slot = max(now, self._next)
        self._next = slot + self._interval
        if slot > now:
            await asyncio.sleep(slot - now)
