"""The ``rassylka`` command: serve, worker, bounces, db upgrade/downgrade."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Annotated, Any

import typer
import uvicorn
from rich.console import Console

from rassylka import migrate
from rassylka.bounces.listener import run_listener
from rassylka.channels.registry import describe, open_channels
from rassylka.config import Settings, get_settings
from rassylka.db import create_engine
from rassylka.engine.worker import run_worker
from rassylka.serving import HttpProtocol

app = typer.Typer(help="Rassylka: рассылка email и SMS по расписанию.", no_args_is_help=True)
db_app = typer.Typer(help="Схема базы данных.", no_args_is_help=True)
app.add_typer(db_app, name="db")
console = Console(stderr=True)


async def _migrate(revision: str, *, down: bool = False) -> None:
    engine = create_engine(get_settings().database_url)
    try:
        if down:
            await migrate.downgrade(engine, revision)
        else:
            await migrate.upgrade(engine, revision)
    finally:
        await engine.dispose()


def _run_fast(main: Coroutine[Any, Any, None]) -> None:
    """Run a long-lived loop on uvloop (installed with uvicorn[standard], which ``serve`` and
    ``api`` already run on): its sockets and callbacks cost a fraction of asyncio's."""
    try:
        import uvloop
    except ImportError:  # a platform without it
        asyncio.run(main)
        return
    uvloop.run(main)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Адрес для входящих соединений")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Порт HTTP API")] = 8000,
) -> None:
    """Всё в одном процессе: HTTP API, планировщик и отправка (схема базы обновляется)."""
    settings = get_settings()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(_migrate("head"))
    _warn_if_open(settings, host)
    console.print(f"Rassylka: http://{host}:{port}  (документация API: http://{host}:{port}/docs)")
    uvicorn.run(
        "rassylka.app:create_embedded_app",
        factory=True,
        host=host,
        port=port,
        log_level="info",
        http=HttpProtocol,
    )


WORKER_HEALTHCHECK_TIMEOUT = 60


@app.command()
def api(
    host: Annotated[str, typer.Option(help="Адрес для входящих соединений")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Порт HTTP API")] = 8000,
    workers: Annotated[
        int, typer.Option(min=1, help="Процессов API на одном порту (по ядру на каждый)")
    ] = 1,
) -> None:
    """Только HTTP API, без отправки: рядом запускают `rassylka worker` (сколько угодно, на
    одной PostgreSQL). Схему базы не меняет — для этого `rassylka db upgrade`."""
    settings = get_settings()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    _warn_if_open(settings, host)
    console.print(f"Rassylka API: http://{host}:{port}  (документация: http://{host}:{port}/docs)")
    uvicorn.run(
        "rassylka.app:create_served_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        http=HttpProtocol,  # a response's head and body in one write
        # Each process imports the whole application before it answers uvicorn's health
        # check: seconds on a busy machine, more than uvicorn's default 5 s wait before it
        # kills the process and starts another (which then imports anew, and so on).
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_TIMEOUT,
    )


def _warn_if_open(settings: Settings, host: str) -> None:
    if not settings.api_keys and host not in {"127.0.0.1", "localhost", "::1"}:
        console.print(
            f"[yellow]Внимание:[/] API открыт без ключей на {host}. "
            "Задайте RASSYLKA_API_KEYS, чтобы требовать ключ."
        )


@app.command()
def worker() -> None:
    """Только планировщик и отправка, без HTTP API; их может быть сколько угодно на одной
    PostgreSQL. Останавливается по SIGTERM, дождавшись начатых отправок."""
    settings = get_settings()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    console.print(f"Rassylka worker: {describe(open_channels(settings))}")
    _run_fast(run_worker(settings))


@app.command()
def bounces() -> None:
    """Только приём возвратов писем (DSN) по SMTP на RASSYLKA_BOUNCE_HOST:RASSYLKA_BOUNCE_PORT
    для адресов @RASSYLKA_BOUNCE_DOMAIN. Останавливается по SIGTERM."""
    settings = get_settings()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not settings.bounce_domain:
        console.print("[red]Не задан RASSYLKA_BOUNCE_DOMAIN[/]: возвраты принимать не для кого")
        raise typer.Exit(2)
    console.print(
        f"Rassylka bounces: smtp://{settings.bounce_host}:{settings.bounce_port}"
        f" для bounce+…@{settings.bounce_domain}"
    )
    _run_fast(run_listener(settings))


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Обновить схему до ревизии (по умолчанию — до последней)."""
    asyncio.run(_migrate(revision))
    console.print(f"Схема обновлена до {revision}")


@db_app.command("downgrade", context_settings={"ignore_unknown_options": True})
def db_downgrade(revision: Annotated[str, typer.Argument(help="Например -1 или base")]) -> None:
    """Вернуть схему к ревизии."""
    asyncio.run(_migrate(revision, down=True))
    console.print(f"Схема возвращена к {revision}")


def main() -> None:
    app()
