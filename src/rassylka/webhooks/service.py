"""Webhook rules: a webhook belongs to a project, hears only what happens after its creation,
and its secret is shown once (at creation, or when the server rotates it)."""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from rassylka.errors import NotFound
from rassylka.events import repository as events_repository
from rassylka.projects import service as project_service
from rassylka.webhooks import repository
from rassylka.webhooks.models import Webhook, WebhookDelivery
from rassylka.webhooks.schemas import WebhookCreate, WebhookUpdate

# Also the answer to a key of another project (access.scope): the same, to reveal nothing.
NOT_FOUND = "Вебхук {} не найден"


def new_secret() -> str:
    return secrets.token_urlsafe(32)


async def create(session: AsyncSession, *, data: WebhookCreate) -> Webhook:
    field = "project_id" if data.project_id is not None else "project"
    project = await project_service.resolve(session, reference=data.project_reference, field=field)
    return await repository.add(
        session,
        Webhook(
            project_id=project.id,
            url=data.url,
            events=data.events,
            secret=data.secret or new_secret(),
            description=data.description,
            active=data.active,
            # From now on: a CRM that adds a webhook wants what happens next, not the history
            # (which GET /mailing/{id}/messages gives).
            last_event_id=await events_repository.last_id(session),
        ),
    )


async def update(
    session: AsyncSession, *, webhook_id: int, data: WebhookUpdate
) -> tuple[Webhook, str | None]:
    """The webhook changed, and its new secret if the server made one."""
    data.check_path_id(webhook_id)
    webhook = await get(session, webhook_id=webhook_id)
    given = data.model_fields_set
    if data.url is not None:
        webhook.url = data.url
    if "events" in given:  # null or ["*"]: every event
        webhook.events = data.events
    if data.active is not None:
        webhook.active = data.active
    if "description" in given:
        webhook.description = data.description
    generated = None
    if data.rotate_secret:
        generated = webhook.secret = new_secret()
    elif data.secret is not None:
        webhook.secret = data.secret
    await session.flush()
    return webhook, generated


async def get(session: AsyncSession, *, webhook_id: int) -> Webhook:
    webhook = await repository.get(session, webhook_id)
    if webhook is None:
        raise NotFound.on("id", NOT_FOUND.format(webhook_id))
    return webhook


async def page(
    session: AsyncSession,
    *,
    project_id: int | None,
    project: str | int | None,
    limit: int,
    offset: int,
) -> tuple[Sequence[Webhook], int]:
    if project is not None:
        project_id = (await project_service.resolve(session, reference=project, field="project")).id
    return await repository.page(session, project_id=project_id, limit=limit, offset=offset)


async def delete(session: AsyncSession, *, webhook_id: int) -> None:
    await repository.delete(session, await get(session, webhook_id=webhook_id))


async def deliveries(
    session: AsyncSession, *, webhook_id: int, status: str | None, limit: int, offset: int
) -> tuple[Sequence[WebhookDelivery], int]:
    await get(session, webhook_id=webhook_id)
    return await repository.deliveries(
        session, webhook_id=webhook_id, status=status, limit=limit, offset=offset
    )
