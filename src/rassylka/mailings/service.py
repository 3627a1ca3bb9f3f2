"""Mailing rules: its template belongs to its project and has a text for every channel."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from rassylka.config import get_settings
from rassylka.errors import FieldError, NotFound, ValidationFailed
from rassylka.mailings import repository
from rassylka.mailings.models import Channel, Mailing
from rassylka.mailings.schemas import MailingCreate, MailingUpdate, event_moment
from rassylka.projects import repository as project_repository
from rassylka.projects import service as project_service
from rassylka.templates import repository as template_repository
from rassylka.templates.models import Template


async def create(session: AsyncSession, *, data: MailingCreate) -> Mailing:
    project = await project_repository.get(session, data.project_id)
    if project is None:
        raise ValidationFailed.on("project_id", f"Проект {data.project_id} не найден")
    template = await _template_for(session, project_id=project.id, template_id=data.template_id)
    if problems := channel_problems(template, data.channels):
        raise ValidationFailed(problems)
    timezone = data.timezone or get_settings().default_timezone
    mailing = Mailing(
        project_id=project.id,
        template_id=template.id,
        name=data.name,
        status=data.status,
        channels=data.channels,
        event_at=event_moment(data.event, timezone),
        timezone=timezone,
    )
    return await repository.add(session, mailing)


async def update(session: AsyncSession, *, mailing_id: int, data: MailingUpdate) -> Mailing:
    data.check_path_id(mailing_id)
    mailing = await get(session, mailing_id=mailing_id)
    changes = data.model_dump(exclude_unset=True, exclude={"primary_key"})
    if cleared := [name for name, value in changes.items() if value is None]:
        raise ValidationFailed(
            [FieldError(field=name, message="Поле нельзя очистить") for name in cleared]
        )
    template_id = changes.get("template_id", mailing.template_id)
    template = await _template_for(session, project_id=mailing.project_id, template_id=template_id)
    channels = changes.get("channels", mailing.channels)
    if problems := channel_problems(template, channels):
        raise ValidationFailed(problems)
    mailing.timezone = changes.pop("timezone", mailing.timezone)
    if "event" in changes:
        # An event given without an offset is read in the mailing's (possibly new) zone.
        mailing.event_at = event_moment(changes.pop("event"), mailing.timezone)
    if "status" in changes:
        mailing.status_reason = None  # a person chose the status now
    for name, value in changes.items():
        setattr(mailing, name, value)
    await session.flush()
    return mailing


def channel_problems(template: Template, channels: Sequence[int]) -> list[FieldError]:
    problems = []
    if Channel.EMAIL in channels and not template.has_email:
        problems.append(
            FieldError(
                field="channels",
                message=f"Канал email: в шаблоне {template.id} нет письма (темы и текста)",
            )
        )
    if Channel.SMS in channels and not template.has_sms:
        problems.append(
            FieldError(
                field="channels", message=f"Канал sms: в шаблоне {template.id} нет текста SMS"
            )
        )
    return problems


async def get(session: AsyncSession, *, mailing_id: int) -> Mailing:
    mailing = await repository.get(session, mailing_id)
    if mailing is None:
        raise NotFound.on("id", f"Рассылка {mailing_id} не найдена")
    return mailing


async def page(
    session: AsyncSession, *, project: str | None, status: int | None, limit: int, offset: int
) -> tuple[Sequence[Mailing], int]:
    project_id = None
    if project is not None:
        project_id = (await project_service.resolve(session, reference=project, field="project")).id
    return await repository.page(
        session, project_id=project_id, status=status, limit=limit, offset=offset
    )


async def delete(session: AsyncSession, *, mailing_id: int) -> None:
    await repository.delete(session, await get(session, mailing_id=mailing_id))


async def _template_for(session: AsyncSession, *, project_id: int, template_id: int) -> Template:
    template = await template_repository.get(session, template_id)
    if template is None:
        raise ValidationFailed.on("template_id", f"Шаблон {template_id} не найден")
    if template.project_id != project_id:
        raise ValidationFailed.on(
            "template_id",
            f"Шаблон {template_id} принадлежит другому проекту ({template.project_id})",
        )
    return template
