"""Reading a CSV import as a stream: the same rows as reading the decoded text at once, and
the same errors in the same order (a broken file before too many rows)."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rassylka.clients import importing, repository
from rassylka.errors import FieldError, ValidationFailed


def read_at_once(data: bytes) -> list[tuple[int, Any]]:
    """The rows as the import read them before it streamed: the whole text decoded first."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("cp1251")
    delimiter = max(",;\t", key=text.split("\n", 1)[0].count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    columns = [importing._column(name) for name in next(reader)]
    rows: list[tuple[int, Any]] = []
    for row, cells in enumerate(reader, start=2):
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(columns):
            message = f"Ожидается ячеек: {len(columns)}, в строке: {len(cells)}"
            rows.append((row, FieldError(field="row", message=message)))
            continue
        rows.append((row, importing._record(columns, cells)))
    return rows


CELLS = st.sampled_from(
    ["c-1", "Иван", "", " ", '"a,b"', '"две\nстроки"', '"\r\n"', "x;y", "a|b", "ё", "\t", '""']
)
ENDS = st.sampled_from(["\n", "\r\n", "\r"])


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.tuples(st.lists(CELLS, min_size=1, max_size=5), ENDS), max_size=8),
    st.sampled_from([",", ";", "\t"]),
    st.sampled_from(["utf-8", "utf-8-sig", "cp1251"]),
)
def test_streamed_rows_are_the_rows_of_the_whole_text(
    lines: list[tuple[list[str], str]], delimiter: str, encoding: str
) -> None:
    header = delimiter.join(["guid", "first_name", "attributes.note"]) + "\n"
    text = header + "".join(delimiter.join(cells) + end for cells, end in lines)
    data = text.encode(encoding)
    assert list(importing.read_csv(data)) == read_at_once(data)


def test_a_broken_row_after_the_limit_is_the_error() -> None:
    """As when the whole file was read before counting: an unreadable file is said first."""
    rows = "".join(f"c-{i},Иван,Иванов,+7916000000{i}\n" for i in range(5))
    data = ("guid,first_name,last_name,phone\n" + rows + '"' + "x" * 200_000 + '"\n').encode()
    with pytest.raises(ValidationFailed) as raised:
        importing.check_rows(importing.read_csv(data), limit=2)
    assert [detail.field for detail in raised.value.details] == ["file"]
    with pytest.raises(importing.TooManyRows):
        importing.check_rows(importing.read_csv(data[:-200_004]), limit=2)
    assert len(importing.check_rows(importing.read_csv(data[:-200_004]), limit=5).valid) == 5


def test_a_checked_row_is_in_the_order_copy_writes() -> None:
    assert (*importing.ROW_COLUMNS, "batch") == repository.COPY_COLUMNS
