"""HTTP endpoints of mailings: the manual's create, plus update, list, read and delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from rassylka.db import SessionDep
from rassylka.errors import openapi_error_responses
from rassylka.mailings import service
from rassylka.mailings.schemas import MailingCreate, MailingRead, MailingUpdate
from rassylka.schemas import MAX_ID, Envelope, Page, PageDep, ok

router = APIRouter(prefix="/mailing", tags=["Mailing"])
MailingId = Annotated[int, Path(ge=1, le=MAX_ID, description="Идентификатор рассылки")]


@router.post(
    "/create",
    status_code=201,
    summary="Создание рассылки",
    description="Создание рассылки",
    response_model=Envelope[MailingRead],
    responses=openapi_error_responses(400, 403, 405, 413, 500),
)
async def create_mailing(session: SessionDep, data: MailingCreate) -> dict[str, object]:
    return ok(MailingRead.model_validate(await service.create(session, data=data)))


@router.put(
    "/{id:int}/update",
    status_code=201,
    summary="Обновление рассылки",
    description="Меняет только переданные поля.",
    response_model=Envelope[MailingRead],
    responses=openapi_error_responses(400, 403, 404, 405, 413, 500),
)
async def update_mailing(
    session: SessionDep, id: MailingId, data: MailingUpdate
) -> dict[str, object]:
    mailing = await service.update(session, mailing_id=id, data=data)
    return ok(MailingRead.model_validate(mailing))


@router.get(
    "/list",
    summary="Список рассылок",
    response_model=Envelope[Page[MailingRead]],
    responses=openapi_error_responses(400, 403, 500),
)
async def list_mailings(
    session: SessionDep,
    page: PageDep,
    project: Annotated[str | None, Query(description="Код или id проекта")] = None,
    status: Annotated[int | None, Query(ge=0, le=4, description="Статус рассылки")] = None,
) -> dict[str, object]:
    mailings, total = await service.page(
        session, project=project, status=status, limit=page.limit, offset=page.offset
    )
    return ok(page.of([MailingRead.model_validate(m) for m in mailings], total), status=200)


@router.get(
    "/{id:int}",
    summary="Данные рассылки",
    response_model=Envelope[MailingRead],
    responses=openapi_error_responses(403, 404, 500),
)
async def read_mailing(session: SessionDep, id: MailingId) -> dict[str, object]:
    return ok(MailingRead.model_validate(await service.get(session, mailing_id=id)), status=200)


@router.delete(
    "/{id:int}",
    summary="Удаление рассылки",
    response_model=Envelope[MailingRead],
    responses=openapi_error_responses(403, 404, 500),
)
async def delete_mailing(session: SessionDep, id: MailingId) -> dict[str, object]:
    mailing = MailingRead.model_validate(await service.get(session, mailing_id=id))
    await service.delete(session, mailing_id=id)
    return ok(mailing, status=200)
