"""The rate limiter's slots, on a clock the test moves (no sleeping, no timing)."""

from __future__ import annotations

import asyncio

import pytest

from rassylka.engine.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_callers_at_the_same_moment_get_slots_one_interval_apart() -> None:
    clock = Clock()
    limiter = RateLimiter(20.0, clock=clock)
    assert [limiter.reserve() for _ in range(5)] == pytest.approx([0.0, 0.05, 0.10, 0.15, 0.20])


def test_an_idle_limiter_saves_up_no_burst() -> None:
    clock = Clock()
    limiter = RateLimiter(10.0, clock=clock)
    assert limiter.reserve() == 0.0
    clock.now += 5.0  # idle for 50 slots: the next send goes now, the one after a slot later
    assert [limiter.reserve() for _ in range(3)] == pytest.approx([0.0, 0.1, 0.2])


def test_a_caller_between_slots_waits_for_the_next_free_one() -> None:
    clock = Clock()
    limiter = RateLimiter(4.0, clock=clock)
    assert limiter.reserve() == 0.0
    clock.now += 0.1
    assert limiter.reserve() == pytest.approx(0.15)
    assert limiter.reserve() == pytest.approx(0.40)


def test_no_limit_never_waits() -> None:
    limiter = RateLimiter(0.0)
    assert all(limiter.reserve() == 0.0 for _ in range(100))


def test_a_negative_rate_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        RateLimiter(-1.0)


async def test_concurrent_acquirers_on_one_loop_never_share_a_slot() -> None:
    limiter = RateLimiter(200.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    times: list[float] = []

    async def one() -> None:
        await limiter.acquire()
        times.append(loop.time())

    await asyncio.gather(*(one() for _ in range(6)))
    # six slots 5 ms apart: the last cannot begin before 25 ms, whatever the load
    assert max(times) - started >= 0.025 * 0.9
