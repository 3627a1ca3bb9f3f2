"""API keys: made (the secret shown once, only its hash kept), listed and revoked."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from rassylka.access import repository
from rassylka.access.models import ApiKey
from rassylka.db import utcnow
from rassylka.errors import NotFound
from rassylka.projects import repository as project_repository

SECRET_PREFIX = "rsk_"
# Characters of the secret kept in clear: enough to tell keys apart in a list, far too few to
# guess the rest (the secret's random part is 43 characters, 256 bits).
SHOWN_CHARACTERS = 10


def hash_secret(secret: str) -> str:
    """SHA-256 (hex) of a key's secret. The secret is 256 random bits, so a fast hash is enough:
    there is nothing to brute-force that a slow hash would protect."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class KeyListed:
    id: int
    prefix: str
    project: str | None
    name: str | None
    created_at: datetime
    revoked_at: datetime | None


async def create(
    session: AsyncSession, *, project_code: str | None, name: str | None
) -> tuple[ApiKey, str]:
    """A new key and its secret (to be shown once: only its hash is stored)."""
    project_id = None
    if project_code is not None:
        project = await project_repository.get_by_code(session, project_code)
        if project is None:
            raise NotFound.on("project", f"Проект с кодом «{project_code}» не найден")
        project_id = project.id
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        project_id=project_id,
        name=name,
        prefix=secret[:SHOWN_CHARACTERS],
        key_hash=hash_secret(secret),
    )
    return await repository.add(session, key), secret


async def listed(session: AsyncSession) -> Sequence[KeyListed]:
    return [
        KeyListed(
            id=key.id,
            prefix=key.prefix,
            project=code,
            name=key.name,
            created_at=key.created_at,
            revoked_at=key.revoked_at,
        )
        for key, code in await repository.listed(session)
    ]


async def revoke(session: AsyncSession, *, key_id: int) -> ApiKey:
    """Revoke a key (revoking it again changes nothing); it stops working in every API process
    within ``keyring.TTL`` seconds."""
    key = await repository.get(session, key_id)
    if key is None:
        raise NotFound.on("id", f"Ключ {key_id} не найден")
    if key.revoked_at is None:
        await repository.revoke(session, key, at=utcnow())
    return key
