"""create_app(): the routers, the error envelope, the lifespan and the API docs."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from rassylka import __version__
from rassylka.access import redaction
from rassylka.access.keyring import KeyRing
from rassylka.access.middleware import OPEN_PATHS, AuthMiddleware, RateLimitMiddleware
from rassylka.bounces.listener import BounceListener
from rassylka.bounces.router import router as bounce_router
from rassylka.clients.fast_create import FastCreate
from rassylka.clients.repository import EngineNewClients, NewClients, PoolNewClients
from rassylka.clients.router import router as client_router
from rassylka.config import Settings, environment_settings
from rassylka.dashboard.client_pages import IMPORT_PATH as dashboard_import_path
from rassylka.dashboard.router import router as dashboard_router
from rassylka.db import create_engine, create_sessionmaker
from rassylka.engine.worker import Worker, run_until_stopped
from rassylka.errors import error_response, install_handlers, openapi_error_responses
from rassylka.events.bus import EventHub
from rassylka.events.router import router as event_router
from rassylka.http import BodyLimitMiddleware, SettingsMiddleware, refuse_nul_in_query
from rassylka.idempotency.middleware import IdempotencyMiddleware
from rassylka.idempotency.middleware import document as document_idempotency
from rassylka.mailings.router import router as mailing_router
from rassylka.messages.router import router as delivery_router
from rassylka.metrics.router import router as metrics_router
from rassylka.projects.router import router as project_router
from rassylka.suppressions.router import router as suppression_router
from rassylka.templates.router import router as template_router
from rassylka.unsubscribe.router import router as unsubscribe_router
from rassylka.webhooks.router import router as webhook_router

logger = logging.getLogger(__name__)

# Statements writing POST /client/create's clients at once in a process (PostgreSQL), each on a
# connection of its own.
CLIENT_WRITERS = 4

TAGS = [
    {"name": "Projects", "description": "Проекты: у каждого свои клиенты, шаблоны и рассылки"},
    {"name": "Clients", "description": "Клиенты проекта и их контакты"},
    {"name": "Templates", "description": "Шаблоны сообщений для email и SMS"},
    {"name": "Mailing", "description": "Рассылки"},
    {
        "name": "Suppressions",
        "description": "Список подавления: адреса проекта, на которые ничего не отправляется",
    },
    {
        "name": "Delivery",
        "description": "Отчёты о доставке от провайдеров (вызывают они, а не CRM)",
    },
    {
        "name": "Webhooks",
        "description": "Вебхуки: статусы сообщений приходят в CRM подписанными POST-запросами",
    },
    {"name": "Bounces", "description": "Возвраты писем (bounce) от почтовых провайдеров"},
    {"name": "Service", "description": "Состояние сервиса"},
]


def create_app(
    settings: Settings | None = None, *, worker: bool = False, freeze_heap: bool = False
) -> FastAPI:
    """The HTTP API; with ``worker``, also the scheduler and dispatcher in the same process
    (``rassylka serve``), stopped gracefully when the server shuts down. ``freeze_heap``: a
    served process's (see ``_freeze_heap``)."""
    settings = settings or environment_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings.database_url, pool_pre_ping=True)
        app.state.engine = engine
        keyring.engine = engine
        app.state.new_clients = await _new_clients(engine)
        app.state.sessionmaker = create_sessionmaker(engine)
        app.state.event_hub = EventHub(engine)
        app.state.event_hub.start()
        embedded: asyncio.Task[None] | None = None
        bounces: BounceListener | None = None
        if worker and settings.bounce_domain:
            bounces = BounceListener.from_settings(settings, app.state.sessionmaker)
            await bounces.start()
        if worker:
            app.state.worker = Worker.open(engine, settings)
            embedded = asyncio.create_task(run_until_stopped(app.state.worker), name="worker")
        if freeze_heap:
            _freeze_heap()
        try:
            yield
        finally:
            await app.state.event_hub.stop()
            if embedded is not None:
                app.state.worker.stop()
                await embedded
            if bounces is not None:
                await bounces.stop()
            await app.state.new_clients.close()
            keyring.engine = None
            await engine.dispose()

    app = FastAPI(
        title="Rassylka",
        summary="Сервис рассылки сообщений: email и SMS по расписанию со статусами доставки",
        version=__version__,
        openapi_tags=TAGS,
        lifespan=lifespan,
    )
    app.state.settings = settings
    keyring = KeyRing(key.get_secret_value() for key in settings.api_keys)
    app.state.keyring = keyring
    install_handlers(app)
    redaction.install()
    # Outermost last (Starlette's add_middleware): settings → body limit → API key → rate
    # limit → Idempotency-Key → FastCreate → routes. FastCreate is innermost of ours: inside
    # the body limit, with this app's settings, after the key and the rate are checked, and
    # inside the Idempotency-Key's record.
    app.add_middleware(FastCreate)
    # Outside FastCreate, which answers POST /client/create itself (see IdempotencyMiddleware).
    app.add_middleware(IdempotencyMiddleware)
    app.add_middleware(
        RateLimitMiddleware, rate=settings.api_rate_limit, burst=settings.api_rate_burst
    )
    app.add_middleware(AuthMiddleware, keyring=keyring)
    app.add_middleware(
        BodyLimitMiddleware,
        default=settings.max_body_bytes,
        per_path={
            "/client/import": settings.max_import_bytes,
            dashboard_import_path: settings.max_import_bytes,
        },
    )
    app.add_middleware(SettingsMiddleware, settings=settings)
    # Each behind AuthMiddleware; each router holds a project-scoped key to its project
    # (access.scope).
    plain = [Depends(refuse_nul_in_query)]
    for router in (
        project_router,
        client_router,
        template_router,
        mailing_router,
        suppression_router,
        webhook_router,
        event_router,
        bounce_router,
    ):
        app.include_router(router, dependencies=plain)
    # Called by peers (providers), not by the CRM: each checks its own token, not an API key
    # (access.middleware.OPEN_PATHS).
    app.include_router(delivery_router, dependencies=plain)
    # Called by recipients (their link's signed token is the key), not by the CRM.
    app.include_router(unsubscribe_router, dependencies=plain)
    # Behind the API key like the CRM's routes (metrics.router says why); not in the schema.
    app.include_router(metrics_router)

    # The web dashboard (docs/dashboard.md): pages under /ui/, behind the same API keys (a
    # login with a key keeps it in a cookie), over the same services.
    app.include_router(dashboard_router, dependencies=plain)
    app.mount("/ui/static", StaticFiles(packages=[("rassylka.dashboard", "static")]), "static")

    @app.get(
        "/health",
        tags=["Service"],
        summary="Проверка доступности базы данных",
        responses=openapi_error_responses(503),
    )
    async def health(request: Request) -> JSONResponse:
        try:
            async with request.app.state.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception:
            return error_response(503)
        return JSONResponse({"status": 200, "message": "Ok", "data": {"database": "ok"}})

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


