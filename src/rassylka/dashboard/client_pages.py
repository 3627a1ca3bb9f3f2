"""The dashboard's pages of clients: a project's list (search, pages), a new client, a
client's card, and the import of a CSV file."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import UploadFile

from rassylka.access import scope
from rassylka.clients import router as client_router
from rassylka.clients import service as client_service
from rassylka.clients.importing import CSV_COLUMNS
from rassylka.clients.models import Client
from rassylka.clients.schemas import ClientCreate, ClientUpdate, ImportResult
from rassylka.dashboard import forms, session
from rassylka.dashboard.project_pages import PAGE_SIZE, PROJECT_NOT_FOUND, redirect, visible_project
from rassylka.dashboard.rendering import PageRoute, page
from rassylka.db import SessionDep
from rassylka.errors import AppError, FieldError, NotFound, ValidationFailed
from rassylka.projects import service as project_service
from rassylka.projects.models import Project
from rassylka.schemas import MAX_ID

router = APIRouter(prefix=session.PREFIX, route_class=PageRoute, include_in_schema=False)
ProjectId = Annotated[int, Path(ge=1, le=MAX_ID)]
ClientId = Annotated[int, Path(ge=1, le=MAX_ID)]

IMPORT_PATH = f"{session.PREFIX}/clients/import"
"""The import form's target without JavaScript: one fixed path (the project is a field), so
that the app gives it the import's body limit, not a form's (``app.create_app``)."""

TEXT_FIELDS = ("guid", "first_name", "last_name", "middle_name", "email", "phone", "timezone")
CLEARED: dict[str, Any] = {
    "middle_name": "",
    "email": None,
    "phone": None,
    "timezone": None,
    "tags": [],
    "attributes": {},
}
"""What a field left empty in the card means: cleared (a required field left empty is
refused by ``service.update`` as one that cannot be cleared)."""


def form_id(value: Any) -> int | None:
    """An id a form names (a hidden field, a select), or None if it is not one."""
    try:
        number = int(str(value))
    except ValueError:
        return None
    return number if 1 <= number <= MAX_ID else None


async def visible_client(request: Request, db: AsyncSession, client_id: int) -> Client:
    client = await client_service.get(db, client_id=client_id)
    scope_id = scope.project_scope(request)
    if scope_id is not None and scope_id != client.project_id:
        raise NotFound.on("id", client_service.NOT_FOUND.format(client_id))
    return client


def _fields(values: dict[str, Any]) -> tuple[dict[str, Any], list[FieldError]]:
    """The form's strings as the API's JSON would carry them: tags a list (split at commas),
    attributes a JSON object, the opt-out a flag."""
    data = {name: values[name] for name in TEXT_FIELDS if name in values}
    problems: list[FieldError] = []
    if "tags" in values:
        data["tags"] = [tag.strip() for tag in str(values["tags"]).split(",") if tag.strip()]
    if "attributes" in values:
        try:
            data["attributes"] = json.loads(str(values["attributes"]))
        except ValueError as error:
            problems.append(FieldError(field="attributes", message=f"Некорректный JSON: {error}"))
        else:
            if not isinstance(data["attributes"], dict):
                problems.append(
                    FieldError(field="attributes", message='Ожидается объект JSON: {"имя": …}')
                )
    data["opted_out"] = "opted_out" in values
    for prefix in ("email", "sms"):
        data[f"{prefix}_opted_out"] = f"{prefix}_opted_out" in values
        if f"{prefix}_consent" in values:
            data[f"{prefix}_consent"] = values[f"{prefix}_consent"]
        if f"{prefix}_consent_source" in values:
            data[f"{prefix}_consent_source"] = str(values[f"{prefix}_consent_source"]) or None
    return data, problems


def _shown(client: Client) -> dict[str, Any]:
    """A client's fields as the card's inputs show them."""
    values: dict[str, Any] = {name: getattr(client, name) or "" for name in TEXT_FIELDS}
    values["tags"] = ", ".join(client.tags or [])
    values["attributes"] = (
        json.dumps(client.attributes, ensure_ascii=False, indent=2) if client.attributes else ""
    )
    if client.opted_out:
        values["opted_out"] = "on"
    for prefix in ("email", "sms"):
        values[f"{prefix}_consent"] = getattr(client, f"{prefix}_consent")
        values[f"{prefix}_consent_source"] = getattr(client, f"{prefix}_consent_source") or ""
        if getattr(client, f"{prefix}_opted_out"):
            values[f"{prefix}_opted_out"] = "on"
    return values


@router.get("/project/{id:int}/clients")
async def clients_page(
    request: Request,
    db: SessionDep,
    id: ProjectId,
    q: Annotated[str | None, Query(max_length=255)] = None,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> Response:
    project = await visible_project(request, db, id)
    clients, total = await client_service.page(
        db, project=project.id, guid=None, search=q, limit=PAGE_SIZE, offset=offset
    )
    return page(
        request,
        "clients.html",
        project=project,
        clients=clients,
        total=total,
        offset=offset,
        limit=PAGE_SIZE,
        q=(q or "").strip(),
    )


@router.get("/project/{id:int}/clients/new")
async def new_client_page(request: Request, db: SessionDep, id: ProjectId) -> Response:
    project = await visible_project(request, db, id)
    return page(request, "client_form.html", project=project, client=None, errors={}, values={})


@router.post("/project/{id:int}/clients/new")
async def create_client(request: Request, id: ProjectId) -> Response:
    """Through ``service.create``, as ``POST /client/create``: it writes in a transaction of
    its own, so this reads the project in a session closed before (on SQLite, a request's
    open transaction would hold the one write lock that the create then waits for)."""
    values = await forms.read(request)
    state = request.app.state
    async with state.sessionmaker() as db:
        project = await visible_project(request, db, id)
    fields, errors = _fields(values)
    data, invalid = forms.validate(ClientCreate, {**fields, "project": project.code})
    errors += invalid
    if data is not None and not errors:
        try:
            row = await client_service.create(state.new_clients, state.sessionmaker, data=data)
        except AppError as error:
            errors = forms.refused(error)
        else:
            return redirect(f"{session.PREFIX}/client/{row['id']}?saved=1")
    return page(
        request,
        "client_form.html",
        status=400,
        project=project,
        client=None,
        errors=forms.by_field(errors),
        values=values,
    )


@router.get("/client/{id:int}")
async def client_page(
    request: Request, db: SessionDep, id: ClientId, saved: bool = False
) -> Response:
    client = await visible_client(request, db, id)
    project = await project_service.get(db, project_id=client.project_id)
    return page(
        request,
        "client_form.html",
        project=project,
        client=client,
        errors={},
        values=_shown(client),
        saved=saved,
    )


@router.post("/client/{id:int}")
async def update_client(request: Request, db: SessionDep, id: ClientId) -> Response:
    values = await forms.read(request)
    client = await visible_client(request, db, id)
    fields, errors = _fields(values)
    # The card shows every field: one left empty is cleared, not left as it was.
    changes = {name: None for name in ("guid", "first_name", "last_name")}
    changes.update(CLEARED)
    changes.update(fields)
    if errors:
        changes.pop("attributes", None)
    data, invalid = forms.validate(ClientUpdate, changes)
    errors += invalid
    if data is not None and not errors:
        try:
            async with db.begin_nested():  # a refused change leaves nothing half made
                await client_service.update(db, client_id=client.id, data=data)
        except AppError as error:
            errors = forms.refused(error)
            await db.refresh(client)  # as stored: the savepoint's rollback expired it
        else:
            return redirect(f"{session.PREFIX}/client/{client.id}?saved=1")
    project = await project_service.get(db, project_id=client.project_id)
    return page(
        request,
        "client_form.html",
        status=400,
        project=project,
        client=client,
        errors=forms.by_field(errors),
        values=values,
    )


def _import_context(request: Request, project: Project) -> dict[str, Any]:
    return {
        "project": project,
        "import_path": IMPORT_PATH,
        "columns": sorted(CSV_COLUMNS),
        "max_rows": request.app.state.settings.max_import_rows,
    }


@router.get("/project/{id:int}/clients/import")
async def import_page(request: Request, db: SessionDep, id: ProjectId) -> Response:
    project = await visible_project(request, db, id)
    context = _import_context(request, project)
    return page(request, "clients_import.html", result=None, errors=[], **context)


@router.post(IMPORT_PATH.removeprefix(session.PREFIX))
async def import_clients(request: Request, db: SessionDep) -> Response:
    """The import without JavaScript: the same checks and the same upsert as
    ``POST /client/import`` with a CSV file, and the same summary as the page's script shows."""
    values = await forms.read(request)
    project_id = form_id(values.get("project_id"))
    if project_id is None:
        raise NotFound.on("project_id", PROJECT_NOT_FOUND.format(values.get("project_id")))
    project = await visible_project(request, db, project_id)
    context = _import_context(request, project)
    limit = context["max_rows"]
    upload = values.get("file")
    result: ImportResult | None = None
    errors: list[FieldError] = []
    if not isinstance(upload, UploadFile):
        errors = [FieldError(field="file", message="Выберите CSV-файл")]
    else:
        data = await upload.read()
        try:
            async with client_router.import_lock(request):
                checked = await client_router.check_csv(data, limit=limit)
                del data
                created, updated = await client_service.upsert(
                    db, project_id=project.id, rows=checked.valid
                )
        except ValidationFailed as error:
            errors = forms.refused(error)
        else:
            result = checked.result(created=created, updated=updated)
    status = 400 if errors else 200
    return page(
        request, "clients_import.html", status=status, result=result, errors=errors, **context
    )
