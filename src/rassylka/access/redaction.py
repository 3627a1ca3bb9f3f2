"""Secrets kept out of the logs: the query parameters that carry them (the SMS provider's
``?token=``, an event stream's ``?access_token=``) are masked in every line uvicorn logs."""

from __future__ import annotations

import logging
import re

SECRET_PARAMETERS = ("access_token", "token", "api_key", "apikey", "key", "secret", "password")
MASK = "***"

_IN_QUERY = re.compile(
    r"(?P<name>(?:^|(?<=[?&;]))(?:" + "|".join(SECRET_PARAMETERS) + r"))=(?P<value>[^&;\s\"']*)",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` with the values of secret-bearing query parameters masked."""
    if "=" not in text:
        return text
    return _IN_QUERY.sub(lambda match: f"{match['name']}={MASK}", text)


class RedactSecrets(logging.Filter):
    """Masks secret query parameters in a record's message and arguments (uvicorn's access
    line has the path with its query as an argument)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact(argument) if isinstance(argument, str) else argument
                for argument in record.args
            )
        return True


# A logger's filter sees only what is logged on it (not what its children pass up): these two
# are where uvicorn writes a request's path.
LOGGERS = ("uvicorn.access", "uvicorn.error")


def install() -> None:
    """Put the filter on the loggers that may print a request's path (once per process)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, RedactSecrets) for existing in logger.filters):
            logger.addFilter(RedactSecrets())
