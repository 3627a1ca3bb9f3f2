"""The dashboard's pages of clients."""

from __future__ import annotations

from fastapi import APIRouter

from rassylka.dashboard import session
from rassylka.dashboard.rendering import PageRoute

router = APIRouter(prefix=session.PREFIX, route_class=PageRoute, include_in_schema=False)
