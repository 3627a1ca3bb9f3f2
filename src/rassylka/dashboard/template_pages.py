"""The dashboard's pages of templates: a project's list, a new template, the editor, and the
live preview the editor's script asks for as one types."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from rassylka.access import scope
from rassylka.channels.sms_text import (
    MAX_PARTS,
    SmsCoding,
    choose_coding,
    count_parts,
    count_units,
)
from rassylka.clients import service as client_service
from rassylka.clients.models import Client
from rassylka.dashboard import forms, session
from rassylka.dashboard.client_pages import form_id
from rassylka.dashboard.project_pages import PAGE_SIZE, PROJECT_NOT_FOUND, redirect, visible_project
from rassylka.dashboard.rendering import PageRoute, page
from rassylka.db import SessionDep
from rassylka.errors import AppError, FieldError, NotFound, details_from_pydantic, error_response
from rassylka.projects.models import Project
from rassylka.schemas import MAX_ID, ok
from rassylka.templates import service as template_service
from rassylka.templates.models import Template
from rassylka.templates.rendering import TemplateSources, plain_text
from rassylka.templates.schemas import TemplateContent, TemplateCreate, TemplateUpdate

router = APIRouter(prefix=session.PREFIX, route_class=PageRoute, include_in_schema=False)
ProjectId = Annotated[int, Path(ge=1, le=MAX_ID)]
TemplateId = Annotated[int, Path(ge=1, le=MAX_ID)]
CONTENT_FIELDS = template_service.CONTENT_FIELDS
PREVIEW_CLIENTS = 50
"""How many of the project's clients the editor offers to preview for (any other: its guid)."""
CODING_NAMES = {SmsCoding.GSM7: "GSM-7", SmsCoding.UCS2: "UCS-2"}


def plural(count: int, one: str, few: str, many: str) -> str:
    """The Russian form of a noun for ``count``: 1 символ, 2 символа, 5 символов."""
    if count % 10 == 1 and count % 100 != 11:
        return one
    if 2 <= count % 10 <= 4 and not 12 <= count % 100 <= 14:
        return few
    return many


def sms_counter(text: str) -> dict[str, Any]:
    """What the SMS costs as the SMSC gets it (``channels.sms_text``, as dispatch encodes it):
    its length in characters, the coding, the units the coding counts (septets, an extension
    character two; UTF-16 units) and the parts; ``summary`` says it in words."""
    coding = choose_coding(text)
    try:
        segments, units = count_parts(text), count_units(text)
    except ValueError:  # a lone surrogate: no coding carries it
        segments = units = 0
    length = len(text)
    summary = (
        f"{length} {plural(length, 'символ', 'символа', 'символов')} · {CODING_NAMES[coding]}"
        f" · {segments} {plural(segments, 'сегмент', 'сегмента', 'сегментов')}"
    )
    return {
        "length": length,
        "encoding": CODING_NAMES[coding],
        "units": units,
        "segments": segments,
        "too_long": segments > MAX_PARTS,
        "summary": summary,
    }


async def visible_template(request: Request, db: SessionDep, template_id: int) -> Template:
    template = await template_service.get(db, template_id=template_id)
    scope_id = scope.project_scope(request)
    if scope_id is not None and scope_id != template.project_id:
        raise NotFound.on("id", template_service.NOT_FOUND.format(template_id))
    return template


def _texts(values: dict[str, Any]) -> dict[str, Any]:
    """The editor's texts, an empty one cleared (None): the editor shows every text."""
    return {name: values.get(name) for name in CONTENT_FIELDS}


async def _editor(
    request: Request,
    db: SessionDep,
    *,
    project: Project,
    template: Template | None,
    values: dict[str, Any],
    errors: list[FieldError],
    status: int = 200,
    saved: bool = False,
) -> Response:
    clients, total = await client_service.page(
        db, project=project.id, guid=None, limit=PREVIEW_CLIENTS, offset=0
    )
    return page(
        request,
        "template_form.html",
        status=status,
        project=project,
        template=template,
        values=values,
        errors=forms.by_field(errors),
        clients=clients,
        more_clients=total > len(clients),
        saved=saved,
    )


