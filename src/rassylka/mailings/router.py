"""HTTP endpoints of mailings: the manual's create, plus update, list, read and delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Path, Query, Request

from rassylka.access import scope
from rassylka.db import SessionDep
from rassylka.errors import openapi_error_responses
from rassylka.mailings import lifecycle, service
from rassylka.mailings.models import Mailing
from rassylka.mailings.schemas import (
    ChannelParam,
    MailingCreate,
    MailingRead,
    MailingStats,
    MailingUpdate,
    MessageRead,
    RetryResult,
    RunRead,
    SchedulePreview,
)
from rassylka.messages.models import MessageStatus
from rassylka.schemas import MAX_ID, Envelope, Page, PageDep, ok

router = APIRouter(
    prefix="/mailing",
    tags=["Mailing"],
    dependencies=[scope.owned(Mailing, service.NOT_FOUND)],
)
MAX_PREVIEW = 100
MailingId = Annotated[int, Path(ge=1, le=MAX_ID, description="Идентификатор рассылки")]


@router.post(
    "/create",
    status_code=201,
    summary="Создание рассылки",
    description="Создание рассылки",
    response_model=Envelope[MailingRead],
    responses=openapi_error_responses(400, 403, 405, 413, 500),
)
async def create_mailing(
    session: SessionDep, data: MailingCreate, background: BackgroundTasks, request: Request
) -> dict[str, object]:
    data.project_id = scope.scoped_reference(request, data.project_id)  # type: ignore[assignment]
    mailing = await service.create(session, data=data)
    background.add_task(_wake_scheduler, request)
    return ok(MailingRead.model_validate(mailing))


@router.put(
    "/{id:int}/update",
    status_code=201,
    summary="Обновление рассылки",
    description="Меняет только переданные поля.",
    response_model=Envelope[MailingRead],
    responses=openapi_error_responses(400, 403, 404, 405, 409, 413, 500),
)
async def update_mailing(
    session: SessionDep,
    id: MailingId,
    data: MailingUpdate,
    background: BackgroundTasks,
    request: Request,
) -> dict[str, object]:
    mailing = await service.update(session, mailing_id=id, data=data)
    background.add_task(_wake_scheduler, request)
    return ok(MailingRead.model_validate(mailing))


def _lifecycle_route(action: lifecycle.Action, summary: str, description: str) -> None:
    async def endpoint(
        session: SessionDep, id: MailingId, background: BackgroundTasks, request: Request
    ) -> dict[str, object]:
        mailing = await service.get(session, mailing_id=id)
        mailing = await lifecycle.apply(session, mailing, action)
        background.add_task(_wake_scheduler, request)
        return ok(MailingRead.model_validate(mailing), status=200)

    router.add_api_route(
        f"/{{id:int}}/{action.value}",
        endpoint,
        methods=["POST"],
        status_code=200,
        summary=summary,
        description=description,
        response_model=Envelope[MailingRead],
        responses=openapi_error_responses(403, 404, 409, 500),
        name=f"{action.value}_mailing",
    )


def _wake_scheduler(request: Request) -> None:
    """After the response (so after the commit), the scheduler in this process looks again;
    schedulers in other processes hear the NOTIFY sent at the commit."""
    worker = getattr(request.app.state, "worker", None)
    if worker is not None:
        worker.wake_scheduler()


_lifecycle_route(lifecycle.Action.START, "Запуск рассылки", "Черновик (0) → активна (1).")
_lifecycle_route(
    lifecycle.Action.PAUSE,
    "Пауза рассылки",
    "Активна (1) → приостановлена (2): новые отправки прекращаются в течение секунды.",
)
_lifecycle_route(
    lifecycle.Action.RESUME,
    "Возобновление рассылки",
    "Приостановлена (2) → активна (1): уже отправленное не отправляется повторно.",
)
_lifecycle_route(
    lifecycle.Action.CANCEL,
    "Отмена рассылки",
    "Черновик, активна или на паузе → отменена (4): всё ещё не отправленное истекает.",
)


@router.get(
    "/list",
    summary="Список рассылок",
    response_model=Envelope[Page[MailingRead]],
    responses=openapi_error_responses(400, 403, 500),
)
async def list_mailings(
    request: Request,
    session: SessionDep,
    page: PageDep,
    project: Annotated[str | None, Query(description="Код или id проекта")] = None,
    status: Annotated[int | None, Query(ge=0, le=4, description="Статус рассылки")] = None,
) -> dict[str, object]:
    mailings, total = await service.page(
        session,
        project=scope.scoped_reference(request, project),
        status=status,
        limit=page.limit,
        offset=page.offset,
    )
    return ok(page.of([MailingRead.model_validate(m) for m in mailings], total), status=200)


@router.get(
    "/{id:int}/schedule",
    summary="Ближайшие запуски рассылки",
    response_model=Envelope[SchedulePreview],
    responses=openapi_error_responses(400, 403, 404, 500),
)
async def preview_schedule(
    session: SessionDep,
    id: MailingId,
    count: Annotated[int, Query(ge=1, le=MAX_PREVIEW, description="Сколько запусков")] = 10,
) -> dict[str, object]:
    mailing = await service.get(session, mailing_id=id)
    return ok(service.preview(mailing, count=count), status=200)


@router.get(
    "/{id:int}/runs",
    summary="Запуски рассылки и их счётчики",
    response_model=Envelope[Page[RunRead]],
    responses=openapi_error_responses(400, 403, 404, 500),
)
async def list_runs(session: SessionDep, id: MailingId, page: PageDep) -> dict[str, object]:
    runs, total = await service.runs(session, mailing_id=id, limit=page.limit, offset=page.offset)
    return ok(page.of(runs, total), status=200)


@router.get(
    "/{id:int}/stats",
    summary="Статистика рассылки",
    description="По запускам и в целом: статусы по каналам, доли, SMS-сегменты, темп отправки.",
    response_model=Envelope[MailingStats],
    responses=openapi_error_responses(403, 404, 500),
)
async def mailing_stats(session: SessionDep, id: MailingId) -> dict[str, object]:
    return ok(await service.stats(session, mailing_id=id), status=200)


@router.post(
    "/{id:int}/retry-failed",
    status_code=200,
    summary="Повторить неудавшиеся сообщения",
    description="Снова ставит в очередь только failed и undelivered; завершённая рассылка "
    "снова становится активной.",
    response_model=Envelope[RetryResult],
    responses=openapi_error_responses(403, 404, 409, 500),
)
async def retry_failed(session: SessionDep, id: MailingId) -> dict[str, object]:
    return ok(await service.retry_failed(session, mailing_id=id), status=200)


@router.get(
    "/{id:int}/messages",
    summary="Сообщения рассылки и история их статусов",
    response_model=Envelope[Page[MessageRead]],
    responses=openapi_error_responses(400, 403, 404, 500),
)
async def list_messages(
    session: SessionDep,
    id: MailingId,
    page: PageDep,
    status: Annotated[
        MessageStatus | None, Query(description="Только сообщения в этом статусе")
    ] = None,
    channel: Annotated[ChannelParam | None, Query(description="1 или email, 2 или sms")] = None,
) -> dict[str, object]:
    found, total = await service.messages(
        session,
        mailing_id=id,
        status=status,
        channel=channel,
        limit=page.limit,
        offset=page.offset,
    )
    return ok(page.of(found, total), status=200)


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
