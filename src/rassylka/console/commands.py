"""The console commands as typer sees them: ``client import``, ``mailing list|watch``,
``send-test`` and ``demo``; ``register(app)`` adds them to the ``rassylka`` command.

Every command runs its coroutine through ``run``, which turns a ``CliFailure`` into one red
line and its exit code, and Ctrl-C into a quiet exit 0; ``run_guarded`` does the same for
whatever else any command (old or new) lets through.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from rassylka.console import demo as demo_module
from rassylka.console import importing, mailings, send_test, watching
from rassylka.console.api import (
    DEFAULT_URL,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    Api,
    CliFailure,
)

T = TypeVar("T")
out = Console()
err = Console(stderr=True)

client_app = typer.Typer(
    help="Клиенты через API работающего сервиса.\n\n"
    "Пример: rassylka client import clients.csv --project 010",
    no_args_is_help=True,
)
mailing_app = typer.Typer(
    help="Рассылки через API работающего сервиса.\n\nПример: rassylka mailing list",
    no_args_is_help=True,
)

Url = Annotated[
    str,
    typer.Option("--url", envvar="RASSYLKA_URL", help="Адрес API Rassylka", show_default=True),
]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="RASSYLKA_API_KEY",
        help="Ключ API (отправляется как Bearer); без него — API без ключей",
        show_default=False,
    ),
]


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)``; a ``CliFailure`` becomes its line and exit code."""
    try:
        return asyncio.run(main)
    except CliFailure as failure:
        # The API's own messages mostly begin with "Ошибка …" already.
        prefix = "" if failure.message.startswith("Ошибка") else "Ошибка: "
        err.print(f"[red]{prefix}{escape(failure.message)}[/]", highlight=False, soft_wrap=True)
        raise typer.Exit(failure.code) from None
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_OK) from None


@client_app.command("import")
def client_import(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True, dir_okay=False, readable=True, help="CSV: столбцы как у client/create"
        ),
    ],
    project: Annotated[str, typer.Option("--project", help="Код (или id) проекта")],
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    batch: Annotated[
        int, typer.Option(min=1, max=10_000, help="Строк в одном запросе к API")
    ] = importing.BATCH_ROWS,
) -> None:
    """Загрузить клиентов из CSV-файла: создаёт новых и обновляет известных по guid.

    Файл отправляется частями, с индикатором; в конце — сколько создано и обновлено и
    таблица отклонённых строк (номер строки в файле, поле, ошибка). Код выхода 1, если
    хоть одна строка отклонена.

    Пример: rassylka client import clients.csv --project 010
    """

    async def main() -> int:
        async with Api(url, api_key) as api:
            summary = await importing.import_file(
                api, file, project=project, console=err, batch_rows=batch
            )
        return importing.report(summary, out=out)

    raise typer.Exit(run(main()))


@mailing_app.command("list")
def mailing_list(
    project: Annotated[
        str | None, typer.Option("--project", help="Только рассылки проекта (код или id)")
    ] = None,
    status: Annotated[
        str | None,
        typer.Option(
            "--status",
            help="Только в статусе: 0 draft, 1 active, 2 paused, 3 done, 4 cancelled",
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Сколько рассылок показать")] = 100,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Таблица рассылок: id, проект, название, статус, каналы, запуски.

    Пример: rassylka mailing list --project 010 --status active
    """

    async def main() -> None:
        wanted = mailings.parse_status(status)
        async with Api(url, api_key) as api:
            found, total = await mailings.fetch(api, project=project, status=wanted, limit=limit)
        out.print(mailings.table(found, total))

    run(main())


@mailing_app.command("watch")
def mailing_watch(
    mailing_id: Annotated[int, typer.Argument(metavar="ID", min=1, help="id рассылки")],
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Следить за рассылкой вживую: сообщения по каналам и статусам, темп, последние события.

    Выходит, когда рассылка завершена или отменена, или по Ctrl-C.

    Пример: rassylka mailing watch 12 --url http://127.0.0.1:8000
    """

    async def main() -> None:
        async with Api(url, api_key) as api:
            tally = await watching.watch(api, mailing_id, console=out)
        state = watching.MAILING_STATUSES.get(tally.status, str(tally.status))
        err.print(f"Рассылка {mailing_id}: {state}")

    run(main())


def send_test_command(
    email: Annotated[str | None, typer.Option("--email", help="Адрес для тестового письма")] = None,
    phone: Annotated[str | None, typer.Option("--phone", help="Номер для тестового SMS")] = None,
) -> None:
    """Отправить одно тестовое письмо и/или SMS через транспорты из настроек этого процесса.

    Транспорты — те же, что у serve и worker: RASSYLKA_SMTP_*, RASSYLKA_SMPP_* (или
    RASSYLKA_SMS_HTTP_URL), иначе папка outbox. Печатает ответ сервера или его ошибку;
    код выхода 1, если сервер отказал, 3 — если он недоступен. API не нужен.

    Пример: RASSYLKA_SMTP_HOST=smtp.example.ru rassylka send-test --email me@example.ru
    """

    async def main() -> int:
        attempts = await send_test.send_test(send_test.settings(), email=email, phone=phone)
        return send_test.report(attempts, out=out)

    raise typer.Exit(run(main()))


def demo_command(
    once: Annotated[bool, typer.Option("--once", help="Выйти, когда рассылка доставлена")] = False,
    port: Annotated[int, typer.Option(min=0, max=65535, help="Порт API (0 — любой свободный)")] = 0,
) -> None:
    """Показать Rassylka в деле: локальные SMTP и SMSC, сервис на временной базе, пример
    проекта, клиентов, шаблона и рассылки по email и SMS — и как она доставляется.

    Ничего не нужно настраивать; всё пишется во временную папку. Работает до Ctrl-C.

    Пример: rassylka demo
    """
    # Made and removed out here: Ctrl-C ends the event loop before its own cleanup is done.
    with tempfile.TemporaryDirectory(prefix="rassylka-demo-", ignore_cleanup_errors=True) as path:
        run(demo_module.run_demo(Path(path), out=out, port=port, once=once))


def run_guarded(app: typer.Typer) -> None:
    """``app()``, where an error no command caught (the database unreachable, a bad
    ``RASSYLKA_*`` setting, a bug) is one line and an exit code instead of a traceback;
    ``RASSYLKA_TRACEBACK=1`` shows the traceback."""
    try:
        app()
    except Exception as error:
        if os.environ.get("RASSYLKA_TRACEBACK"):
            raise
        code, line = describe_unexpected(error)
        err.print(f"[red]{escape(line)}[/]", highlight=False, soft_wrap=True)
        sys.exit(code)


def describe_unexpected(error: BaseException) -> tuple[int, str]:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ValidationError):
            problems = "; ".join(
                f"{'.'.join(map(str, item['loc']))}: {item['msg']}" for item in seen.errors()
            )
            return EXIT_REFUSED, f"Ошибка: неверные настройки: {problems}"
        if isinstance(seen, OSError):
            return EXIT_UNREACHABLE, f"Ошибка: не удалось подключиться: {seen}"
        seen = seen.__cause__ or seen.__context__
    hint = " (подробности: RASSYLKA_TRACEBACK=1)"
    return EXIT_FAILED, f"Ошибка: {type(error).__name__}: {error}{hint}"


def register(app: typer.Typer) -> None:
    app.add_typer(client_app, name="client")
    app.add_typer(mailing_app, name="mailing")
    app.command("send-test")(send_test_command)
    app.command("demo")(demo_command)
