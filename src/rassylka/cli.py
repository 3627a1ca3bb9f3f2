"""The ``rassylka`` command: serve, api, worker, bounces, db upgrade/downgrade, apikey."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from collections.abc import Coroutine
from typing import Annotated, Any

import typer
import uvicorn
from rich.console import Console

from rassylka import migrate
from rassylka.access import repository as key_repository
from rassylka.access import service as key_service
from rassylka.bounces.listener import run_listener
from rassylka.channels.registry import describe, open_channels
from rassylka.config import Settings, environment_settings, get_settings
from rassylka.console.commands import register as register_console_commands
from rassylka.console.commands import run_guarded
from rassylka.db import create_engine, create_sessionmaker
from rassylka.engine.worker import run_worker
from rassylka.errors import AppError
from rassylka.serving import HttpProtocol

app = typer.Typer(
    help="Rassylka: рассылка email и SMS по расписанию.\n\nПример: rassylka demo",
    no_args_is_help=True,
)
db_app = typer.Typer(help="Схема базы данных.\n\nПример: rassylka db upgrade", no_args_is_help=True)
app.add_typer(db_app, name="db")
apikey_app = typer.Typer(
    help="Ключи API (см. docs/security.md).\n\nПример: rassylka apikey create --project 010",
    no_args_is_help=True,
)
app.add_typer(apikey_app, name="apikey")
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


InsecureNoAuth = Annotated[
    bool,
    typer.Option(
        "--insecure-no-auth",
        help="Разрешить API без ключей на адресе, доступном не только с этой машины",
    ),
]


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Адрес для входящих соединений")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Порт HTTP API")] = 8000,
    insecure_no_auth: InsecureNoAuth = False,
) -> None:
    """Всё в одном процессе: HTTP API, планировщик и отправка (схема базы обновляется).

    Пример: rassylka serve --port 8000
    """
    _default_public_url(host, port)
    settings = get_settings()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(_migrate("head"))
    _refuse_if_open(settings, host, insecure=insecure_no_auth)
    console.print(f"Rassylka: http://{host}:{port}  (документация API: http://{host}:{port}/docs)")
    uvicorn.run(
        "rassylka.app:create_embedded_app",
        factory=True,
        host=host,
        port=port,
        log_level="info",
        http=HttpProtocol,
    )


def _default_public_url(host: str, port: int) -> None:
    """Without ``RASSYLKA_PUBLIC_URL``, unsubscribe links lead to this process as this machine
    reaches it (the embedded default); said aloud, since recipients elsewhere cannot."""
    if os.environ.get("RASSYLKA_PUBLIC_URL", "").strip():
        return
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    os.environ["RASSYLKA_PUBLIC_URL"] = url = f"http://{shown}:{port}"
    environment_settings.cache_clear()
    console.print(
        f"[yellow]Внимание:[/] RASSYLKA_PUBLIC_URL не задан — ссылки отписки в письмах ведут на "
        f"{url}. Задайте адрес, по которому API доступен получателям (https://…)."
    )


WORKER_HEALTHCHECK_TIMEOUT = 60


@app.command()
def api(
    host: Annotated[str, typer.Option(help="Адрес для входящих соединений")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Порт HTTP API")] = 8000,
    workers: Annotated[
        int, typer.Option(min=1, help="Процессов API на одном порту (по ядру на каждый)")
    ] = 1,
    insecure_no_auth: InsecureNoAuth = False,
) -> None:
    """Только HTTP API, без отправки: рядом запускают `rassylka worker` (сколько угодно, на
    одной PostgreSQL). Схему базы не меняет — для этого `rassylka db upgrade`.

    Пример: rassylka api --host 0.0.0.0 --workers 4
    """
    settings = get_settings()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    _refuse_if_open(settings, host, insecure=insecure_no_auth)
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


def _loopback(host: str) -> bool:
    """Whether only this machine can reach ``host``: 127.0.0.0/8, ::1, localhost."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def _refuse_if_open(settings: Settings, host: str, *, insecure: bool) -> None:
    """Without any API key, the manual's "no authorisation" holds only on a loopback address;
    elsewhere the server does not start unless told so (``--insecure-no-auth``)."""
    if _loopback(host) or settings.api_keys or asyncio.run(_stored_keys(settings)):
        return
    if insecure:
        console.print(f"[yellow]Внимание:[/] API открыт без ключей на {host} (--insecure-no-auth).")
        return
    console.print(
        f"[red]Отказ:[/] API на {host} доступен не только с этой машины, а ключей API нет.\n"
        "Создайте ключ: rassylka apikey create (или задайте RASSYLKA_API_KEYS), "
        "либо слушайте 127.0.0.1, либо запустите с --insecure-no-auth."
    )
    raise typer.Exit(2)


