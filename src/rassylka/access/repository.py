"""Every query on the api_key table."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from rassylka.access.models import ApiKey
from rassylka.projects.models import Project


async def add(session: AsyncSession, key: ApiKey) -> ApiKey:
    session.add(key)
    await session.flush()
    return key


async def get(session: AsyncSession, key_id: int) -> ApiKey | None:
    return await session.get(ApiKey, key_id)


async def listed(session: AsyncSession) -> list[tuple[ApiKey, str | None]]:
    """Every key with its project's code (None for a global key), oldest first."""
    result = await session.execute(
        select(ApiKey, Project.code)
        .outerjoin(Project, Project.id == ApiKey.project_id)
        .order_by(ApiKey.id)
    )
    return [(key, code) for key, code in result.all()]


async def stored(
    connection: AsyncConnection,
) -> list[tuple[str, int, int | None, str | None, bool]]:
    """(hash, id, project id, project code, revoked) of every key: one statement, run by each
    API process every few seconds (``keyring.KeyRing``)."""
    result = await connection.execute(
        select(
            ApiKey.key_hash,
            ApiKey.id,
            ApiKey.project_id,
            Project.code,
            ApiKey.revoked_at.is_not(None),
        ).outerjoin(Project, Project.id == ApiKey.project_id)
    )
    return [
        (key_hash, key_id, project_id, code, bool(revoked))
        for key_hash, key_id, project_id, code, revoked in result
    ]


async def revoke(session: AsyncSession, key: ApiKey, *, at: datetime) -> ApiKey:
    key.revoked_at = at
    await session.flush()
    return key
