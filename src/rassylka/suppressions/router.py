"""HTTP endpoints of suppressions: add an address to a project's do-not-send list, list,
read and remove."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request

from rassylka.access import scope
from rassylka.db import SessionDep
from rassylka.errors import openapi_error_responses
from rassylka.schemas import MAX_ID, Envelope, Page, PageDep, ok
from rassylka.suppressions import service
from rassylka.suppressions.models import Suppression
from rassylka.suppressions.schemas import SuppressionCreate, SuppressionRead

router = APIRouter(
    prefix="/suppression",
    tags=["Suppressions"],
    dependencies=[scope.owned(Suppression, service.NOT_FOUND)],
)
SuppressionId = Annotated[int, Path(ge=1, le=MAX_ID, description="Идентификатор подавления")]


@router.post(
    "/create",
    status_code=201,
    summary="Добавление адреса в список подавления",
    description=(
        "Сообщения на этот email или телефон в проекте не отправляются (статус skipped)."
        " Повторное добавление того же адреса возвращает уже существующую запись."
    ),
    response_model=Envelope[SuppressionRead],
    responses=openapi_error_responses(400, 403, 405, 413, 500),
)
async def create_suppression(
    request: Request, session: SessionDep, data: SuppressionCreate
) -> dict[str, object]:
    data.project = scope.scoped_reference(request, data.project)  # type: ignore[assignment]
    suppression = await service.create(session, data=data)
    return ok(SuppressionRead.model_validate(suppression))


@router.get(
    "/list",
    summary="Список подавленных адресов",
    response_model=Envelope[Page[SuppressionRead]],
    responses=openapi_error_responses(400, 403, 500),
)
async def list_suppressions(
    request: Request,
    session: SessionDep,
    page: PageDep,
    project: Annotated[str | None, Query(description="Код или id проекта")] = None,
    address: Annotated[str | None, Query(description="Email или телефон")] = None,
) -> dict[str, object]:
    suppressions, total = await service.page(
        session,
        project=scope.scoped_reference(request, project),
        address=address,
        limit=page.limit,
        offset=page.offset,
    )
    items = [SuppressionRead.model_validate(s) for s in suppressions]
    return ok(page.of(items, total), status=200)


@router.get(
    "/{id:int}",
    summary="Подавленный адрес",
    response_model=Envelope[SuppressionRead],
    responses=openapi_error_responses(403, 404, 500),
)
async def read_suppression(session: SessionDep, id: SuppressionId) -> dict[str, object]:
    suppression = await service.get(session, suppression_id=id)
    return ok(SuppressionRead.model_validate(suppression), status=200)


@router.delete(
    "/{id:int}",
    summary="Удаление адреса из списка подавления",
    response_model=Envelope[SuppressionRead],
    responses=openapi_error_responses(403, 404, 500),
)
async def delete_suppression(session: SessionDep, id: SuppressionId) -> dict[str, object]:
    suppression = SuppressionRead.model_validate(await service.get(session, suppression_id=id))
    await service.delete(session, suppression_id=id)
    return ok(suppression, status=200)