async def _stored_keys(settings: Settings) -> bool:
    """Whether the database holds any key, even revoked: with one, authorisation is on (False
    if it has no api_key table yet)."""
    engine = create_engine(settings.database_url)
    try:
        async with engine.connect() as connection:
            return bool(await key_repository.stored(connection))
    except Exception as error:
        logging.getLogger(__name__).warning("API keys not read: %s", error)
        return False
    finally:
        await engine.dispose()


@app.command()
def worker() -> None:
    """Только планировщик и отправка, без HTTP API; их может быть сколько угодно на одной
    PostgreSQL. Останавливается по SIGTERM, дождавшись начатых отправок.

    Пример: RASSYLKA_DATABASE_URL=postgresql+asyncpg://rassylka@db/rassylka rassylka worker
    """
    settings = get_settings()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    console.print(f"Rassylka worker: {describe(open_channels(settings))}")
    _run_fast(run_worker(settings))


@app.command()
def bounces() -> None:
    """Только приём возвратов писем (DSN) по SMTP на RASSYLKA_BOUNCE_HOST:RASSYLKA_BOUNCE_PORT
    для адресов @RASSYLKA_BOUNCE_DOMAIN. Останавливается по SIGTERM.

    Пример: RASSYLKA_BOUNCE_DOMAIN=bounces.example.ru rassylka bounces
    """
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
    """Обновить схему до ревизии (по умолчанию — до последней).

    Пример: rassylka db upgrade
    """
    asyncio.run(_migrate(revision))
    console.print(f"Схема обновлена до {revision}")


@db_app.command("downgrade", context_settings={"ignore_unknown_options": True})
def db_downgrade(revision: Annotated[str, typer.Argument(help="Например -1 или base")]) -> None:
    """Вернуть схему к ревизии.

    Пример: rassylka db downgrade -1
    """
    asyncio.run(_migrate(revision, down=True))
    console.print(f"Схема возвращена к {revision}")


async def _create_key(project: str | None, name: str | None) -> tuple[int, str]:
    engine = create_engine(get_settings().database_url)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            key, secret = await key_service.create(session, project_code=project, name=name)
            return key.id, secret
    finally:
        await engine.dispose()


async def _list_keys() -> list[key_service.KeyListed]:
    engine = create_engine(get_settings().database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            return list(await key_service.listed(session))
    finally:
        await engine.dispose()


async def _revoke_key(key_id: int) -> None:
    engine = create_engine(get_settings().database_url)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            await key_service.revoke(session, key_id=key_id)
    finally:
        await engine.dispose()


def _refused(error: AppError) -> typer.Exit:
    for detail in error.details:
        console.print(f"[red]Ошибка:[/] {detail.message}")
    if not error.details:
        console.print(f"[red]Ошибка:[/] {error.message}")
    return typer.Exit(2)


@apikey_app.command("create")
def apikey_create(
    project: Annotated[
        str | None, typer.Option(help="Код проекта: ключ видит только его (без — все проекты)")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Для кого ключ (видно в списке)")] = None,
) -> None:
    """Создать ключ API. Секрет печатается один раз: хранится только его хеш.

    Пример: rassylka apikey create --project 010 --name crm
    """
    try:
        key_id, secret = asyncio.run(_create_key(project, name))
    except AppError as error:
        raise _refused(error) from None
    scope = f"проект {project}" if project else "все проекты"
    console.print(f"Ключ {key_id} создан ({scope}). Сохраните его, больше он не будет показан:")
    typer.echo(secret)  # alone on stdout, for scripts: KEY=$(rassylka apikey create)


@apikey_app.command("list")
def apikey_list() -> None:
    """Ключи API: id, начало ключа, проект, имя, когда создан и отозван (секретов нет).

    Пример: rassylka apikey list
    """
    keys = asyncio.run(_list_keys())
    typer.echo("id\tprefix\tproject\tname\tcreated\trevoked")
    for key in keys:
        typer.echo(
            "\t".join(
                [
                    str(key.id),
                    key.prefix + "…",
                    key.project or "*",
                    key.name or "",
                    key.created_at.isoformat(timespec="seconds"),
                    key.revoked_at.isoformat(timespec="seconds") if key.revoked_at else "",
                ]
            )
        )


@apikey_app.command("revoke")
def apikey_revoke(key_id: Annotated[int, typer.Argument(metavar="ID", min=1)]) -> None:
    """Отозвать ключ: API перестаёт его принимать в течение нескольких секунд.

    Пример: rassylka apikey revoke 3
    """
    try:
        asyncio.run(_revoke_key(key_id))
    except AppError as error:
        raise _refused(error) from None
    console.print(f"Ключ {key_id} отозван")


register_console_commands(app)  # client, mailing, send-test, demo: rassylka.console


def main() -> None:
    run_guarded(app)
