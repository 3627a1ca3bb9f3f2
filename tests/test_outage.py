"""The engine's loops while the database is away (engine.outage): one WARNING for the outage
whichever loop meets it, no traceback, growing waits; one INFO once it is back; any other error
still logged with its traceback."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from rassylka.engine import outage
from rassylka.engine.outage import FIRST_DELAY, MAX_DELAY, Backoff

log = logging.getLogger("rassylka.test")


@pytest.fixture(autouse=True)
def reachable() -> Iterator[None]:
    outage.database_back()
    yield
    outage.database_back()


def fail(backoff: Backoff, error: Exception) -> float:
    try:
        raise error
    except Exception as raised:
        return backoff.failed(raised, log, "a step failed; trying again")


def test_an_unreachable_database_is_said_once_and_waited_out_longer_each_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    claimer, writer = Backoff(1.0), Backoff(1.0)
    refused = ConnectionRefusedError(111, "Connection refused")
    delays = [fail(claimer, refused) for _ in range(6)]
    fail(writer, refused)
    assert delays == [FIRST_DELAY, 1.0, 2.0, 4.0, MAX_DELAY, MAX_DELAY]
    assert outage.is_away()
    said = [(record.levelname, record.getMessage()) for record in caplog.records]
    assert said == [
        (
            "WARNING",
            "the database is unreachable (ConnectionRefusedError: [Errno 111] Connection "
            "refused); waiting for it, retrying every 0.5–5.0 s",
        )
    ]
    assert not [record for record in caplog.records if record.exc_info]
    claimer.succeeded()
    writer.succeeded()
    assert not outage.is_away()
    assert [record.levelname for record in caplog.records] == ["WARNING", "INFO"]
    assert caplog.records[1].getMessage().startswith("the database is reachable again after ")
    assert fail(claimer, refused) == FIRST_DELAY, "the waits start short again"


def test_any_other_error_is_logged_with_its_traceback_every_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backoff = Backoff(1.0)
    delays = [fail(backoff, ValueError("a bug")) for _ in range(2)]
    assert delays == [1.0, 1.0]
    assert not outage.is_away()
    assert [record.levelname for record in caplog.records] == ["ERROR", "ERROR"]
    assert all(record.exc_info for record in caplog.records)