@router.get("/project/{id:int}/templates")
async def templates_page(
    request: Request,
    db: SessionDep,
    id: ProjectId,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> Response:
    project = await visible_project(request, db, id)
    templates, total = await template_service.page(
        db, project=project.id, limit=PAGE_SIZE, offset=offset
    )
    return page(
        request,
        "templates.html",
        project=project,
        templates=templates,
        total=total,
        offset=offset,
        limit=PAGE_SIZE,
    )


@router.get("/project/{id:int}/templates/new")
async def new_template_page(request: Request, db: SessionDep, id: ProjectId) -> Response:
    project = await visible_project(request, db, id)
    return await _editor(request, db, project=project, template=None, values={}, errors=[])


@router.post("/project/{id:int}/templates/new")
async def create_template(request: Request, db: SessionDep, id: ProjectId) -> Response:
    values = await forms.read(request)
    project = await visible_project(request, db, id)
    fields = {"project_id": project.id, "name": values.get("name"), **_texts(values)}
    data, errors = forms.validate(TemplateCreate, {k: v for k, v in fields.items() if v})
    if data is not None:
        try:
            async with db.begin_nested():
                template = await template_service.create(db, data=data)
        except AppError as error:
            errors = forms.refused(error)
        else:
            return redirect(f"{session.PREFIX}/template/{template.id}?saved=1")
    return await _editor(
        request, db, project=project, template=None, values=values, errors=errors, status=400
    )


@router.get("/template/{id:int}")
async def template_page(
    request: Request, db: SessionDep, id: TemplateId, saved: bool = False
) -> Response:
    template = await visible_template(request, db, id)
    project = await visible_project(request, db, template.project_id)
    values = {name: getattr(template, name) or "" for name in ("name", *CONTENT_FIELDS)}
    return await _editor(
        request, db, project=project, template=template, values=values, errors=[], saved=saved
    )


@router.post("/template/{id:int}")
async def update_template(request: Request, db: SessionDep, id: TemplateId) -> Response:
    values = await forms.read(request)
    template = await visible_template(request, db, id)
    project = await visible_project(request, db, template.project_id)
    data, errors = forms.validate(TemplateUpdate, {"name": values.get("name"), **_texts(values)})
    if data is not None:
        try:
            async with db.begin_nested():  # a refused change leaves the template as it was
                await template_service.update(db, template_id=template.id, data=data)
        except AppError as error:
            errors = forms.refused(error)
            await db.refresh(template)  # as stored: the savepoint's rollback expired it
        else:
            return redirect(f"{session.PREFIX}/template/{template.id}?saved=1")
    return await _editor(
        request, db, project=project, template=template, values=values, errors=errors, status=400
    )


@router.post("/template/preview")
async def preview(request: Request, db: SessionDep) -> Response:
    """The editor's texts rendered for a client of the project, as JSON in the API's
    envelopes (errors too: the page's script reads them, nobody opens this in the browser)."""
    try:
        return JSONResponse(ok(await _preview(request, db), status=200))
    except AppError as error:
        return error_response(error.status_code, error.details, message=error.message)


async def _preview(request: Request, db: SessionDep) -> dict[str, Any]:
    values = await forms.read(request)
    project_id = form_id(values.get("project_id"))
    if project_id is None:
        raise NotFound.on("project_id", PROJECT_NOT_FOUND.format(values.get("project_id")))
    project = await visible_project(request, db, project_id)
    client = await _preview_client(db, project, values)
    # Each text checked on its own (syntax, size), so one with a typo does not hide the rest.
    sources: dict[str, str] = {}
    problems: dict[str, str] = {}
    for name in CONTENT_FIELDS:
        text = values.get(name)
        if not isinstance(text, str) or not text:
            continue
        try:
            TemplateContent.model_validate({name: text})
        except ValidationError as error:
            problems[name] = details_from_pydantic(error.errors())[0].message
        else:
            sources[name] = text
    context = template_service.preview_context(client=client, project=project)
    rendered = await template_service.preview(TemplateSources(**sources), context=context)
    problems.update(rendered.problems)
    sms = rendered.rendered.get("sms_text")
    html = rendered.rendered.get("email_html")
    text = rendered.rendered.get("email_text")
    # Without a text of its own the email's plain part is made from its HTML (as dispatch does).
    text_from_html = text is None and html is not None and "email_text" not in problems
    return {
        "client": None
        if client is None
        else {"id": client.id, "guid": client.guid, "name": _name(client)},
        "subject": rendered.rendered.get("email_subject"),
        "html": html,
        "text": plain_text(html or "") if text_from_html else text,
        "text_from_html": text_from_html,
        "sms": sms,
        "sms_counter": None if sms is None else sms_counter(sms),
        "problems": problems,
    }


def _name(client: Client) -> str:
    return " ".join(part for part in (client.last_name, client.first_name) if part)


async def _preview_client(
    db: SessionDep, project: Project, values: dict[str, Any]
) -> Client | None:
    """The client named by its guid (typed) or its id (chosen), of this project; None: the
    sample client."""
    guid = values.get("client_guid")
    if isinstance(guid, str) and guid.strip():
        if "\x00" in guid:  # PostgreSQL refuses NUL in text: no guid holds it
            raise NotFound.on("client_guid", "Клиент с таким guid не найден")
        found, _ = await client_service.page(
            db, project=project.id, guid=guid.strip(), limit=1, offset=0
        )
        if not found:
            raise NotFound.on("client_guid", f"Клиент с guid «{guid.strip()}» не найден")
        return found[0]
    if values.get("client_id") in (None, "", "sample"):
        return None
    client_id = form_id(values.get("client_id"))
    client = None if client_id is None else await client_service.get(db, client_id=client_id)
    if client is None or client.project_id != project.id:
        raise NotFound.on("client_id", client_service.NOT_FOUND.format(values.get("client_id")))
    return client
