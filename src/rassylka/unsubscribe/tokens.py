"""The unsubscribe token of a message: its link, its mailto address, and checking them.

A token is ``{message id}-{tag}``: the tag is the 80-bit BLAKE2b of the id keyed with the
installation's key (personalised ``rassylka-unsub``, so it is no other use's MAC of the same
key), in 16 lower-case base32 letters — case-insensitive, as a mailto address's local part may
come back in another case, and short enough for an SMS (a link of about 60 characters). Whoever
holds a message can opt its recipient out; no one can make the token of another message.

The key is ``RASSYLKA_SECRET_KEY`` when set; otherwise one made once and kept in the database
(table ``installation_key``), so links keep working after a restart and in every process.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import re
import secrets
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from rassylka.unsubscribe.models import InstallationKey

if TYPE_CHECKING:
    from rassylka.config import Settings

PATH: Final = "/unsubscribe/"
MAILTO_PREFIX: Final = "unsubscribe+"
MAILTO_SUBJECT: Final = "unsubscribe"
KEY_NAME: Final = "unsubscribe"
TAG_BYTES: Final = 10
MAX_ID: Final = 2**63 - 1
_TOKEN = re.compile(r"(?i)^([1-9][0-9]{0,18})-([a-z2-7]{16})$")
SAMPLE_TOKEN: Final = "1234567-abcdefghijklmnop"
"""What a template preview's ``{{ unsubscribe_url }}`` ends with: a link of a real one's
length, that opens no one's page."""


@dataclass(frozen=True)
class Unsubscribe:
    """Signs and checks the tokens of one installation; builds the links and addresses."""

    key: bytes
    base_url: str
    """Where recipients reach the API (``RASSYLKA_PUBLIC_URL``), no trailing slash."""
    mailto_domain: str | None = None
    """The bounce domain, whose listener takes the mailto; None: no mailto is offered."""
    _mac: hashlib.blake2b = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        key = self.key if len(self.key) <= 64 else hashlib.blake2b(self.key).digest()
        mac = hashlib.blake2b(key=key, digest_size=TAG_BYTES, person=b"rassylka-unsub")
        object.__setattr__(self, "_mac", mac)

    @classmethod
    def of(cls, settings: Settings, stored_key: bytes) -> Unsubscribe:
        """With ``RASSYLKA_SECRET_KEY`` if set, else ``stored_key`` (``stored_key_of``)."""
        secret = settings.secret_key.get_secret_value() if settings.secret_key else ""
        return cls(
            secret.encode() if secret else stored_key,
            settings.public_base_url,
            settings.bounce_domain,
        )

    def token(self, message_id: int) -> str:
        return f"{message_id}-{self._tag(message_id)}"

    def message_id(self, token: str) -> int | None:
        """The message a token names, if it is well formed and its signature ours."""
        match = _TOKEN.match(token.strip())
        if match is None:
            return None
        message_id = int(match[1])
        if message_id > MAX_ID or not hmac.compare_digest(match[2].lower(), self._tag(message_id)):
            return None
        return message_id

    def url(self, message_id: int) -> str:
        return f"{self.base_url}{PATH}{self.token(message_id)}"

    def mailto(self, message_id: int) -> str | None:
        """``mailto:unsubscribe+TOKEN@<bounce domain>?subject=unsubscribe``, or None without a
        bounce domain (no listener would read it)."""
        if self.mailto_domain is None:
            return None
        return f"mailto:{self.address(message_id)}?subject={MAILTO_SUBJECT}"

    def address(self, message_id: int) -> str:
        return f"{MAILTO_PREFIX}{self.token(message_id)}@{self.mailto_domain}"

    def message_id_of(self, address: str) -> int | None:
        """The message an unsubscribe address of our domain names (None for any other)."""
        local, at, domain = address.strip().strip("<>").rpartition("@")
        if not at or self.mailto_domain is None or not local.lower().startswith(MAILTO_PREFIX):
            return None
        if domain.lower().rstrip(".") != self.mailto_domain:
            return None
        return self.message_id(local[len(MAILTO_PREFIX) :])

    def uris(self, message_id: int) -> tuple[str, ...]:
        """What ``List-Unsubscribe`` lists: the link, then the mailto if there is one."""
        mailto = self.mailto(message_id)
        url = self.url(message_id)
        return (url, mailto) if mailto else (url,)

    def _tag(self, message_id: int) -> str:
        mac = self._mac.copy()
        mac.update(b"%d" % message_id)
        return base64.b32encode(mac.digest()).decode().lower()


# The stored key of each engine's database, read once.
_stored: weakref.WeakKeyDictionary[AsyncEngine, bytes] = weakref.WeakKeyDictionary()


async def stored_key_of(sessionmaker: async_sessionmaker[AsyncSession]) -> bytes:
    """The installation's unsubscribe key from its database, made and stored the first time
    it is asked for (the first of two processes to store it wins; the other reads it)."""
    engine = sessionmaker.kw.get("bind")
    if isinstance(engine, AsyncEngine) and engine in _stored:
        return _stored[engine]
    value = await _read(sessionmaker)
    if value is None:
        # IntegrityError: another process stored one first, and that one is the key.
        with contextlib.suppress(IntegrityError):
            async with sessionmaker() as session, session.begin():
                session.add(InstallationKey(name=KEY_NAME, value=secrets.token_hex(32)))
        value = await _read(sessionmaker)
        if value is None:  # pragma: no cover - stored or raced above
            raise RuntimeError("the unsubscribe key could not be stored")
    key = bytes.fromhex(value)
    if isinstance(engine, AsyncEngine):
        _stored[engine] = key
    return key


async def _read(sessionmaker: async_sessionmaker[AsyncSession]) -> str | None:
    async with sessionmaker() as session:
        value: str | None = await session.scalar(
            select(InstallationKey.value).where(InstallationKey.name == KEY_NAME)
        )
        return value


async def unsubscribe_of(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> Unsubscribe:
    """The installation's ``Unsubscribe``: the database is read only without a secret key."""
    if settings.secret_key is not None and settings.secret_key.get_secret_value():
        return Unsubscribe.of(settings, b"")
    return Unsubscribe.of(settings, await stored_key_of(sessionmaker))
