"""HTTP endpoints of templates: create, update, list, read and delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request

from rassylka.access import scope
from rassylka.db import SessionDep
from rassylka.errors import openapi_error_responses
from rassylka.schemas import MAX_ID, Envelope, Page, PageDep, ok
from rassylka.templates import service
from rassylka.templates.models import Template
from rassylka.templates.schemas import TemplateCreate, TemplateRead, TemplateUpdate

router = APIRouter(
    prefix="/template",
    tags=["Templates"],
    dependencies=[scope.owned(Template, service.NOT_FOUND)],
)
TemplateId = Annotated[int, Path(ge=1, le=MAX_ID, description="Идентификатор шаблона")]


@router.post(
    "/create",
    status_code=201,
    summary="Создание шаблона",
    description=(
        "Тексты письма (тема, HTML, текст) и SMS в синтаксисе Jinja2; синтаксис проверяется"
        " сразу. В шаблоне доступны поля клиента: `{{ first_name }}`, `{{ attributes.x }}`."
    ),
    response_model=Envelope[TemplateRead],
    responses=openapi_error_responses(400, 403, 405, 413, 500),
)
async def create_template(
    request: Request, session: SessionDep, data: TemplateCreate
) -> dict[str, object]:
    if scope.project_scope(request) is not None:
        named = data.project_id if data.project_id is not None else data.project
        data.project_id = scope.scoped_reference(request, named)  # type: ignore[assignment]
        data.project = None
    return ok(TemplateRead.model_validate(await service.create(session, data=data)))


@router.put(
    "/{id:int}/update",
    status_code=201,
    summary="Обновление шаблона",
    response_model=Envelope[TemplateRead],
    responses=openapi_error_responses(400, 403, 404, 405, 413, 500),
)
async def update_template(
    session: SessionDep, id: TemplateId, data: TemplateUpdate
) -> dict[str, object]:
    template = await service.update(session, template_id=id, data=data)
    return ok(TemplateRead.model_validate(template))


@router.get(
    "/list",
    summary="Список шаблонов",
    response_model=Envelope[Page[TemplateRead]],
    responses=openapi_error_responses(400, 403, 500),
)
async def list_templates(
    request: Request,
    session: SessionDep,
    page: PageDep,
    project: Annotated[str | None, Query(description="Код или id проекта")] = None,
) -> dict[str, object]:
    templates, total = await service.page(
        session,
        project=scope.scoped_reference(request, project),
        limit=page.limit,
        offset=page.offset,
    )
    return ok(page.of([TemplateRead.model_validate(t) for t in templates], total), status=200)


@router.get(
    "/{id:int}",
    summary="Данные шаблона",
    response_model=Envelope[TemplateRead],
    responses=openapi_error_responses(403, 404, 500),
)
async def read_template(session: SessionDep, id: TemplateId) -> dict[str, object]:
    return ok(TemplateRead.model_validate(await service.get(session, template_id=id)), status=200)


@router.delete(
    "/{id:int}",
    summary="Удаление шаблона",
    description="Шаблон, на который ссылаются рассылки, удалить нельзя (409).",
    response_model=Envelope[TemplateRead],
    responses=openapi_error_responses(403, 404, 409, 500),
)
async def delete_template(session: SessionDep, id: TemplateId) -> dict[str, object]:
    template = TemplateRead.model_validate(await service.get(session, template_id=id))
    await service.delete(session, template_id=id)
    return ok(template, status=200)
