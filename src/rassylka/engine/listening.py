"""PostgreSQL LISTEN for the long-running loops: a NOTIFY on a channel calls its function.

The worker wakes its dispatcher, scheduler and webhook sender this way; the live stream's
event hub wakes its readers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from rassylka.errors import database_unavailable

logger = logging.getLogger(__name__)
# How often a listening connection is checked for having closed.
LISTEN_CHECK_INTERVAL = 5.0


async def listen(
    engine: AsyncEngine,
    listeners: Mapping[str, Callable[[], None]],
    stop: asyncio.Event,
    *,
    on_connected: Callable[[bool], None] | None = None,
) -> None:
    """Call each channel's function on its NOTIFY, reconnecting if the connection drops;
    while it is down, polling and the scheduler's own timer still find the work.
    ``on_connected`` hears when listening starts (True) and ends (False), for a caller that
    polls faster while nothing is heard."""

    def callback(_connection: Any, _pid: int, channel: str, _payload: str) -> None:
        listeners[channel]()

    while not stop.is_set():
        try:
            async with engine.connect() as connection:
                raw = await connection.get_raw_connection()
                driver: Any = raw.driver_connection
                for channel in listeners:
                    await driver.add_listener(channel, callback)
                if on_connected is not None:
                    on_connected(True)
                try:
                    while not stop.is_set() and not driver.is_closed():
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(LISTEN_CHECK_INTERVAL):
                                await stop.wait()
                finally:
                    if on_connected is not None:
                        on_connected(False)
                    if not driver.is_closed():
                        for channel in listeners:
                            await driver.remove_listener(channel, callback)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            # A database that went away is said once (engine.outage), not every few seconds.
            if not database_unavailable(error):
                logger.warning("LISTEN %s failed; polling until it is back", ", ".join(listeners))
        if not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LISTEN_CHECK_INTERVAL):
                    await stop.wait()
