"""When a message that failed for a temporary reason is tried again, and when it is not."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rassylka.config import Settings


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded by attempts and by the message's age.

    The n-th retry waits ``base_delay · 2ⁿ⁻¹`` seconds (at most ``max_delay``), of which a
    random half is dropped ("equal jitter"), so that messages failed together by one outage
    do not all come back in the same second.
    """

    max_attempts: int = 5
    base_delay: float = 30.0
    max_delay: float = 3600.0
    max_age: float = 86400.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            max_attempts=settings.retry_max_attempts,
            base_delay=settings.retry_base_delay,
            max_delay=settings.retry_max_delay,
            max_age=settings.retry_max_age,
        )

    def delay(self, attempts: int, *, rng: random.Random | None = None) -> float:
        """Seconds before the next try of a message tried ``attempts`` times so far."""
        exponent = min(max(attempts - 1, 0), 62)
        full = min(self.max_delay, self.base_delay * 2.0**exponent)
        return full / 2 + (rng or random).uniform(0, full / 2)

    def next_attempt(
        self,
        *,
        attempts: int,
        created_at: datetime,
        now: datetime,
        rng: random.Random | None = None,
    ) -> datetime | None:
        """When to try again, or None when the message has had its attempts or its time."""
        if attempts >= self.max_attempts:
            return None
        moment = now + timedelta(seconds=self.delay(attempts, rng=rng))
        if moment - created_at > timedelta(seconds=self.max_age):
            return None
        return moment
