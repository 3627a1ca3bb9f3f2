"""``GET /metrics``: this process's metrics in Prometheus' text format.

Behind the API key when keys exist (not in ``access.middleware.OPEN_PATHS``): the counts say how
much a service sends and to whom it fails, and Prometheus sends a key as
``authorization: Bearer`` (its ``authorization`` scrape setting). Left out of the OpenAPI
schema: it is for a scraper, not for the CRM, and its answer is not the manual's JSON.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder

from rassylka.metrics import depth

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    await depth.refresh(request.app.state.sessionmaker)
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(REGISTRY), headers={"Content-Type": content_type})
