"""HTTP endpoints of projects: the manual's create and update, plus list, read and delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request

from rassylka.access import scope
from rassylka.db import SessionDep
from rassylka.errors import openapi_error_responses
from rassylka.projects import service
from rassylka.projects.schemas import DKIM_FIELDS, ProjectCreate, ProjectRead, ProjectUpdate
from rassylka.schemas import MAX_ID, Envelope, Page, PageDep, ok

router = APIRouter(prefix="/project", tags=["Projects"])
ProjectId = Annotated[int, Path(ge=1, le=MAX_ID, description="Идентификатор проекта")]


@router.post(
    "/create",
    status_code=201,
    summary="Добавление нового проекта",
    description="Экшен для создания нового проекта",
    response_model=Envelope[ProjectRead],
    responses=openapi_error_responses(400, 403, 405, 409, 413, 500),
)
async def create_project(
    request: Request, session: SessionDep, data: ProjectCreate
) -> dict[str, object]:
    scope.require_global(request)
    project = await service.create(session, data=data)
    return ok(ProjectRead.model_validate(project))


@router.put(
    "/{id:int}/update",
    status_code=201,
    summary="Обновление данных проекта",
    description="Экшен для обновления данных проекта",
    response_model=Envelope[ProjectRead],
    responses=openapi_error_responses(400, 403, 404, 405, 409, 413, 500),
)
async def update_project(
    request: Request, session: SessionDep, id: ProjectId, data: ProjectUpdate
) -> dict[str, object]:
    scope.see_project(request, id, service.NOT_FOUND)
    if data.model_fields_set.intersection(DKIM_FIELDS):
        # A key path names a file on the server: a project's key could otherwise sign its mail
        # with another project's key, or probe which files exist.
        scope.require_global(request)
    project = await service.update(session, project_id=id, data=data)
    return ok(ProjectRead.model_validate(project))


@router.get(
    "/list",
    summary="Список проектов",
    response_model=Envelope[Page[ProjectRead]],
    responses=openapi_error_responses(400, 403, 500),
)
async def list_projects(request: Request, session: SessionDep, page: PageDep) -> dict[str, object]:
    projects, total = await service.page(
        session, project_id=scope.project_scope(request), limit=page.limit, offset=page.offset
    )
    return ok(page.of([ProjectRead.model_validate(p) for p in projects], total), status=200)


@router.get(
    "/{id:int}",
    summary="Данные проекта",
    response_model=Envelope[ProjectRead],
    responses=openapi_error_responses(403, 404, 500),
)
async def read_project(request: Request, session: SessionDep, id: ProjectId) -> dict[str, object]:
    scope.see_project(request, id, service.NOT_FOUND)
    project = await service.get(session, project_id=id)
    return ok(ProjectRead.model_validate(project), status=200)


@router.delete(
    "/{id:int}",
    summary="Удаление проекта",
    description="Удаляет проект вместе с его клиентами, шаблонами и рассылками.",
    response_model=Envelope[ProjectRead],
    responses=openapi_error_responses(403, 404, 500),
)
async def delete_project(request: Request, session: SessionDep, id: ProjectId) -> dict[str, object]:
    scope.require_global(request)
    project = ProjectRead.model_validate(await service.get(session, project_id=id))
    await service.delete(session, project_id=id)
    return ok(project, status=200)
