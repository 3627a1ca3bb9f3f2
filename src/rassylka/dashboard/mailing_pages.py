"""The dashboard's pages of mailings: a project's list, the form of a new one, the lifecycle's
actions, and the live page of one mailing (its numbers first rendered here, then kept current
by static/mailing.js from the mailing's event stream)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo, available_timezones

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import RedirectResponse
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.background import BackgroundTask

from rassylka.access import scope
from rassylka.dashboard import forms, session
from rassylka.dashboard.project_pages import visible_project
from rassylka.dashboard.rendering import PageRoute, page
from rassylka.db import SessionDep
from rassylka.errors import AppError, FieldError, NotFound
from rassylka.events import repository as event_repository
from rassylka.mailings import lifecycle
from rassylka.mailings import service as mailing_service
from rassylka.mailings.models import Channel, Mailing, MailingStatus
from rassylka.mailings.schemas import MailingCreate
from rassylka.messages import models as message_models
from rassylka.messages import repository as message_repository
from rassylka.messages.models import MessageStatus
from rassylka.projects import service as project_service
from rassylka.projects.models import Project
from rassylka.schemas import MAX_ID
from rassylka.templates import service as template_service

router = APIRouter(prefix=session.PREFIX, route_class=PageRoute, include_in_schema=False)
ProjectId = Annotated[int, Path(ge=1, le=MAX_ID)]
MailingId = Annotated[int, Path(ge=1, le=MAX_ID)]
PAGE_SIZE = 50
TEMPLATES_SHOWN = 500
"""A project's templates offered in the form's select (more than anyone picks from a list)."""
LATEST_EVENTS = 20
FAILED_SHOWN = 20

STATUS_NAMES = {int(status): name for status, name in lifecycle.STATUS_NAMES.items()}
CHANNEL_NAMES = {int(Channel.EMAIL): "email", int(Channel.SMS): "sms"}
ACTIONS = {
    lifecycle.Action.START: "Запустить",
    lifecycle.Action.PAUSE: "Приостановить",
    lifecycle.Action.RESUME: "Возобновить",
    lifecycle.Action.CANCEL: "Отменить",
}
STATUSES = [status.value for status in MessageStatus]
"""The columns of the counts table: every status, in a message's order of life."""

# The form's fields, and where the schema's error paths land among them.
FIELD_OF_ERROR = {
    "schedule": "cron",
    "send_window": "window_start",
    "send_window.start": "window_start",
    "send_window.end": "window_end",
    "audience": "tags_any",
}


def redirect(url: str, *, wake: Request | None = None) -> RedirectResponse:
    """303 after a form; ``wake``: then (the transaction committed) nudge this process's
    scheduler, as the JSON API does."""
    task = BackgroundTask(_wake_scheduler, wake) if wake is not None else None
    return RedirectResponse(url, status_code=303, background=task)


def _wake_scheduler(request: Request) -> None:
    worker = getattr(request.app.state, "worker", None)
    if worker is not None:
        worker.wake_scheduler()


def local(mailing: Mailing, moment: datetime | None) -> str:
    """A moment as the mailing's own zone reads it (the zone is shown beside it)."""
    if moment is None:
        return ""
    return moment.astimezone(ZoneInfo(mailing.timezone)).strftime("%Y-%m-%d %H:%M")


def actions_of(status: int) -> list[str]:
    """The lifecycle's moves legal from ``status``: the only buttons a mailing shows."""
    return [action.value for action, (sources, _) in lifecycle.MOVES.items() if status in sources]


def all_actions() -> list[dict[str, Any]]:
    """Every action with its label and the statuses it is legal from (for the page's script,
    which shows the buttons as the mailing's status changes)."""
    return [
        {"name": action.value, "label": label, "from": sorted(lifecycle.MOVES[action][0])}
        for action, label in ACTIONS.items()
    ]


async def _mailing(db: AsyncSession, request: Request, mailing_id: int) -> Mailing:
    """The mailing, or 404 (also for a key of another project: the same answer)."""
    mailing = await mailing_service.get(db, mailing_id=mailing_id)
    if scope.project_scope(request) not in (None, mailing.project_id):
        raise NotFound.on("id", mailing_service.NOT_FOUND.format(mailing_id))
    return mailing


