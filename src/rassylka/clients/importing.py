"""Reading an import (JSON rows or a CSV file) and checking it row by row.

Pure and synchronous: the router runs it in a worker thread so a 100,000-row file does not
stall the event loop. A bad row is reported (row, field, message) and never sinks the others.
A CSV file is checked as it is read, and a checked row is kept as one tuple, so an import
holds little more than its checked rows.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from rassylka.clients.repository import UPSERT_COLUMNS
from rassylka.clients.schemas import (
    ClientFields,
    ImportFields,
    ImportResult,
    ImportRowError,
    contact_problems,
    phone_and_zone,
)
from rassylka.db import utcnow
from rassylka.errors import FieldError, ValidationFailed, details_from_pydantic
from rassylka.scheduling import phone_zone

CSV_COLUMNS = frozenset(ClientFields.model_fields) - {"attributes"}
ATTRIBUTE_PREFIX = "attributes."
TAG_SEPARATORS = re.compile(r"[;,|]")
MAX_REPORTED_ERRORS = 1000
ROW_COLUMNS = (*UPSERT_COLUMNS, "guid")
"""The order of a checked row's values, the order ``repository.copy_upsert`` takes them in;
``tags`` and ``attributes`` are JSON text."""
ROW_GUID = ROW_COLUMNS.index("guid")
ROW_OPTED_OUT = ROW_COLUMNS.index("opted_out")
ROW_EMAIL_OPTED_OUT = ROW_COLUMNS.index("email_opted_out")
ROW_SMS_OPTED_OUT = ROW_COLUMNS.index("sms_opted_out")
_to_json = json.JSONEncoder(ensure_ascii=False).encode
"""``json.dumps(value, ensure_ascii=False)`` without making an encoder per call."""


class TooManyRows(Exception):
    """The file holds more rows than one import may."""


@dataclass(frozen=True, slots=True)
class ValidRow:
    row: int
    values: tuple[Any, ...]
    """The client's fields in ``ROW_COLUMNS`` order, ``phone_timezone`` (the zone its phone
    names) among them."""
    given: frozenset[str]
    """The fields the row itself carries: only these change when the client exists."""


def row_fields(values: tuple[Any, ...]) -> dict[str, Any]:
    """A checked row's values by column, ``tags`` and ``attributes`` as lists and dicts."""
    fields = dict(zip(ROW_COLUMNS, values, strict=True))
    fields["tags"] = json.loads(fields["tags"])
    fields["attributes"] = json.loads(fields["attributes"])
    return fields


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


def check_rows(rows: Iterable[tuple[int, Any]], *, limit: int | None = None) -> CheckedRows:
    """Check ``rows`` (row number, raw row) in order, keeping no raw row once checked.

    With ``limit``: past that many rows nothing more is checked, but ``rows`` is read to its
    end (a later row may make the file unreadable: that error comes first), then
    ``TooManyRows`` is raised.
    """
    checked = CheckedRows()
    now = utcnow()  # the moment of a consent given without one
    shared: dict[Any, Any] = {}  # one copy of each set of fields, tag list, zone name
    count = 0
    for number, raw in rows:
        count += 1
        if limit is not None and count > limit:
            continue
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
        del raw
        if problems := contact_problems(email=client.email, phone=phone):
            checked.reject(number, problems)
            continue
        given = frozenset(client.model_fields_set)
        tags = _to_json(client.tags)
        email_consent_at, sms_consent_at = client.email_consent_at, client.sms_consent_at
        if email_consent_at is None and "email_consent" in given:
            email_consent_at = now
        if sms_consent_at is None and "sms_consent" in given:
            sms_consent_at = now
        values = (
            client.first_name,
            client.last_name,
            client.middle_name,
            client.email,
            phone,
            shared.setdefault(client.timezone, client.timezone),
            shared.setdefault(tags, tags),
            _to_json(client.attributes),
            client.opted_out,
            client.email_opted_out,
            client.sms_opted_out,
            client.email_consent,
            email_consent_at,
            client.email_consent_source,
            client.sms_consent,
            sms_consent_at,
            client.sms_consent_source,
            zone,
            client.guid,
        )
        checked.valid.append(ValidRow(number, values, shared.setdefault(given, given)))
    if limit is not None and count > limit:
        raise TooManyRows
    return checked


def draining(rows: list[tuple[int, Any]]) -> Iterator[tuple[int, Any]]:
    """The items of ``rows`` in order, **emptying the list** as it goes (each raw row is freed
    once checked, so a 100,000-row JSON import never holds its raw and checked rows at once)."""
    rows.reverse()
    while rows:
        yield rows.pop()


def _encoding(data: bytes) -> str:
    """UTF-8 (with or without BOM), else Windows-1251, which Russian Excel still writes.
    (Each check decodes the whole file; the text is not kept: the rows are decoded again as
    they are read.)"""
    try:
        data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    else:
        return "utf-8-sig"
    try:
        data.decode("cp1251")
    except UnicodeDecodeError:
        raise ValidationFailed.on("file", "Файл должен быть в кодировке UTF-8") from None
    return "cp1251"


def read_csv(data: bytes) -> Iterator[tuple[int, dict[str, Any] | FieldError]]:
    """Rows of a CSV file, each with its row number as a spreadsheet shows it (header = 1),
    read (and decoded) as they are asked for; a file that cannot be read raises
    ``ValidationFailed`` when the first row is asked for, or at the row where it fails.

    Columns: the client fields (``tags`` separated by ``;``, ``,`` or ``|``) and
    ``attributes.<name>`` for each attribute. The delimiter (``,``, ``;`` or tab) is guessed
    from the header line. An empty cell means "not given"; a column with an empty header (as a
    trailing delimiter makes) is skipped. A row with the wrong number of
    cells comes back as the error that rejects it.
    """
    encoding = _encoding(data)
    end = data.find(b"\n")  # neither encoding has the byte 0x0A in a character but the newline
    header_line = data[: end if end >= 0 else len(data)].decode(encoding)
    delimiter = max(",;\t", key=header_line.count)
    text = io.TextIOWrapper(io.BytesIO(data), encoding=encoding, newline="")
    reader = csv.reader(text, delimiter=delimiter)
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
            yield row, FieldError(field="row", message=message)
            continue
        yield row, _record(columns, cells)


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
