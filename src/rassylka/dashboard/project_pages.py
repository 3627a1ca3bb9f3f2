"""The dashboard's front page (the projects), a project's page, and the login."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import RedirectResponse
from sqlalchemy.ext.asyncio import AsyncSession

from rassylka.access import scope
from rassylka.dashboard import forms, session
from rassylka.dashboard.rendering import PageRoute, page, set_cookie
from rassylka.db import SessionDep
from rassylka.errors import AppError, FieldError
from rassylka.projects import service as project_service
from rassylka.projects.models import Project
from rassylka.projects.schemas import ProjectCreate
from rassylka.schemas import MAX_ID

router = APIRouter(prefix=session.PREFIX, route_class=PageRoute, include_in_schema=False)
ProjectId = Annotated[int, Path(ge=1, le=MAX_ID)]
PAGE_SIZE = 50


PROJECT_NOT_FOUND = "Проект {} не найден"


async def visible_project(request: Request, db: AsyncSession, project_id: int) -> Project:
    """The project, if the caller's key sees it (another project's: 404, as if it did not
    exist)."""
    scope.see_project(request, project_id, PROJECT_NOT_FOUND)
    return await project_service.get(db, project_id=project_id)


def redirect(url: str) -> RedirectResponse:
    """After a form: 303, so that reloading the next page does not send the form again."""
    return RedirectResponse(url, status_code=303)


@router.get("/")
async def home(
    request: Request,
    db: SessionDep,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> Response:
    projects, total = await project_service.page(
        db, project_id=scope.project_scope(request), limit=PAGE_SIZE, offset=offset
    )
    return page(
        request,
        "home.html",
        projects=projects,
        total=total,
        offset=offset,
        limit=PAGE_SIZE,
        errors={},
        values={},
    )


@router.post("/projects")
async def create_project(request: Request, db: SessionDep) -> Response:
    values = await forms.read(request)
    scope.require_global(request)
    data, errors = forms.validate(ProjectCreate, values)
    if data is not None:
        try:
            project = await project_service.create(db, data=data)
        except AppError as error:
            errors = forms.refused(error)
        else:
            return redirect(f"{session.PREFIX}/project/{project.id}")
    projects, total = await project_service.page(db, limit=PAGE_SIZE, offset=0)
    return page(
        request,
        "home.html",
        status=400,
        projects=projects,
        total=total,
        offset=0,
        limit=PAGE_SIZE,
        errors=forms.by_field(errors),
        values=values,
    )


@router.get("/project/{id}")
async def project_page(request: Request, db: SessionDep, id: ProjectId) -> Response:
    project = await visible_project(request, db, id)
    return page(request, "project.html", project=project)


@router.get("/login")
async def login_page(request: Request, next: str | None = None) -> Response:
    return page(request, "login.html", next=session.safe_next(next), errors={})


@router.post("/login")
async def login(request: Request) -> Response:
    values = await forms.read(request)
    target = session.safe_next(values.get("next"))
    snapshot = await request.app.state.keyring.current()
    if not snapshot.required:  # no keys: nothing to log in with, everyone is let in
        return redirect(target)
    key = str(values.get("key", "")).strip()
    if not key or snapshot.find(key) is None:
        message = "Ключ не подходит (или отозван)" if key else "Введите ключ API"
        errors = forms.by_field([FieldError(field="key", message=message)])
        return page(request, "login.html", status=403, next=target, errors=errors)
    response = redirect(target)
    set_cookie(request, response, session.KEY_COOKIE, key)
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    await forms.read(request)
    response = redirect(f"{session.PREFIX}/login")
    response.delete_cookie(session.KEY_COOKIE, path="/")
    return response
