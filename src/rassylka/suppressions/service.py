"""Suppression rules: an address is suppressed once per project, in its normalised form."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from rassylka.db import utcnow
from rassylka.errors import NotFound, ValidationFailed
from rassylka.messages import queue
from rassylka.messages.repository import SUPPRESSED
from rassylka.projects import service as project_service
from rassylka.suppressions import repository
from rassylka.suppressions.models import Suppression
from rassylka.suppressions.schemas import SuppressionCreate, normalize_address

# Also the answer to a key of another project (access.scope): the same, to reveal nothing.
NOT_FOUND = "Подавление {} не найдено"


async def create(session: AsyncSession, *, data: SuppressionCreate) -> Suppression:
    """Suppress an address; an address already suppressed keeps its row (reason and date),
    which is returned, so a CRM may repeat the request safely."""
    project = await project_service.resolve(session, reference=data.project, field="project")
    return await suppress(session, project_id=project.id, address=data.address, reason=data.reason)


async def suppress(
    session: AsyncSession, *, project_id: int, address: str, reason: str | None
) -> Suppression:
    """Suppress a normalised ``address`` in a project (or keep its row) and skip what is
    queued for it. Writes message events: the caller writes nothing after it."""
    suppression = await repository.add_if_absent(
        session, project_id=project_id, address=address, reason=reason
    )
    # What is queued for the address stays unsent: "never sent" holds for runs made earlier.
    reason = SUPPRESSED + (f": {suppression.reason}" if suppression.reason else "")
    await queue.skip_queued(
        session, project_id=project_id, address=suppression.address, reason=reason, now=utcnow()
    )
    return suppression


async def get(session: AsyncSession, *, suppression_id: int) -> Suppression:
    suppression = await repository.get(session, suppression_id)
    if suppression is None:
        raise NotFound.on("id", NOT_FOUND.format(suppression_id))
    return suppression


async def page(
    session: AsyncSession,
    *,
    project: str | int | None,
    address: str | None,
    limit: int,
    offset: int,
) -> tuple[Sequence[Suppression], int]:
    project_id = None
    if project is not None:
        project_id = (await project_service.resolve(session, reference=project, field="project")).id
    if address is not None:
        try:
            address = normalize_address(address.strip())
        except ValueError as error:
            raise ValidationFailed.on("address", str(error)) from None
    return await repository.page(
        session, project_id=project_id, address=address, limit=limit, offset=offset
    )


async def delete(session: AsyncSession, *, suppression_id: int) -> None:
    await repository.delete(session, await get(session, suppression_id=suppression_id))
