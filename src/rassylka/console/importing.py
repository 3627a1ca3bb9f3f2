"""``rassylka client import``: a CSV file sent to ``POST /client/import`` in batches, with a
progress bar and, at the end, the rejected rows numbered as in the file.

The file is read twice, as a stream, never whole: once to learn its encoding and how many rows
it has (the bar's total), once to send it. Each batch is a CSV of its own (the file's header,
then up to ``BATCH_ROWS`` of its records, rewritten with commas), so the API checks every row
exactly as it checks a whole file; a batch's row ``n`` is the file's row ``numbers[n - 2]``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from rassylka.console.api import EXIT_FAILED, EXIT_OK, EXIT_REFUSED, Api, CliFailure

BATCH_ROWS = 1000
SHOWN_ERRORS = 200
ENCODINGS = ("utf-8-sig", "cp1251")  # what the API reads: UTF-8, or what Russian Excel writes
# csv's limit of one cell (128 KiB) is left as it is: it is the API's too (a file with a longer
# cell is refused whole there), and it is global to the process, which may be serving the API.


@dataclass
class Batch:
    numbers: list[int]
    """The file's row number (header = 1) of each record in ``body``, in order."""
    body: bytes


@dataclass
class Rejected:
    row: int
    field: str
    message: str


@dataclass
class Summary:
    created: int = 0
    updated: int = 0
    rejected: int = 0
    errors: list[Rejected] = field(default_factory=list)
    truncated: bool = False


@dataclass(frozen=True)
class CsvShape:
    encoding: str
    delimiter: str
    records: int
    """Records after the header (blank ones included: the API numbers them too)."""


def inspect_file(path: Path) -> CsvShape:
    """The file's encoding, delimiter and number of records, read as a stream."""
    for encoding in ENCODINGS:
        try:
            with path.open(encoding=encoding, newline="") as text:
                header_line = text.readline()
                delimiter = max(",;\t", key=header_line.count)  # the API's guess, the same way
                text.seek(0)
                reader = csv.reader(text, delimiter=delimiter)
                if next(reader, None) is None:
                    raise CliFailure(f"Файл {path} пуст: нужна строка заголовка", EXIT_REFUSED)
                records = sum(1 for _ in reader)
        except UnicodeDecodeError:
            continue
        except csv.Error as error:
            raise CliFailure(f"Не удалось прочитать CSV {path}: {error}", EXIT_REFUSED) from None
        return CsvShape(encoding, delimiter, records)
    raise CliFailure(f"Файл {path} должен быть в кодировке UTF-8", EXIT_REFUSED)


def batches(path: Path, shape: CsvShape, size: int = BATCH_ROWS) -> Iterator[Batch]:
    with path.open(encoding=shape.encoding, newline="") as text:
        reader = csv.reader(text, delimiter=shape.delimiter)
        header = next(reader)
        numbers: list[int] = []
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        for number, record in enumerate(reader, start=2):
            numbers.append(number)
            writer.writerow(record)
            if len(numbers) == size:
                yield Batch(numbers, buffer.getvalue().encode())
                numbers = []
                buffer = io.StringIO()
                writer = csv.writer(buffer, lineterminator="\n")
                writer.writerow(header)
        if numbers:
            yield Batch(numbers, buffer.getvalue().encode())


async def import_file(
    api: Api, path: Path, *, project: str, console: Console, batch_rows: int = BATCH_ROWS
) -> Summary:
    shape = inspect_file(path)
    summary = Summary()
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(f"Импорт {path.name}", total=shape.records)
        for batch in batches(path, shape, batch_rows):
            try:
                result = await api.post(
                    "/client/import",
                    params={"project": project},
                    content=batch.body,
                    headers={"Content-Type": "text/csv; charset=utf-8"},
                )
            except CliFailure as failure:
                if batch.numbers[0] == 2:  # nothing saved yet: the message alone says it
                    raise
                raise CliFailure(
                    f"{failure.message} (строки файла до {batch.numbers[0]} уже сохранены)",
                    failure.code,
                ) from None
            summary.created += int(result["created"])
            summary.updated += int(result["updated"])
            summary.rejected += int(result["rejected"])
            summary.truncated |= bool(result.get("errors_truncated"))
            for error in result["errors"]:
                row = int(error["row"])
                # The batch's header is its row 1; a number outside it is the API's own word.
                inside = 2 <= row < len(batch.numbers) + 2
                summary.errors.append(
                    Rejected(
                        batch.numbers[row - 2] if inside else row,
                        str(error["field"]),
                        str(error["message"]),
                    )
                )
            progress.advance(task, len(batch.numbers))
    return summary


def report(summary: Summary, *, out: Console) -> int:
    """Print the summary; the exit code: 1 if any row was rejected."""
    out.print(
        f"Создано: {summary.created}, обновлено: {summary.updated}, отклонено: {summary.rejected}"
    )
    if not summary.errors:
        return EXIT_OK if not summary.rejected else EXIT_FAILED
    table = Table(title="Отклонённые строки", title_justify="left")
    table.add_column("Строка", justify="right")
    table.add_column("Поле")
    table.add_column("Ошибка")
    for error in summary.errors[:SHOWN_ERRORS]:
        table.add_row(str(error.row), escape(error.field), escape(error.message))
    out.print(table)
    hidden = len(summary.errors) - SHOWN_ERRORS
    if hidden > 0 or summary.truncated:
        out.print("Показаны не все ошибки: исправьте эти строки и загрузите файл снова.")
    return EXIT_FAILED