async def _new_clients(engine: AsyncEngine) -> NewClients:
    """Where ``POST /client/create`` writes. PostgreSQL with asyncpg: a few writers, each on a
    connection of asyncpg's own, that write the creates waiting in one statement. SQLite: the
    app's engine (one writer anyway)."""
    if engine.dialect.name == "postgresql" and engine.dialect.driver == "asyncpg":
        return await PoolNewClients.open(engine, writers=CLIENT_WRITERS)
    return EngineNewClients(engine)


def create_served_app() -> FastAPI:
    """``rassylka api``: the API of one served process."""
    return create_app(freeze_heap=True)


def create_embedded_app() -> FastAPI:
    """``rassylka serve``: the API with the scheduler and dispatcher in one process."""
    return create_app(worker=True, freeze_heap=True)


def _freeze_heap() -> None:
    """Once the process has started: what it holds by then (the modules, the app, its routes
    and schemas, about 150,000 objects) moves out of the garbage collector's sight. A full
    collection walks every tracked object, and with those it took 100–270 ms, which stalled
    every request in flight (seen as the p99 of ``POST /client/create`` under load); after
    this it walks only what was made since. What is frozen is still freed by its reference
    count; only a cycle among it would stay, and the process keeps it all until it ends
    anyway. Garbage is collected first so that none is frozen."""
    gc.collect()
    gc.freeze()


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema without its 422 responses (validation errors here are 400 envelopes),
    with the API key as a Bearer security scheme on every operation that takes it, the
    ``Idempotency-Key`` header on the operations that take it, the 503 every operation can
    answer, and links from each create to the operations on what it created."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            routes=app.routes,
            tags=app.openapi_tags,
        )
        unavailable = openapi_error_responses(503)[503]
        for route, path in schema.get("paths", {}).items():
            for operation in path.values():
                responses = operation.setdefault("responses", {})
                responses.pop("422", None)
                # Any operation that reads or writes the database answers 503 while it is away
                # (errors.database_unavailable), so each says so.
                responses.setdefault("503", _envelope_response(unavailable))
                if route not in OPEN_PATHS:
                    # /docs gets its "Authorize" button; optional ({}): no key is needed
                    # until one exists (docs/security.md).
                    operation["security"] = [{"APIKey": []}, {}]
        schema.setdefault("components", {})["securitySchemes"] = {
            "APIKey": {
                "type": "http",
                "scheme": "bearer",
                "description": "Ключ API (rassylka apikey create); нужен, когда ключи есть",
            }
        }
        document_idempotency(schema)
        components = schema.get("components", {}).get("schemas", {})
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        _link_creates(schema.get("paths", {}))
        app.openapi_schema = schema
    return app.openapi_schema


def _envelope_response(response: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": response["description"],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}},
    }


def _link_creates(paths: dict[str, Any]) -> None:
    """OpenAPI links from ``POST /X/create``'s answer (``data.id``) to every ``/X/{id}…``
    operation: a client generator (or a stateful fuzzer) learns where the new id goes."""
    for create_path, item in paths.items():
        if not create_path.endswith("/create") or "post" not in item:
            continue
        created = item["post"].get("responses", {}).get("201")
        if created is None:
            continue
        prefix = create_path.removesuffix("create") + "{id}"
        links: dict[str, Any] = {}
        for path, target in paths.items():
            if path != prefix and not path.startswith(prefix + "/"):
                continue
            for operation in target.values():
                operation_id = operation.get("operationId")
                if operation_id is None:
                    continue
                # A link's name follows the rule of component names: the operation's id does.
                links[operation_id] = {
                    "operationId": operation_id,
                    "parameters": {"id": "$response.body#/data/id"},
                }
        if links:
            created["links"] = links
