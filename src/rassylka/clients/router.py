"""HTTP endpoints of clients: the manual's create, plus update, list, read, delete and import."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Path, Query, Request
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import UploadFile
from starlette.responses import Response

from rassylka.access import scope
from rassylka.clients import importing, service
from rassylka.clients.models import Client
from rassylka.clients.schemas import (
    ClientCreate,
    ClientImport,
    ClientRead,
    ClientUpdate,
    ImportResult,
)
from rassylka.db import SessionDep
from rassylka.errors import ValidationFailed, details_from_pydantic, openapi_error_responses
from rassylka.mailings import service as mailing_service
from rassylka.mailings.schemas import MessageRead
from rassylka.projects import service as project_service
from rassylka.schemas import MAX_ID, Envelope, Page, PageDep, ok

router = APIRouter(
    prefix="/client", tags=["Clients"], dependencies=[scope.owned(Client, service.NOT_FOUND)]
)
ClientId = Annotated[int, Path(ge=1, le=MAX_ID, description="Идентификатор клиента")]


@router.post(
    "/create",
    status_code=201,
    summary="Создание нового клиента",
    description="Экшен для создания нового клиента",
    response_model=Envelope[ClientRead],
    responses=openapi_error_responses(400, 403, 405, 409, 413, 500),
)
async def create_client(request: Request, data: ClientCreate) -> Response:
    """Most creates are answered before they get here, by ``fast_create.FastCreate``; this
    endpoint answers the rest the same way (and gives the operation its schema)."""
    data.project = scope.scoped_reference(request, data.project)  # type: ignore[assignment]
    state = request.app.state
    row = await service.create(state.new_clients, state.sessionmaker, data=data)
    return Response(created(row), status_code=201, media_type="application/json")


CREATE_PATH = "/client/create"
_CREATED = TypeAdapter(Envelope[ClientRead])


def created(row: Mapping[str, Any]) -> bytes:
    """The body of a create's answer: the bytes FastAPI would write for the response model,
    without validating the envelope again."""
    return _CREATED.dump_json(Envelope[ClientRead](data=ClientRead.model_validate(row)))


_IMPORT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": ClientImport.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
            "text/csv": {"schema": {"type": "string"}},
        },
    }
}


@router.post(
    "/import",
    status_code=201,
    summary="Массовая загрузка клиентов",
    description=(
        'Создаёт или обновляет клиентов по guid: JSON `{"project": CODE, "clients": [...]}`,'
        " или CSV-файл (multipart, поле `file`, либо тело `text/csv`) с `?project=CODE`."
        " Корректные строки сохраняются, ошибочные перечисляются в `errors`."
    ),
    response_model=Envelope[ImportResult],
    responses=openapi_error_responses(400, 403, 405, 413, 500),
    openapi_extra=_IMPORT_BODY,
)
async def import_clients(
    request: Request,
    response: Response,
    session: SessionDep,
    project: Annotated[str | None, Query(description="Код проекта (для CSV)")] = None,
) -> dict[str, object]:
    # An import keeps its process busy for seconds; a client that sends the next on the same
    # connection would keep sending them all to that one process. Closed, its next request
    # is a new connection, which a free API process (rassylka api --workers N) accepts first.
    response.headers["Connection"] = "close"
    async with import_lock(request):
        return await _import(request, session, project)


def import_lock(request: Request) -> asyncio.Lock:
    """One import at a time in a process (the API's and the dashboard's): its CPU work holds
    the interpreter anyway, and its memory stays that of one import (rows and body) however
    many arrive together."""
    app_state = request.app.state
    if getattr(app_state, "import_lock", None) is None:
        app_state.import_lock = asyncio.Lock()
    lock: asyncio.Lock = app_state.import_lock
    return lock


async def check_csv(data: bytes, *, limit: int) -> importing.CheckedRows:
    """A CSV file's rows checked in a worker thread, as they are read (the file's rows are
    never all held at once); too many rows: ``ValidationFailed``."""
    try:
        return await to_thread.run_sync(_check_csv, data, limit)
    except importing.TooManyRows:
        raise ValidationFailed.on("file", f"Не больше {limit} клиентов за один запрос") from None


async def _import(
    request: Request, session: AsyncSession, project: str | None
) -> dict[str, object]:
    settings = request.app.state.settings
    limit = settings.max_import_rows
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in {"multipart/form-data", "text/csv"}:
        if project is None:
            raise ValidationFailed.on("project", "Укажите проект: ?project=CODE")
        if content_type == "text/csv":
            data = await request.body()
        else:
            form = await request.form(max_files=1, max_fields=4)
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise ValidationFailed.on("file", "Приложите CSV-файл в поле file")
            data = await upload.read()
        reference: str | int = project
        checked = await check_csv(data, limit=limit)
        del data
    elif content_type in {"application/json", ""}:
        body = await _json_body(request)
        reference = body.project
        rows = list(enumerate(body.clients))
        body.clients.clear()  # the rows alone hold them: checking frees each in turn
        if len(rows) > limit:
            raise ValidationFailed.on("clients", f"Не больше {limit} клиентов за один запрос")
        checked = None
    else:
        raise ValidationFailed.on(
            "Content-Type", "Ожидается application/json, multipart/form-data или text/csv"
        )
    scoped = scope.scoped_reference(request, reference)
    assert scoped is not None  # a reference in, a reference out
    target = await project_service.resolve(session, reference=scoped, field="project")
    if checked is None:
        checked = await to_thread.run_sync(importing.check_rows, importing.draining(rows))
    created, updated = await service.upsert(session, project_id=target.id, rows=checked.valid)
    return ok(checked.result(created=created, updated=updated))


def _check_csv(data: bytes, limit: int) -> importing.CheckedRows:
    return importing.check_rows(importing.read_csv(data), limit=limit)


async def _json_body(request: Request) -> ClientImport:
    raw = await request.body()
    try:
        parsed = await to_thread.run_sync(json.loads, raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise ValidationFailed.on("body", f"Некорректный JSON: {error}") from None
    try:
        return ClientImport.model_validate(parsed)
    except ValidationError as error:
        raise ValidationFailed(details_from_pydantic(error.errors())) from None


@router.put(
    "/{id:int}/update",
    status_code=201,
    summary="Обновление данных клиента",
    description="Меняет только переданные поля; `null` очищает необязательное поле.",
    response_model=Envelope[ClientRead],
    responses=openapi_error_responses(400, 403, 404, 405, 409, 413, 500),
)
async def update_client(session: SessionDep, id: ClientId, data: ClientUpdate) -> dict[str, object]:
    client = await service.update(session, client_id=id, data=data)
    return ok(ClientRead.model_validate(client))


@router.get(
    "/list",
    summary="Список клиентов",
    response_model=Envelope[Page[ClientRead]],
    responses=openapi_error_responses(400, 403, 500),
)
async def list_clients(
    request: Request,
    session: SessionDep,
    page: PageDep,
    project: Annotated[str | None, Query(description="Код или id проекта")] = None,
    guid: Annotated[str | None, Query(description="guid клиента")] = None,
    q: Annotated[
        str | None,
        Query(
            max_length=255,
            description="Поиск: часть имени, guid, email или телефона (без учёта регистра)",
        ),
    ] = None,
) -> dict[str, object]:
    clients, total = await service.page(
        session,
        project=scope.scoped_reference(request, project),
        guid=guid,
        search=q,
        limit=page.limit,
        offset=page.offset,
    )
    return ok(page.of([ClientRead.model_validate(c) for c in clients], total), status=200)


@router.get(
    "/{id:int}",
    summary="Данные клиента",
    response_model=Envelope[ClientRead],
    responses=openapi_error_responses(403, 404, 500),
)
async def read_client(session: SessionDep, id: ClientId) -> dict[str, object]:
    return ok(ClientRead.model_validate(await service.get(session, client_id=id)), status=200)


@router.get(
    "/{id:int}/messages",
    summary="Сообщения клиента и история их статусов",
    response_model=Envelope[Page[MessageRead]],
    responses=openapi_error_responses(400, 403, 404, 500),
)
async def client_messages(session: SessionDep, id: ClientId, page: PageDep) -> dict[str, object]:
    client = await service.get(session, client_id=id)
    found, total = await mailing_service.messages(
        session, client_id=client.id, limit=page.limit, offset=page.offset
    )
    return ok(page.of(found, total), status=200)


@router.delete(
    "/{id:int}",
    summary="Удаление клиента",
    response_model=Envelope[ClientRead],
    responses=openapi_error_responses(403, 404, 500),
)
async def delete_client(session: SessionDep, id: ClientId) -> dict[str, object]:
    client = ClientRead.model_validate(await service.get(session, client_id=id))
    await service.delete(session, client_id=id)
    return ok(client, status=200)
