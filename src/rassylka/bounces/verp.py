"""VERP: an envelope sender per message, naming the message and signed so no one can forge it.

    bounce+<message id>-<first 10 hex digits of HMAC-SHA256(secret, "verp:<message id>")>@<domain>

The token (between ``+`` and ``@``) is also the DSN's ENVID. Imports neither the database nor
FastAPI: the SMTP transport builds addresses with it, the listener and the webhook check them.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rassylka.config import Settings

PREFIX = "bounce+"
TAG_LENGTH = 10
MAX_ID = 2**63 - 1
# Case-insensitive: some MTAs change the case of local parts they hand back.
_TOKEN = re.compile(rf"(?i)^([1-9][0-9]{{0,18}})-([0-9a-f]{{{TAG_LENGTH}}})$")


@dataclass(frozen=True)
class Verp:
    domain: str
    """The bounce domain, lower-case, in its ASCII (IDNA) form."""
    secret: bytes

    @classmethod
    def from_settings(cls, settings: Settings) -> Verp | None:
        """None unless ``RASSYLKA_BOUNCE_DOMAIN`` is set (Settings then insists on a key)."""
        if not settings.bounce_domain or settings.secret_key is None:
            return None
        return cls(settings.bounce_domain, settings.secret_key.get_secret_value().encode())

    def token(self, message_id: int) -> str:
        return f"{message_id}-{self._tag(message_id)}"

    def address(self, message_id: int) -> str:
        return f"{PREFIX}{self.token(message_id)}@{self.domain}"

    def message_id(self, token: str) -> int | None:
        """The message a token names, if it is well formed and its signature ours."""
        match = _TOKEN.match(token.strip())
        if match is None:
            return None
        message_id = int(match[1])
        if message_id > MAX_ID or not hmac.compare_digest(match[2].lower(), self._tag(message_id)):
            return None
        return message_id

    def message_id_of(self, address: str, *, any_domain: bool = False) -> int | None:
        """The message a VERP address names; with ``any_domain`` its domain is not checked
        (a provider may report the address as it saw it; the signature is what counts)."""
        local, at, domain = address.strip().strip("<>").rpartition("@")
        if not at or not local.lower().startswith(PREFIX):
            return None
        if not any_domain and domain.lower().rstrip(".") != self.domain:
            return None
        return self.message_id(local[len(PREFIX) :])

    def message_id_of_any(self, value: str) -> int | None:
        """A token or a whole VERP address (of any domain)."""
        if "@" in value:
            return self.message_id_of(value, any_domain=True)
        return self.message_id(value)

    def _tag(self, message_id: int) -> str:
        digest = hmac.new(self.secret, f"verp:{message_id}".encode(), hashlib.sha256)
        return digest.hexdigest()[:TAG_LENGTH]
