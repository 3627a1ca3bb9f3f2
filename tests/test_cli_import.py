"""``rassylka client import`` against a live API: batches, a progress bar, and rejected rows
reported with their row numbers in the file."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from cli_console import invoke_async
from helpers import assert_ok, make_project
from rassylka.console.importing import CsvShape, batches, inspect_file

HEADER = "guid;first_name;last_name;email;phone;tags;attributes.город\n"


def write(path: Path, rows: list[str], encoding: str = "utf-8") -> Path:
    path.write_text(HEADER + "".join(f"{row}\n" for row in rows), encoding=encoding)
    return path


async def test_bad_rows_are_reported_with_their_row_in_the_file(
    api: httpx.AsyncClient, tmp_path: Path
) -> None:
    await make_project(api)
    csv = write(
        tmp_path / "clients.csv",
        [
            "c1;Анна;Смирнова;anna@example.ru;;vip,new;Москва",  # row 2
            "c2;Борис;Кузнецов;boris@example.ru;;;",  # row 3
            ";;;;;;",  # row 4: blank, still counted
            "c4;Вера;Попова;not-an-email;;;",  # row 5: rejected, in the second batch
            "c5;Глеб;Соколов;;+79161234567;;Тверь",  # row 6
            "c6;Дина;Орлова;dina@example.ru;;;",  # row 7
        ],
    )
    result = await invoke_async(
        "client", "import", str(csv), "--project", "010", "--url", str(api.base_url),
        "--batch", "2",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "Создано: 4, обновлено: 0, отклонено: 1" in result.stdout
    rejected = re.findall(r"│\s*(\d+)\s*│\s*(\S+)\s*│", result.stdout)
    assert rejected == [("5", "email")], result.stdout
    assert "Импорт clients.csv" in result.stderr
    assert "6/6" in result.stderr
    listed = assert_ok(await api.get("/client/list", params={"project": "010"}), 200)
    assert {row["guid"] for row in listed["items"]} == {"c1", "c2", "c5", "c6"}
    [anna] = [row for row in listed["items"] if row["guid"] == "c1"]
    assert anna["tags"] == ["vip", "new"]
    assert anna["attributes"] == {"город": "Москва"}

    again = await invoke_async(
        "client", "import", str(csv), "--project", "010", "--url", str(api.base_url)
    )
    assert again.exit_code == 1
    assert "Создано: 0, обновлено: 4, отклонено: 1" in again.stdout


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_a_file_the_api_refuses_is_one_line_and_exit_2(
    api: httpx.AsyncClient, tmp_path: Path
) -> None:
    await make_project(api)
    csv = tmp_path / "bad.csv"
    csv.write_text("guid,first_name,colour\nc1,Анна,red\n", encoding="utf-8")
    result = await invoke_async(
        "client", "import", str(csv), "--project", "010", "--url", str(api.base_url)
    )
    assert result.exit_code == 2
    [line] = [line for line in result.stderr.splitlines() if line.startswith("Ошибка")]
    assert "colour — Неизвестный столбец" in line
    assert "Traceback" not in result.output

    csv.write_text("guid,first_name\nc1,Анна\n", encoding="utf-8")
    unknown = await invoke_async(
        "client", "import", str(csv), "--project", "nope", "--url", str(api.base_url)
    )
    assert unknown.exit_code == 2
    assert "project — " in unknown.stderr, unknown.stderr


def test_a_windows_1251_file_is_read_in_batches_without_losing_a_row(tmp_path: Path) -> None:
    rows = [f"c{n};Имя{n};Фамилия;u{n}@example.ru;;;Город" for n in range(5)]
    path = write(tmp_path / "excel.csv", rows, encoding="cp1251")
    shape = inspect_file(path)
    assert shape == CsvShape("cp1251", ";", 5)
    sent = list(batches(path, shape, size=2))
    assert [batch.numbers for batch in sent] == [[2, 3], [4, 5], [6]]
    for batch in sent:  # each is a CSV of its own: the header, then its rows, in UTF-8
        lines = batch.body.decode("utf-8").splitlines()
        assert lines[0] == HEADER.strip().replace(";", ",")
        assert len(lines) == 1 + len(batch.numbers)
    assert "Имя4" in sent[-1].body.decode("utf-8")
