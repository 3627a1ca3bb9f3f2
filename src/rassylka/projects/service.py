"""Project rules: codes are unique; a project is referenced by its code or its id."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from rassylka.channels import dkim
from rassylka.errors import Conflict, NotFound, ValidationFailed
from rassylka.mailings.models import Mailing
from rassylka.messages import repository as message_repository
from rassylka.projects import repository
from rassylka.projects.models import Project
from rassylka.projects.schemas import ProjectCreate, ProjectUpdate
from rassylka.schemas import MAX_ID

# Also the answer to a key of another project (access.scope): the same, to reveal nothing.
NOT_FOUND = "Проект {} не найден"


async def create(session: AsyncSession, *, data: ProjectCreate) -> Project:
    await _ensure_code_free(session, code=data.code)
    project = Project(name=data.name, code=data.code)
    _set_senders(project, data, data.model_fields_set)
    if data.dkim_key_path is not None:
        _check_dkim_key(data.dkim_key_path)
        project.dkim_domain = data.dkim_domain
        project.dkim_selector = data.dkim_selector
        project.dkim_key_path = data.dkim_key_path
    return await repository.add(session, project)


async def update(session: AsyncSession, *, project_id: int, data: ProjectUpdate) -> Project:
    data.check_path_id(project_id)
    project = await get(session, project_id=project_id)
    if data.code is not None and data.code != project.code:
        await _ensure_code_free(session, code=data.code)
        project.code = data.code
    if data.name is not None:
        project.name = data.name
    if "dkim_key_path" in data.model_fields_set:
        if data.dkim_key_path is not None:
            _check_dkim_key(data.dkim_key_path)
        project.dkim_domain = data.dkim_domain
        project.dkim_selector = data.dkim_selector
        project.dkim_key_path = data.dkim_key_path
    _set_senders(project, data, data.model_fields_set)
    await session.flush()
    return project


def _set_senders(project: Project, data: ProjectCreate | ProjectUpdate, given: set[str]) -> None:
    """The senders and caps named in the request (null clears one)."""
    for name in ("sms_sender", "email_from", "email_reply_to"):
        if name in given:
            setattr(project, name, getattr(data, name))
    if "frequency_cap" in given:
        cap = data.frequency_cap
        named = cap.model_fields_set if cap is not None else {"email", "sms"}
        if "email" in named:
            project.email_frequency_cap = cap.email if cap is not None else None
        if "sms" in named:
            project.sms_frequency_cap = cap.sms if cap is not None else None


async def get(session: AsyncSession, *, project_id: int) -> Project:
    project = await repository.get(session, project_id)
    if project is None:
        raise NotFound.on("id", NOT_FOUND.format(project_id))
    return project


async def resolve(session: AsyncSession, *, reference: str | int, field: str) -> Project:
    """The project a request names by code (the manual's way) or by numeric id.

    An unknown reference is the request's fault, so it is a 400 naming ``field``.
    """
    project = None
    code, number = reference_keys(reference)
    if code is not None:
        project = await repository.get_by_code(session, code)
    if project is None and number is not None:
        project = await repository.get(session, number)
    if project is None:
        raise ValidationFailed.on(field, f"Проект «{reference}» не найден")
    return project


def reference_keys(reference: str | int) -> tuple[str | None, int | None]:
    """The code and the id a reference may mean (a code first): "42" is either."""
    if isinstance(reference, int):
        return None, reference
    if reference.isascii() and reference.isdigit() and int(reference) <= MAX_ID:
        return reference, int(reference)
    return reference, None


async def page(
    session: AsyncSession, *, project_id: int | None = None, limit: int, offset: int
) -> tuple[Sequence[Project], int]:
    """A page of the projects (only the one of ``project_id``, if given)."""
    return await repository.page(session, project_id=project_id, limit=limit, offset=offset)


async def delete(session: AsyncSession, *, project_id: int) -> None:
    """The project and all it holds (the database's cascades), its mailings' messages and
    events too."""
    project = await get(session, project_id=project_id)
    await message_repository.forget_mailings(
        session, mailing_ids=select(Mailing.id).where(Mailing.project_id == project.id)
    )
    await repository.delete(session, project)


def _check_dkim_key(path: str) -> None:
    """The key is read where the API runs, which should be the sending host (docs): a path
    the worker cannot read then fails its messages with the reason."""
    try:
        dkim.read_key(path)
    except dkim.DkimKeyError as error:
        raise ValidationFailed.on(
            "dkim_key_path",
            f"Не удалось прочитать закрытый ключ RSA (PEM) по пути «{path}»",
        ) from error


async def _ensure_code_free(session: AsyncSession, *, code: str) -> None:
    if await repository.get_by_code(session, code) is not None:
        raise Conflict.on("code", f"Проект с кодом «{code}» уже существует")
