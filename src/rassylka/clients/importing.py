"""Reading an import (JSON rows or a CSV file) and checking it row by row.

Pure and synchronous: the router runs it in a worker thread so a 100,000-row file does not
stall the event loop. A bad row is reported (row, field, message) and never sinks the others.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from rassylka.clients.schemas import (
    ClientFields,
    ImportFields,
    ImportResult,
    ImportRowError,
    contact_problems,
    phone_and_zone,
)
from rassylka.errors import FieldError, ValidationFailed, details_from_pydantic
from rassylka.scheduling import phone_zone

CSV_COLUMNS = frozenset(ClientFields.model_fields) - {"attributes"}
ATTRIBUTE_PREFIX = "attributes."
TAG_SEPARATORS = re.compile(r"[;,|]")
MAX_REPORTED_ERRORS = 1000


@dataclass(frozen=True)
class ValidRow:
    row: int
    fields: dict[str, Any]
    """The client's fields, ``phone_timezone`` (the zone its phone names) among them."""
    given: frozenset[str]
    """The fields the row itself carries: only these change when the client exists."""


@dataclass
class CheckedRows:
    valid: list[ValidRow] = field(default_factory=list)
    errors: list[ImportRowError] = field(default_factory=list)
    rejected: int = 0
    errors_dropped: bool = False

    def reject(self, row: int, details: Iterable[FieldError]) -> None:
        self.rejected += 1
        for detail in details:
            if len(self.errors) < MAX_REPORTED_ERRORS:
                self.errors.append(
                    ImportRowError(row=row, field=detail.field, message=detail.message)
                )
            else:
                self.errors_dropped = True

    def result(self, *, created: int, updated: int) -> ImportResult:
        return ImportResult(
            created=created,
            updated=updated,
            rejected=self.rejected,
            errors=self.errors,
            errors_truncated=self.errors_dropped,
        )


def check_rows(rows: list[tuple[int, Any]]) -> CheckedRows:
    """Check ``rows`` in order, **emptying the list** as it goes: each raw row is freed once
    checked, so a 100,000-row import never holds its raw and its checked rows at once."""
    checked = CheckedRows()
    givens: dict[frozenset[str], frozenset[str]] = {}  # one copy of each set of fields
    rows.reverse()
    while rows:
        number, raw = rows.pop()
        if isinstance(raw, FieldError):  # the reader already found this row unreadable
            checked.reject(number, [raw])
            continue
        if not isinstance(raw, Mapping):
            checked.reject(number, [FieldError(field="row", message="Ожидается объект JSON")])
            continue
        try:
            client: ClientFields = ImportFields.model_validate(raw)
            phone, zone = (None, None) if client.phone is None else phone_and_zone(client.phone)
        except (ValidationError, ValueError):
            # A bad row: ClientFields says what is wrong, as for /client/create.
            try:
                client = ClientFields.model_validate(raw)
            except ValidationError as error:
                checked.reject(number, details_from_pydantic(error.errors()))
                continue
            phone, zone = client.phone, phone_zone(client.phone)
        if problems := contact_problems(email=client.email, phone=phone):
            checked.reject(number, problems)
            continue
        given = frozenset(client.model_fields_set)
        given = givens.setdefault(given, given)
        fields = client.model_dump()
        fields["phone"], fields["phone_timezone"] = phone, zone
        checked.valid.append(ValidRow(row=number, fields=fields, given=given))
    return checked


def decode(data: bytes) -> str:
    """UTF-8 (with or without BOM), else Windows-1251, which Russian Excel still writes."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1251")
    except UnicodeDecodeError:
        raise ValidationFailed.on("file", "Файл должен быть в кодировке UTF-8") from None


def read_csv(data: bytes) -> list[tuple[int, dict[str, Any] | FieldError]]:
    """Rows of a CSV file, each with its row number as a spreadsheet shows it (header = 1).

    Columns: the client fields (``tags`` separated by ``;``, ``,`` or ``|``) and
    ``attributes.<name>`` for each attribute. The delimiter (``,``, ``;`` or tab) is guessed
    from the header line. An empty cell means "not given"; a column with an empty header (as a
    trailing delimiter makes) is skipped. A row with the wrong number of
    cells comes back as the error that rejects it.
    """
    text = decode(data)
    header_line = text.split("\n", 1)[0]
    delimiter = max(",;\t", key=header_line.count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise ValidationFailed.on("file", "Файл пуст: нужна строка заголовка") from None
    except csv.Error as error:
        raise ValidationFailed.on("file", f"Не удалось прочитать CSV: {error}") from None
    columns = [_column(name) for name in header]
    problems = [
        FieldError(field=name, message="Неизвестный столбец")
        for name in columns
        if name and name not in CSV_COLUMNS and not name.startswith(ATTRIBUTE_PREFIX)
    ]
    if ATTRIBUTE_PREFIX in columns:
        problems.append(FieldError(field=ATTRIBUTE_PREFIX, message="Нет имени атрибута"))
    if "guid" not in columns:
        problems.append(FieldError(field="guid", message="Нет обязательного столбца guid"))
    if duplicated := {name for name in columns if name and columns.count(name) > 1}:
        problems += [FieldError(field=name, message="Столбец повторяется") for name in duplicated]
    if problems:
        raise ValidationFailed(problems)
    rows: list[tuple[int, dict[str, Any] | FieldError]] = []
    row = 1  # the header; a spreadsheet numbers records, whatever line breaks a cell holds
    while True:
        row += 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            raise ValidationFailed.on("file", f"Строка {row}: {error}") from None
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(columns):
            message = f"Ожидается ячеек: {len(columns)}, в строке: {len(cells)}"
            rows.append((row, FieldError(field="row", message=message)))
            continue
        rows.append((row, _record(columns, cells)))
    return rows


def _column(name: str) -> str:
    name = name.strip()
    if name.lower().startswith(ATTRIBUTE_PREFIX):
        return ATTRIBUTE_PREFIX + name[len(ATTRIBUTE_PREFIX) :]
    return name.lower()


def _record(columns: list[str], cells: list[str]) -> dict[str, Any]:
    record: dict[str, Any] = {}
    attributes: dict[str, str] = {}
    for name, cell in zip(columns, cells, strict=True):
        value = cell.strip()
        if not value or not name:  # a column without a header (a trailing delimiter) is skipped
            continue
        if name.startswith(ATTRIBUTE_PREFIX):
            attributes[name[len(ATTRIBUTE_PREFIX) :]] = value
        elif name == "tags":
            record["tags"] = [tag for tag in TAG_SEPARATORS.split(value) if tag.strip()]
        else:
            record[name] = value
    if attributes:
        record["attributes"] = attributes
    return record
