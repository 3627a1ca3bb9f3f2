"""Template rules: each text is valid sandboxed Jinja2; an email has a subject and a body."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from rassylka.clients.models import Client
from rassylka.config import get_settings
from rassylka.errors import Conflict, FieldError, NotFound, ValidationFailed
from rassylka.mailings import repository as mailing_repository
from rassylka.projects import service as project_service
from rassylka.projects.models import Project
from rassylka.templates import repository
from rassylka.templates.budget import RenderLimits
from rassylka.templates.models import Template
from rassylka.templates.rendering import (
    CLIENT_FIELDS as TEMPLATE_CLIENT_FIELDS,
)
from rassylka.templates.rendering import (
    CompiledTemplate,
    TemplateSources,
    compiled,
    context_for,
)
from rassylka.templates.schemas import TemplateCreate, TemplateUpdate
from rassylka.unsubscribe.tokens import PATH, SAMPLE_TOKEN

CONTENT_FIELDS = ("email_subject", "email_html", "email_text", "sms_text")

# Also the answer to a key of another project (access.scope): the same, to reveal nothing.
NOT_FOUND = "Шаблон {} не найден"


def content_problems(template: Template) -> list[FieldError]:
    has_body = bool(template.email_html or template.email_text)
    if template.email_subject and not has_body:
        return [
            FieldError(
                field="email_html",
                message="У письма есть тема, но нет текста: укажите email_html или email_text",
            )
        ]
    if has_body and not template.email_subject:
        return [FieldError(field="email_subject", message="У письма есть текст, но нет темы")]
    if not template.has_email and not template.has_sms:
        message = "Шаблону нужен текст хотя бы для одного канала: письмо или SMS"
        return [
            FieldError(field="email_subject", message=message),
            FieldError(field="sms_text", message=message),
        ]
    return []


class _AnyAttributes(dict[str, Any]):
    """A sample client's attributes: every name a template asks for is there (empty)."""

    def __missing__(self, key: str) -> str:
        return ""


SAMPLE_MAILING = {"id": 1, "name": "Рассылка", "event": "2026-01-01", "timezone": "Europe/Moscow"}


def sample_client() -> dict[str, Any]:
    """A client to try a template on, whose attributes have every name asked for (empty)."""
    return {
        "id": 1,
        "guid": "sample",
        "first_name": "Иван",
        "last_name": "Иванов",
        "middle_name": "Иванович",
        "email": "ivan@example.com",
        "phone": "+79161234567",
        "timezone": "Europe/Moscow",
        "tags": ["sample"],
        "attributes": _AnyAttributes(),
    }


def sample_unsubscribe_url() -> str:
    """A preview's ``{{ unsubscribe_url }}``: a link as long as a real one, to no one's page."""
    return f"{get_settings().public_base_url}{PATH}{SAMPLE_TOKEN}"


def preview_context(*, client: Client | None, project: Project) -> dict[str, Any]:
    """What the template sees when sent to ``client`` (the sample client if None) of
    ``project`` by a mailing (a sample one: a preview has none)."""
    if client is None:
        fields = sample_client()
    else:
        fields = {name: getattr(client, name) for name in TEMPLATE_CLIENT_FIELDS}
        fields["tags"] = fields["tags"] or []
        fields["attributes"] = fields["attributes"] or {}
    shown = {"id": project.id, "code": project.code, "name": project.name}
    return context_for(
        client=fields,
        project=shown,
        mailing=dict(SAMPLE_MAILING),
        unsubscribe_url=sample_unsubscribe_url(),
    )


@dataclass(frozen=True)
class Preview:
    """A template's texts rendered for one client, each part that failed with its reason."""

    rendered: dict[str, str]
    problems: dict[str, str]


async def preview(sources: TemplateSources, *, context: dict[str, Any]) -> Preview:
    """``sources`` rendered for ``context`` as dispatch renders them: the same sandbox, the
    same budget (in a thread, as ``budget_problems``). Compiled afresh, not through
    ``compiled``'s cache: a preview as one types would push the templates being sent out."""
    settings = get_settings()
    limits = RenderLimits(
        max_bytes=settings.max_render_bytes, max_seconds=settings.max_render_seconds
    )

    def render() -> Preview:
        rendered, failed = CompiledTemplate(sources).render_parts(context, limits)
        return Preview(rendered, {name: error.problem for name, error in failed.items()})

    return await asyncio.to_thread(render)


def _sample_context() -> dict[str, Any]:
    project = {"id": 1, "code": "sample", "name": "Проект"}
    return context_for(
        client=sample_client(),
        project=project,
        mailing=dict(SAMPLE_MAILING),
        unsubscribe_url=sample_unsubscribe_url(),
    )


async def budget_problems(template: Template) -> list[FieldError]:
    """A trial render for a sample client: a template that runs too long, renders too much or
    reaches for what the sandbox forbids is refused now, not at its first message. (Errors
    that depend on the data, an undefined attribute, are the recipient's: they fail that
    message at dispatch.) In a thread: a runaway template takes its budget there, while the
    event loop goes on answering other requests."""
    settings = get_settings()
    limits = RenderLimits(
        max_bytes=settings.max_render_bytes, max_seconds=settings.max_render_seconds
    )
    sources = TemplateSources(**{name: getattr(template, name) for name in CONTENT_FIELDS})
    problems = await asyncio.to_thread(compiled(sources).trial_problems, _sample_context(), limits)
    return [FieldError(field=name, message=problem) for name, problem in problems.items()]


async def create(session: AsyncSession, *, data: TemplateCreate) -> Template:
    if data.project_id is not None:
        reference: str | int = data.project_id
        field = "project_id"
    else:
        assert data.project is not None  # the schema requires one of the two
        reference, field = data.project, "project"
    project = await project_service.resolve(session, reference=reference, field=field)
    template = Template(project_id=project.id, **data.model_dump(include={"name", *CONTENT_FIELDS}))
    if problems := content_problems(template) or await budget_problems(template):
        raise ValidationFailed(problems)
    return await repository.add(session, template)


async def update(session: AsyncSession, *, template_id: int, data: TemplateUpdate) -> Template:
    data.check_path_id(template_id)
    template = await get(session, template_id=template_id)
    changes = data.model_dump(exclude_unset=True, exclude={"primary_key"})
    if "name" in changes and changes["name"] is None:
        raise ValidationFailed.on("name", "Поле нельзя очистить")
    for name, value in changes.items():
        setattr(template, name, value)
    if problems := content_problems(template) or await budget_problems(template):
        raise ValidationFailed(problems)
    await session.flush()
    return template


async def get(session: AsyncSession, *, template_id: int) -> Template:
    template = await repository.get(session, template_id)
    if template is None:
        raise NotFound.on("id", NOT_FOUND.format(template_id))
    return template


async def page(
    session: AsyncSession, *, project: str | int | None, limit: int, offset: int
) -> tuple[Sequence[Template], int]:
    project_id = None
    if project is not None:
        project_id = (await project_service.resolve(session, reference=project, field="project")).id
    return await repository.page(session, project_id=project_id, limit=limit, offset=offset)


async def delete(session: AsyncSession, *, template_id: int) -> None:
    template = await get(session, template_id=template_id)
    if used_by := await mailing_repository.ids_using_template(session, template_id=template_id):
        listed = ", ".join(str(mailing_id) for mailing_id in used_by[:10])
        raise Conflict.on("id", f"Шаблон используется рассылками: {listed}")
    await repository.delete(session, template)