# -- the list ---------------------------------------------------------------------------------


@router.get("/project/{id}/mailings")
async def mailings_page(
    request: Request,
    db: SessionDep,
    id: ProjectId,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> Response:
    project = await visible_project(request, db, id)
    mailings, total = await mailing_service.page(
        db, project=project.id, status=None, limit=PAGE_SIZE, offset=offset
    )
    counts = await message_repository.counts_by_mailing(db, mailing_ids=[m.id for m in mailings])
    return page(
        request,
        "mailings.html",
        project=project,
        mailings=mailings,
        counts=counts,
        total=total,
        offset=offset,
        limit=PAGE_SIZE,
        status_names=STATUS_NAMES,
        channel_names=CHANNEL_NAMES,
        actions=ACTIONS,
        actions_of=actions_of,
        local=local,
    )


# -- a new mailing ----------------------------------------------------------------------------


@router.get("/project/{id}/mailings/new")
async def new_mailing_page(request: Request, db: SessionDep, id: ProjectId) -> Response:
    project = await visible_project(request, db, id)
    values = {
        "timezone": request.app.state.settings.default_timezone,
        "when": "now",
        "channels": ["email"],
        "start": "1",
    }
    return await _form(request, db, project, values=values, errors={})


@router.post("/project/{id}/mailings")
async def create_mailing(request: Request, db: SessionDep, id: ProjectId) -> Response:
    values = await forms.read(request)
    project = await visible_project(request, db, id)
    body, errors = request_of(values, project_id=project.id)
    if not errors:
        data, errors = forms.validate(MailingCreate, body)
        if data is not None:
            try:
                mailing = await mailing_service.create(db, data=data)
            except AppError as error:
                errors = forms.refused(error)
            else:
                return redirect(f"{session.PREFIX}/mailing/{mailing.id}", wake=request)
    shown = forms.by_field([_on_form(error) for error in errors])
    return await _form(request, db, project, values=values, errors=shown, status=400)


def _listed(value: Any) -> list[str]:
    return value if isinstance(value, list) else [value] if value is not None else []


def _tags(value: Any) -> list[str] | None:
    """A comma-separated field (``vip, new``) as the schema's list; empty: no filter."""
    tags = [tag.strip() for tag in str(value or "").split(",") if tag.strip()]
    return tags or None


def request_of(
    values: dict[str, Any], *, project_id: int
) -> tuple[dict[str, Any], list[FieldError]]:
    """The form's fields as ``MailingCreate``'s body, so the page is held to the JSON API's
    rules and messages; what only the form can get wrong (the choice of "when" without its
    value) is refused here, beside its field."""
    errors: list[FieldError] = []
    body: dict[str, Any] = {
        "project_id": project_id,
        "status": int(MailingStatus.ACTIVE) if values.get("start") == "1" else 0,
    }
    for name in ("name", "template_id", "timezone", "kind"):
        if name in values:
            body[name] = values[name]
    # No box ticked: the schema's own message ("Укажите хотя бы один канал…").
    body["channels"] = _listed(values.get("channels"))
    when = values.get("when", "now")
    if when == "event":
        if values.get("event"):
            body["event"] = values["event"]
        else:
            errors.append(FieldError(field="event", message="Укажите дату и время отправки"))
    elif when == "schedule":
        if values.get("cron"):
            body["schedule"] = {"cron": values["cron"]}
            if values.get("event"):
                body["event"] = values["event"]  # the recurrence's start
        else:
            errors.append(
                FieldError(field="cron", message="Укажите cron-выражение, например 0 10 * * 1-5")
            )
    elif when != "now":
        errors.append(FieldError(field="when", message="Выберите, когда отправить"))
    if values.get("window_start") or values.get("window_end"):
        body["send_window"] = {
            "start": values.get("window_start", ""),
            "end": values.get("window_end", ""),
        }
    audience = {
        name: tags
        for name in ("tags_any", "tags_all")
        if (tags := _tags(values.get(name))) is not None
    }
    if audience:
        body["audience"] = audience
    return body, errors


def _on_form(error: FieldError) -> FieldError:
    """An error of the schema's field (``send_window.end``, ``audience.tags_any.0``) on the
    form's field that holds it."""
    field = error.field
    if field.startswith("audience."):
        field = field.split(".")[1]
    elif field.startswith("schedule."):
        field = "cron"
    field = FIELD_OF_ERROR.get(field, field)
    if field in ("project_id", "body"):
        field = ""
    return FieldError(field=field, message=error.message)


async def _form(
    request: Request,
    db: AsyncSession,
    project: Project,
    *,
    values: dict[str, Any],
    errors: dict[str, str],
    status: int = 200,
) -> Response:
    found, _ = await template_service.page(db, project=project.id, limit=TEMPLATES_SHOWN, offset=0)
    return page(
        request,
        "mailing_new.html",
        status=status,
        project=project,
        templates=found,
        values=values,
        channels=_listed(values.get("channels")),
        errors=errors,
        timezones=sorted(available_timezones()),
    )


# -- the lifecycle's actions ------------------------------------------------------------------


@router.post("/mailing/{id}/retry-failed")
async def retry_failed(request: Request, db: SessionDep, id: MailingId) -> Response:
    """The retry without scripts (the page's script calls the JSON API instead and stays).
    Declared before the actions' route, whose ``{action}`` would take its path."""
    await forms.read(request)
    mailing = await _mailing(db, request, id)
    await mailing_service.retry_failed(db, mailing_id=mailing.id)
    return redirect(f"{session.PREFIX}/mailing/{mailing.id}", wake=request)


@router.post("/mailing/{id}/{action}")
async def act(
    request: Request, db: SessionDep, id: MailingId, action: lifecycle.Action
) -> Response:
    """Start, pause, resume or cancel, as ``POST /mailing/{id}/{action}`` does; then back to
    the page the button was on. A move no longer legal (the mailing changed meanwhile) is the
    lifecycle's own 409 page."""
    values = await forms.read(request)
    mailing = await _mailing(db, request, id)
    await lifecycle.apply(db, mailing, action)
    target = session.safe_next(values.get("next"))
    if target == f"{session.PREFIX}/":
        target = f"{session.PREFIX}/mailing/{mailing.id}"
    return redirect(target, wake=request)


# -- the live page ----------------------------------------------------------------------------


@router.get("/mailing/{id}")
async def mailing_page(request: Request, db: SessionDep, id: MailingId) -> Response:
    mailing = await _mailing(db, request, id)
    # The stream resumes after this cursor, read before the numbers: an event committed
    # meanwhile is counted twice at worst (the script refetches the numbers), never lost.
    cursor = await event_repository.last_id(db)
    project = await project_service.get(db, project_id=mailing.project_id)
    template = await template_service.get(db, template_id=mailing.template_id)
    stats = await mailing_service.stats(db, mailing_id=mailing.id)
    failed, failed_total = await mailing_service.messages(
        db, mailing_id=mailing.id, status="failed", limit=FAILED_SHOWN, offset=0
    )
    latest = await event_repository.latest(
        db, mailing_id=mailing.id, upto=cursor, limit=LATEST_EVENTS
    )
    return page(
        request,
        "mailing.html",
        project=project,
        mailing=mailing,
        template=template,
        stats=stats,
        statuses=STATUSES,
        message_status_names=message_models.STATUS_NAMES,
        failed=failed,
        failed_total=failed_total,
        latest=latest,
        cursor=cursor,
        status_names=STATUS_NAMES,
        channel_names=CHANNEL_NAMES,
        actions=ACTIONS,
        actions_of=actions_of,
        local=local,
        live={
            "mailing_id": mailing.id,
            "cursor": cursor,
            "status": mailing.status,
            "statuses": STATUSES,
            "status_names": STATUS_NAMES,
            "actions": all_actions(),
            "stats": stats.model_dump(mode="json"),
            "latest_shown": LATEST_EVENTS,
            "failed_shown": FAILED_SHOWN,
        },
    )
