"""Which API keys are accepted, as each API process knows them: a snapshot of the stored keys
(refreshed every ``TTL`` seconds) and the keys of ``RASSYLKA_API_KEYS``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from rassylka.access import repository
from rassylka.access.service import hash_secret

logger = logging.getLogger(__name__)

TTL = 5.0
"""Seconds a process goes on using what it read of the api_key table: a key created
(``rassylka apikey create``, in another process) or revoked takes effect within this. Between
two reads no request queries the database for its key."""


@dataclass(frozen=True, slots=True)
class Caller:
    """Whom a request comes from, as the middlewares after authentication see it."""

    caller_id: str
    """``key:<id>`` (a stored key), ``env:<n>`` (the n-th of RASSYLKA_API_KEYS, from 1),
    ``addr:<host>`` (no key needed)."""
    project_id: int | None = None
    """The one project a scoped key sees; None: every project."""
    project_code: str | None = None


@dataclass(frozen=True)
class Snapshot:
    by_hash: Mapping[str, Caller] = field(default_factory=dict)
    """The keys that work (stored and not revoked, or set in the environment)."""
    revoked_only: bool = False
    """Keys were made and every one is revoked."""

    @property
    def required(self) -> bool:
        """Whether a key is needed at all: any key was ever made (stored, even if revoked, or
        set in the environment). Revoking the last key locks the API rather than opening it:
        a service on a public address must not fall back to no authorisation by itself."""
        return bool(self.by_hash) or self.revoked_only

    def find(self, secret: str) -> Caller | None:
        """The caller a secret belongs to. Looked up by its hash, so how long the lookup takes
        says nothing about the secrets (only about hashes, which can't be turned back)."""
        return self.by_hash.get(hash_secret(secret))


class KeyRing:
    """The keys of one API process. ``current()`` answers from memory and reads the table again
    once ``TTL`` has passed (one read at a time however many requests wait for it). If that
    read fails, the last snapshot goes on serving for another ``TTL``: a database that blinks
    does not lock everyone out; with no snapshot yet, the error goes to the caller (503)."""

    def __init__(
        self,
        env_keys: Iterable[str],
        *,
        ttl: float = TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine: AsyncEngine | None = None
        self.ttl = ttl
        self._clock = clock
        self._env = {
            hash_secret(secret): Caller(f"env:{number}")
            for number, secret in enumerate(env_keys, start=1)
        }
        self._snapshot: Snapshot | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()

    async def current(self) -> Snapshot:
        snapshot = self._snapshot
        if snapshot is not None and self._clock() < self._expires:
            return snapshot
        async with self._lock:
            if self._snapshot is not None and self._clock() < self._expires:
                return self._snapshot
            try:
                stored, revoked = await self._load()
            except Exception as error:
                if self._snapshot is None:
                    raise
                logger.warning("API keys not re-read, the last ones stay in use: %s", error)
            else:
                self._snapshot = Snapshot({**stored, **self._env}, revoked_only=revoked)
            self._expires = self._clock() + self.ttl
            return self._snapshot

    def expire(self) -> None:
        """Read the table at the next request (a key made or revoked in this process)."""
        self._expires = 0.0

    async def _load(self) -> tuple[dict[str, Caller], bool]:
        """The keys that work, and whether any stored key is revoked."""
        if self.engine is None:
            return {}, False
        async with self.engine.connect() as connection:
            rows = await repository.stored(connection)
        working = {
            key_hash: Caller(f"key:{key_id}", project_id, code)
            for key_hash, key_id, project_id, code, revoked in rows
            if not revoked
        }
        return working, any(revoked for *_, revoked in rows)
