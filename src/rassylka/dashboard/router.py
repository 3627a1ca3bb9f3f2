"""The dashboard's routes, in one router for the app; ``/`` leads to it."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import RedirectResponse

from rassylka.dashboard import client_pages, mailing_pages, project_pages, session, template_pages

router = APIRouter(include_in_schema=False)


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse(f"{session.PREFIX}/", status_code=307)


@router.get(session.PREFIX)
async def prefix() -> RedirectResponse:
    return RedirectResponse(f"{session.PREFIX}/", status_code=307)


for pages in (project_pages, client_pages, template_pages, mailing_pages):
    router.include_router(pages.router)
