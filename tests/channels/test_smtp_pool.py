"""The SMTP channel's connections go to the senders waiting for one in turn: with more senders
than connections (the defaults: 16 and 4), none waits for ever while the others take turns."""

from __future__ import annotations

import asyncio
import time

from rassylka.channels.smtp import _FairPool


async def test_a_connection_given_back_goes_to_the_longest_waiter() -> None:
    clients: list[object] = [object() for _ in range(4)]
    pool = _FairPool(clients)  # type: ignore[arg-type]
    longest = [0.0] * 8

    async def sender(n: int) -> None:
        until = time.monotonic() + 1.0
        while time.monotonic() < until:
            asked = time.monotonic()
            client = await pool.take()
            longest[n] = max(longest[n], time.monotonic() - asked)
            await asyncio.sleep(0.005)
            pool.give(client)

    await asyncio.gather(*(sender(n) for n in range(8)))
    # asyncio.Queue let the four that gave a connection back take it again: the other four
    # waited the whole second.
    assert max(longest) < 0.5, longest


async def test_the_connection_just_used_is_taken_next_and_a_cancelled_taker_loses_none() -> None:
    first, second = object(), object()
    pool = _FairPool([first, second])  # type: ignore[list-item]
    taken = await pool.take()
    assert taken is first
    pool.give(taken)
    assert await pool.take() is first, "LIFO: one open connection serves a trickle"
    other = await pool.take()
    waiting = asyncio.create_task(pool.take())
    await asyncio.sleep(0)
    waiting.cancel()
    pool.give(other)
    await asyncio.gather(waiting, return_exceptions=True)
    assert await pool.take() is other, "the cancelled waiter did not keep it"
