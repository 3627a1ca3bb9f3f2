"""POST /client/import: bulk upsert by guid from JSON or CSV, through the real HTTP server.

Good rows are stored, bad rows are reported (row, field, message) and never sink the good ones.
CSV rows are numbered as a spreadsheet shows them (header = 1); JSON rows by their index.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from conftest import LiveServer, serve
from helpers import assert_error, assert_ok, fields, make_project
from rassylka.config import Settings

VALIDATION = "Ошибка валидации"
NO_CONTACT = "Укажите email или phone: без контакта сообщение отправить некуда"

IVAN = {
    "guid": "c-1",
    "first_name": "Иван",
    "last_name": "Иванов",
    "middle_name": "Иванович",
    "email": "ivan@example.com",
    "phone": "8 916 123-45-67",
    "timezone": "Europe/Moscow",
    "tags": ["vip", "moscow"],
    "attributes": {"city": "Москва", "orders": 3},
}
PETR = {"guid": "c-2", "first_name": "Пётр", "last_name": "Петров", "phone": "+7 916 000-00-02"}


async def import_json(api: httpx.AsyncClient, clients: list[Any], project: str = "010") -> Any:
    return await api.post("/client/import", json={"project": project, "clients": clients})


async def import_csv(
    api: httpx.AsyncClient, data: bytes | str, project: str | None = "010"
) -> httpx.Response:
    content = data.encode() if isinstance(data, str) else data
    params = {"project": project} if project is not None else {}
    return await api.post(
        "/client/import", params=params, files={"file": ("clients.csv", content, "text/csv")}
    )


async def stored(api: httpx.AsyncClient, guid: str, project: str = "010") -> dict[str, Any] | None:
    """The client with ``guid`` as GET /client/list returns it, or None if there is none."""
    page = assert_ok(await api.get("/client/list", params={"project": project, "guid": guid}), 200)
    assert page["total"] == len(page["items"]) <= 1, page
    return page["items"][0] if page["items"] else None


async def count(api: httpx.AsyncClient, project: str = "010") -> int:
    page = assert_ok(await api.get("/client/list", params={"project": project, "limit": 1}), 200)
    return int(page["total"])


def errors_of(data: dict[str, Any]) -> list[tuple[int, str]]:
    return [(error["row"], error["field"]) for error in data["errors"]]


def message(data: dict[str, Any], row: int, field: str) -> str:
    [found] = [e["message"] for e in data["errors"] if (e["row"], e["field"]) == (row, field)]
    return str(found)


# -- JSON ---------------------------------------------------------------------------------------


async def test_json_import_stores_good_rows_and_reports_bad_ones(api: httpx.AsyncClient) -> None:
    project_id = await make_project(api)
    clients: list[Any] = [
        IVAN,
        {**PETR, "guid": "bad-email", "email": "not-an-email"},
        {"guid": "no-contact", "first_name": "Нет", "last_name": "Контакта"},
        PETR,
        {**PETR, "guid": "bad-zone", "timezone": "Mars/Olympus"},
        {**PETR, "guid": "no-name", "first_name": None},
        {**PETR, "guid": "bad-phone", "phone": "12345"},
        {**PETR, "guid": "extra", "project": "010"},
    ]
    data = assert_ok(await import_json(api, clients))

    assert (data["created"], data["updated"], data["rejected"]) == (2, 0, 6)
    assert data["errors_truncated"] is False
    assert errors_of(data) == [
        (1, "email"),
        (2, "email"),
        (2, "phone"),
        (4, "timezone"),
        (5, "first_name"),
        (6, "phone"),
        (7, "project"),
    ]
    assert message(data, 1, "email").startswith("Некорректный email «not-an-email»")
    assert message(data, 2, "email") == NO_CONTACT
    assert message(data, 2, "phone") == NO_CONTACT
    assert message(data, 4, "timezone").startswith("Неизвестный часовой пояс «Mars/Olympus»")
    assert message(data, 5, "first_name") == "Ожидается строка"
    assert message(data, 6, "phone") == "Некорректный номер телефона «12345»"
    assert message(data, 7, "project") == "Неизвестное поле"

    ivan = await stored(api, "c-1")
    assert ivan is not None
    assert ivan["project_id"] == project_id
    assert (ivan["first_name"], ivan["last_name"], ivan["middle_name"]) == (
        "Иван",
        "Иванов",
        "Иванович",
    )
    assert ivan["email"] == "ivan@example.com"
    assert ivan["phone"] == "+79161234567"  # normalised to E.164
    assert ivan["timezone"] == "Europe/Moscow"
    assert ivan["tags"] == ["vip", "moscow"]
    assert ivan["attributes"] == {"city": "Москва", "orders": 3}
    petr = await stored(api, "c-2")
    assert petr is not None
    assert (petr["phone"], petr["email"], petr["middle_name"]) == ("+79160000002", None, "")
    for guid in ("bad-email", "no-contact", "bad-zone", "no-name", "bad-phone", "extra"):
        assert await stored(api, guid) is None, guid
    assert await count(api) == 2


async def test_json_rows_that_are_not_objects_are_rejected(api: httpx.AsyncClient) -> None:
    await make_project(api)
    data = assert_ok(await import_json(api, [42, "c-1", ["c-1"], None, IVAN, True]))
    assert (data["created"], data["updated"], data["rejected"]) == (1, 0, 5)
    assert errors_of(data) == [(0, "row"), (1, "row"), (2, "row"), (3, "row"), (5, "row")]
    assert {error["message"] for error in data["errors"]} == {"Ожидается объект JSON"}
    assert await stored(api, "c-1") is not None
    assert await count(api) == 1


async def test_second_import_of_the_same_guids_updates_them(api: httpx.AsyncClient) -> None:
    await make_project(api)
    first = assert_ok(await import_json(api, [IVAN, PETR]))
    assert (first["created"], first["updated"], first["rejected"]) == (2, 0, 0)
    before = await stored(api, "c-1")
    assert before is not None

    changed = {
        **IVAN,
        "first_name": "Иоанн",
        "email": "ioann@example.com",
        "phone": "+7 916 765-43-21",
        "timezone": "Asia/Yekaterinburg",
        "tags": ["gold"],
        "attributes": {"city": "Екатеринбург"},
    }
    new = {**PETR, "guid": "c-3", "first_name": "Сидор"}
    second = assert_ok(await import_json(api, [changed, PETR, new]))
    assert (second["created"], second["updated"], second["rejected"]) == (1, 2, 0)
    assert second["errors"] == []

    after = await stored(api, "c-1")
    assert after is not None
    assert after["id"] == before["id"]
    assert after["first_name"] == "Иоанн"
    assert after["email"] == "ioann@example.com"
    assert after["phone"] == "+79167654321"
    assert after["timezone"] == "Asia/Yekaterinburg"
    assert after["tags"] == ["gold"]
    assert after["attributes"] == {"city": "Екатеринбург"}
    assert after["created_at"] == before["created_at"]
    assert datetime.fromisoformat(after["updated_at"]) > datetime.fromisoformat(
        before["updated_at"]
    )
    added = await stored(api, "c-3")
    assert added is not None
    assert added["first_name"] == "Сидор"
    assert await count(api) == 3


async def test_guid_repeated_in_one_import_last_row_wins(api: httpx.AsyncClient) -> None:
    """Counted as if applied one by one: the first sight creates, every later one updates."""
    await make_project(api)
    rows = [
        {**IVAN, "first_name": "Первый"},
        PETR,
        {**IVAN, "first_name": "Второй"},
        {**IVAN, "first_name": "Третий", "tags": ["last"]},
    ]
    data = assert_ok(await import_json(api, rows))
    assert (data["created"], data["updated"], data["rejected"]) == (2, 2, 0)
    ivan = await stored(api, "c-1")
    assert ivan is not None
    assert (ivan["first_name"], ivan["tags"]) == ("Третий", ["last"])
    assert await count(api) == 2

    again = assert_ok(await import_json(api, [PETR, {**PETR, "last_name": "Петровский"}]))
    assert (again["created"], again["updated"], again["rejected"]) == (0, 2, 0)
    petr = await stored(api, "c-2")
    assert petr is not None
    assert petr["last_name"] == "Петровский"


async def test_repeated_guid_whose_last_row_is_bad_keeps_the_good_one(
    api: httpx.AsyncClient,
) -> None:
    await make_project(api)
    data = assert_ok(await import_json(api, [PETR, {**PETR, "phone": "12345"}]))
    assert (data["created"], data["updated"], data["rejected"]) == (1, 0, 1)
    assert errors_of(data) == [(1, "phone")]
    petr = await stored(api, "c-2")
    assert petr is not None
    assert petr["phone"] == "+79160000002"


async def test_json_project_may_be_the_numeric_id(api: httpx.AsyncClient) -> None:
    project_id = await make_project(api, code="ABC")
    response = await api.post("/client/import", json={"project": project_id, "clients": [PETR]})
    assert assert_ok(response)["created"] == 1
    assert await stored(api, "c-2", project="ABC") is not None


async def test_json_body_that_is_not_an_import_is_a_400(api: httpx.AsyncClient) -> None:
    await make_project(api)
    not_a_list = await api.post("/client/import", json={"project": "010", "clients": {"a": 1}})
    assert fields(assert_error(not_a_list, 400, VALIDATION)) == {"clients"}
    malformed = await api.post(
        "/client/import",
        content=b'{"project": "010", "clients": [',
        headers={"Content-Type": "application/json"},
    )
    assert fields(assert_error(malformed, 400, VALIDATION)) == {"body"}
    wrong_type = await api.post(
        "/client/import", content=b"guid\n", headers={"Content-Type": "application/xml"}
    )
    assert fields(assert_error(wrong_type, 400, VALIDATION)) == {"Content-Type"}
    assert await count(api) == 0


# -- CSV ----------------------------------------------------------------------------------------

CSV_HEADER = (
    "guid,first_name,last_name,middle_name,email,phone,timezone,"
    "tags,attributes.city,attributes.level"
)


async def test_csv_upload_stores_good_rows_and_reports_bad_ones(api: httpx.AsyncClient) -> None:
    await make_project(api)
    lines = [
        CSV_HEADER,  # 1
        "c-1,Иван,Иванов,Иванович,ivan@example.com,8 916 123-45-67,Europe/Moscow,"
        '"vip;new|promo, vip",Москва,3',  # 2
        "c-2,Пётр,Петров,,,+7 916 000-00-02,,,,",  # 3
        "bad-phone,Анна,Смирнова,,,12345,,,,",  # 4
        "bad-email,Анна,Смирнова,,anna@@example,,,,,",  # 5
        "",  # 6: a blank line is skipped, yet it keeps its number
        "no-contact,Анна,Смирнова,,,,,,,",  # 7
        "short,Анна,Смирнова,+79160000003",  # 8
        "bad-zone,Анна,Смирнова,,,+79160000004,Europe/Atlantis,,,",  # 9
        "c-3,Ольга,Орлова,,olga@example.com,,,,Тверь,",  # 10
    ]
    data = assert_ok(await import_csv(api, "\n".join(lines) + "\n"))

    assert (data["created"], data["updated"], data["rejected"]) == (3, 0, 5)
    assert errors_of(data) == [
        (4, "phone"),
        (5, "email"),
        (7, "email"),
        (7, "phone"),
        (8, "row"),
        (9, "timezone"),
    ]
    assert message(data, 4, "phone") == "Некорректный номер телефона «12345»"
    assert message(data, 5, "email").startswith("Некорректный email «anna@@example»")
    assert message(data, 7, "email") == NO_CONTACT
    assert message(data, 8, "row") == "Ожидается ячеек: 10, в строке: 4"
    assert message(data, 9, "timezone").startswith("Неизвестный часовой пояс «Europe/Atlantis»")

    ivan = await stored(api, "c-1")
    assert ivan is not None
    assert ivan["middle_name"] == "Иванович"
    assert (ivan["email"], ivan["phone"], ivan["timezone"]) == (
        "ivan@example.com",
        "+79161234567",
        "Europe/Moscow",
    )
    assert ivan["tags"] == ["vip", "new", "promo"]  # split on ; | , and deduplicated
    assert ivan["attributes"] == {"city": "Москва", "level": "3"}
    petr = await stored(api, "c-2")
    assert petr is not None
    # Empty cells mean "not given": defaults, not empty strings.
    assert (petr["email"], petr["timezone"], petr["tags"], petr["attributes"]) == (
        None,
        None,
        [],
        {},
    )
    olga = await stored(api, "c-3")
    assert olga is not None
    assert olga["attributes"] == {"city": "Тверь"}
    for guid in ("bad-phone", "bad-email", "no-contact", "short", "bad-zone"):
        assert await stored(api, guid) is None, guid
    assert await count(api) == 3


async def test_csv_reimport_updates(api: httpx.AsyncClient) -> None:
    await make_project(api)
    header = "guid,first_name,last_name,phone,tags\n"
    first = assert_ok(await import_csv(api, header + "c-1,Иван,Иванов,+79161234567,a\n"))
    assert (first["created"], first["updated"]) == (1, 0)
    rows = "c-1,Иван,Грозный,+79161234568,b|c\nc-2,Пётр,Петров,+79160000002,\n"
    second = assert_ok(await import_csv(api, header + rows))
    assert (second["created"], second["updated"], second["rejected"]) == (1, 1, 0)
    ivan = await stored(api, "c-1")
    assert ivan is not None
    assert (ivan["last_name"], ivan["phone"], ivan["tags"]) == (
        "Грозный",
        "+79161234568",
        ["b", "c"],
    )


async def test_reimport_changes_only_the_fields_its_rows_carry(api: httpx.AsyncClient) -> None:
    """A CRM exporting only phones must not wipe the emails, tags and attributes it left out."""
    await make_project(api)
    assert_ok(await import_json(api, [IVAN]))
    header = "guid,first_name,last_name,phone\n"
    data = assert_ok(await import_csv(api, header + "c-1,Иван,Грозный,+79161234599\n"))
    assert (data["created"], data["updated"]) == (0, 1)
    ivan = await stored(api, "c-1")
    assert ivan is not None
    assert (ivan["last_name"], ivan["phone"]) == ("Грозный", "+79161234599")
    assert ivan["email"] == "ivan@example.com"
    assert ivan["tags"] == ["vip", "moscow"]
    assert ivan["attributes"] == {"city": "Москва", "orders": 3}
    assert ivan["middle_name"] == "Иванович"
    # An empty cell is "not given" too; JSON null is given, and clears.
    data = assert_ok(
        await import_csv(
            api, "guid,first_name,last_name,email,phone\nc-1,Иван,Грозный,,+79161234599\n"
        )
    )
    assert (await stored(api, "c-1") or {})["email"] == "ivan@example.com"
    row = {k: IVAN[k] for k in ("guid", "first_name", "last_name", "phone")}
    assert_ok(await import_json(api, [{**row, "email": None, "tags": []}]))
    ivan = await stored(api, "c-1")
    assert ivan is not None
    assert (ivan["email"], ivan["tags"]) == (None, [])
    assert ivan["timezone"] == "Europe/Moscow"


async def test_rows_with_different_fields_in_one_import(api: httpx.AsyncClient) -> None:
    await make_project(api)
    assert_ok(await import_json(api, [IVAN, {**PETR, "email": "petr@example.com"}]))
    data = assert_ok(
        await import_json(
            api,
            [
                {k: IVAN[k] for k in ("guid", "first_name", "last_name", "phone")},
                {**PETR, "tags": ["new"]},
                {**PETR, "guid": "c-3"},
            ],
        )
    )
    assert (data["created"], data["updated"]) == (1, 2)
    ivan, petr, third = [await stored(api, guid) for guid in ("c-1", "c-2", "c-3")]
    assert ivan is not None
    assert petr is not None
    assert third is not None
    assert ivan["tags"] == ["vip", "moscow"]
    assert (petr["tags"], petr["email"]) == (["new"], "petr@example.com")
    assert (third["tags"], third["email"], third["middle_name"]) == ([], None, "")


async def test_opted_out_from_csv_and_json(api: httpx.AsyncClient) -> None:
    """CSV: true/false, 1/0, да/нет in any case; JSON: a boolean. A row without it (or with an
    empty cell) leaves an existing client's choice alone."""
    await make_project(api)
    header = "guid,first_name,last_name,phone,opted_out\n"
    cells = ["true", "FALSE", "1", "0", "да", "Нет", "", "может быть"]
    rows = "".join(f"c-{i},Имя,Фамилия,+7916000000{i},{cell}\n" for i, cell in enumerate(cells))
    data = assert_ok(await import_csv(api, header + rows))
    assert (data["created"], data["rejected"]) == (7, 1)
    assert errors_of(data) == [(9, "opted_out")]
    assert message(data, 9, "opted_out") == (
        "Ожидается true/false, 1/0 или да/нет, получено «может быть»"
    )
    expected = [True, False, True, False, True, False, False]
    for i, opted_out in enumerate(expected):
        client = await stored(api, f"c-{i}")
        assert client is not None
        assert client["opted_out"] is opted_out, (i, cells[i])

    # Without the column, and with an empty cell, nothing changes.
    without = "guid,first_name,last_name,phone\nc-0,Иван,Фамилия,+79160000000\n"
    data = assert_ok(await import_csv(api, without))
    assert data["updated"] == 1
    data = assert_ok(await import_csv(api, header + "c-0,Иван,Фамилия,+79160000000,\n"))
    assert data["updated"] == 1
    assert (await stored(api, "c-0") or {})["opted_out"] is True
    row = {"guid": "c-0", "first_name": "Иван", "last_name": "Фамилия", "phone": "+79160000000"}
    assert_ok(await import_json(api, [{**row, "opted_out": False}, {**row, "guid": "j-1"}]))
    assert (await stored(api, "c-0") or {})["opted_out"] is False
    assert (await stored(api, "j-1") or {})["opted_out"] is False
    data = assert_ok(await import_json(api, [{**row, "opted_out": None}]))
    assert errors_of(data) == [(0, "opted_out")]


async def test_csv_header_edge_cases(api: httpx.AsyncClient) -> None:
    await make_project(api)
    trailing = "guid,first_name,last_name,phone,\nc-1,Иван,Иванов,+79161234567,\n"
    data = assert_ok(await import_csv(api, trailing))
    assert (data["created"], data["rejected"]) == (1, 0)
    nameless = "guid,first_name,last_name,phone,attributes.\nc-2,Пётр,Петров,+79161234568,x\n"
    details = assert_error(await import_csv(api, nameless), 400, VALIDATION)
    assert details == [{"field": "attributes.", "message": "Нет имени атрибута"}]


async def test_csv_semicolon_delimited_in_cp1251(api: httpx.AsyncClient) -> None:
    """What Russian Excel writes: `;` between cells, Windows-1251, CRLF line ends."""
    await make_project(api)
    text = (
        "GUID;First_Name;Last_Name;Phone;Tags;Attributes.Город\r\n"
        "c-1;Иван;Иванов;+79161234567;клиент,важный;Москва\r\n"
        "c-2;Пётр;Петров;неизвестен;;\r\n"
        "c-3;Ёжик;Туманов;+79160000003;;Тверь\r\n"
    )
    data = assert_ok(await import_csv(api, text.encode("cp1251")))
    assert (data["created"], data["updated"], data["rejected"]) == (2, 0, 1)
    assert errors_of(data) == [(3, "phone")]
    assert message(data, 3, "phone") == "Некорректный номер телефона «неизвестен»"
    ivan = await stored(api, "c-1")
    assert ivan is not None
    assert (ivan["first_name"], ivan["last_name"]) == ("Иван", "Иванов")
    assert ivan["tags"] == ["клиент", "важный"]
    assert ivan["attributes"] == {"Город": "Москва"}
    hedgehog = await stored(api, "c-3")
    assert hedgehog is not None
    assert (hedgehog["first_name"], hedgehog["attributes"]) == ("Ёжик", {"Город": "Тверь"})
    assert await stored(api, "c-2") is None


async def test_csv_as_raw_text_csv_body(api: httpx.AsyncClient) -> None:
    """A tab-separated UTF-8 file with a BOM, sent as the request body itself."""
    await make_project(api)
    text = "\ufeffguid\tfirst_name\tlast_name\temail\nc-1\tИван\tИванов\tIvan@Example.COM\n"
    response = await api.post(
        "/client/import",
        params={"project": "010"},
        content=text.encode("utf-8"),
        headers={"Content-Type": "text/csv; charset=utf-8"},
    )
    data = assert_ok(response)
    assert (data["created"], data["updated"], data["rejected"]) == (1, 0, 0)
    ivan = await stored(api, "c-1")  # the BOM did not become part of the guid column's name
    assert ivan is not None
    assert ivan["first_name"] == "Иван"
    assert ivan["email"] == "Ivan@example.com"  # the domain is normalised, not the local part


async def test_csv_with_only_a_header_imports_nothing(api: httpx.AsyncClient) -> None:
    await make_project(api)
    data = assert_ok(await import_csv(api, "guid,first_name,last_name,phone\n\n\n"))
    assert data == {
        "created": 0,
        "updated": 0,
        "rejected": 0,
        "errors": [],
        "errors_truncated": False,
    }


async def test_csv_unknown_column_is_a_400_naming_it(api: httpx.AsyncClient) -> None:
    await make_project(api)
    text = "guid,first_name,last_name,phone,surname\nc-1,Иван,Иванов,+79161234567,x\n"
    details = assert_error(await import_csv(api, text), 400, VALIDATION)
    assert details == [{"field": "surname", "message": "Неизвестный столбец"}]
    assert await count(api) == 0


async def test_csv_without_guid_column_is_a_400(api: httpx.AsyncClient) -> None:
    await make_project(api)
    details = assert_error(await import_csv(api, "first_name,last_name,phone\n"), 400, VALIDATION)
    assert details == [{"field": "guid", "message": "Нет обязательного столбца guid"}]


async def test_csv_repeated_column_is_a_400(api: httpx.AsyncClient) -> None:
    await make_project(api)
    text = "guid,phone,first_name,last_name,Phone\n"
    details = assert_error(await import_csv(api, text), 400, VALIDATION)
    assert details == [{"field": "phone", "message": "Столбец повторяется"}]


async def test_csv_empty_file_is_a_400(api: httpx.AsyncClient) -> None:
    await make_project(api)
    for empty in (b"", b"\xef\xbb\xbf"):
        details = assert_error(await import_csv(api, empty), 400, VALIDATION)
        assert details == [{"field": "file", "message": "Файл пуст: нужна строка заголовка"}]


async def test_multipart_without_file_field_is_a_400(api: httpx.AsyncClient) -> None:
    await make_project(api)
    response = await api.post(
        "/client/import",
        params={"project": "010"},
        files={"upload": ("clients.csv", b"guid\n", "text/csv")},
    )
    assert fields(assert_error(response, 400, VALIDATION)) == {"file"}


# -- the project --------------------------------------------------------------------------------


async def test_missing_project_is_a_400(api: httpx.AsyncClient) -> None:
    await make_project(api)
    csv_text = "guid,first_name,last_name,phone\nc-1,Иван,Иванов,+79161234567\n"
    upload = await import_csv(api, csv_text, project=None)
    assert fields(assert_error(upload, 400, VALIDATION)) == {"project"}
    raw = await api.post(
        "/client/import", content=csv_text.encode(), headers={"Content-Type": "text/csv"}
    )
    assert fields(assert_error(raw, 400, VALIDATION)) == {"project"}
    body = await api.post("/client/import", json={"clients": [PETR]})
    assert assert_error(body, 400, VALIDATION) == [
        {"field": "project", "message": "Обязательное поле"}
    ]
    assert await count(api) == 0


async def test_unknown_project_is_a_400_on_project(api: httpx.AsyncClient) -> None:
    await make_project(api)
    csv_text = "guid,first_name,last_name,phone\nc-1,Иван,Иванов,+79161234567\n"
    for response in (
        await import_csv(api, csv_text, project="999"),
        await import_json(api, [PETR], project="999"),
    ):
        assert assert_error(response, 400, VALIDATION) == [
            {"field": "project", "message": "Проект «999» не найден"}
        ]
    assert await count(api) == 0


# -- limits -------------------------------------------------------------------------------------

SMALL_LIMIT = 3


@pytest.fixture
async def small_api(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """A server that takes at most SMALL_LIMIT clients per import."""
    server = await serve(Settings(database_url=database_url, max_import_rows=SMALL_LIMIT))
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            yield client
    finally:
        await server.stop()


async def test_more_rows_than_max_import_rows_is_a_400(small_api: httpx.AsyncClient) -> None:
    await make_project(small_api)
    too_many = [{**PETR, "guid": f"c-{i}"} for i in range(SMALL_LIMIT + 1)]
    details = assert_error(await import_json(small_api, too_many), 400, VALIDATION)
    assert details == [{"field": "clients", "message": "Не больше 3 клиентов за один запрос"}]

    header = "guid,first_name,last_name,phone\n"
    lines = [f"c-{i},Пётр,Петров,+7916000000{i}\n" for i in range(SMALL_LIMIT + 1)]
    details = assert_error(await import_csv(small_api, header + "".join(lines)), 400, VALIDATION)
    assert fields(details) == {"file"}
    assert await count(small_api) == 0

    # Exactly the limit is fine, and blank lines do not count towards it.
    data = assert_ok(await import_csv(small_api, header + "\n".join(lines[:SMALL_LIMIT]) + "\n"))
    assert data["created"] == SMALL_LIMIT
    assert await count(small_api) == SMALL_LIMIT


async def test_errors_are_capped_at_a_thousand(api: httpx.AsyncClient) -> None:
    await make_project(api)
    bad = [{**PETR, "guid": f"c-{i}", "phone": "12345"} for i in range(1001)]
    data = assert_ok(await import_json(api, [*bad, PETR]))
    assert (data["created"], data["updated"], data["rejected"]) == (1, 0, 1001)
    assert len(data["errors"]) == 1000
    assert data["errors"][-1]["row"] == 999
    assert data["errors_truncated"] is True
    assert await count(api) == 1


async def test_exactly_a_thousand_errors_are_not_truncated(api: httpx.AsyncClient) -> None:
    await make_project(api)
    bad = [{**PETR, "guid": f"c-{i}", "phone": "12345"} for i in range(1000)]
    data = assert_ok(await import_json(api, bad))
    assert (data["rejected"], len(data["errors"])) == (1000, 1000)
    assert data["errors_truncated"] is False


async def test_csv_row_numbers_count_records_not_physical_lines(api: httpx.AsyncClient) -> None:
    await make_project(api)
    text = (
        "guid,first_name,last_name,phone,attributes.note\n"
        'c-1,Иван,Иванов,+79161234567,"две\nстроки"\n'  # one spreadsheet row (2), two lines
        "c-2,Пётр,Петров,12345,\n"  # spreadsheet row 3, file line 4
    )
    data = assert_ok(await import_csv(api, text))
    assert errors_of(data) == [(3, "phone")]


# -- volume -------------------------------------------------------------------------------------

BULK = 100_000


def bulk_csv(rows: int) -> bytes:
    """One contact per client (alternately phone and email): each checked contact costs time."""
    lines = ["guid,first_name,last_name,phone,email,tags,attributes.n"]
    lines += [
        f"g{i},Имя{i},Фамилия,+7916{i:07d},,a;b,{i}"
        if i % 2 == 0
        else f"g{i},Имя{i},Фамилия,,u{i}@example.com,a;b,{i}"
        for i in range(rows)
    ]
    return ("\n".join(lines) + "\n").encode()


async def test_import_of_a_hundred_thousand_clients(live_server: LiveServer) -> None:
    # Its own client: the shared one's 60 s timeout is too short for a slow backend.
    async with httpx.AsyncClient(base_url=live_server.url, timeout=900) as api:
        await make_project(api)
        data = assert_ok(await import_csv(api, bulk_csv(BULK)))
        assert data == {
            "created": BULK,
            "updated": 0,
            "rejected": 0,
            "errors": [],
            "errors_truncated": False,
        }
        assert await count(api) == BULK
        for i in (0, 1, 4_999, 50_000, BULK - 1):
            client = await stored(api, f"g{i}")
            assert client is not None, i
            assert client["first_name"] == f"Имя{i}"
            assert client["tags"] == ["a", "b"]
            assert client["attributes"] == {"n": str(i)}
            if i % 2 == 0:
                assert (client["phone"], client["email"]) == (f"+7916{i:07d}", None)
            else:
                assert (client["phone"], client["email"]) == (None, f"u{i}@example.com")


# -- several imports at once ----------------------------------------------------------------------


async def test_imports_sent_together_all_land_and_each_answer_closes(
    api: httpx.AsyncClient,
) -> None:
    """A process takes one import at a time (the others wait their turn), and each answer
    closes its connection, so a client's next import may go to another API process."""
    await make_project(api)
    batches = [
        [{**PETR, "guid": f"c-{n}-{i}", "phone": f"+7916{n}{i:06d}"} for i in range(200)]
        for n in range(4)
    ]
    answers = await asyncio.gather(*(import_json(api, batch) for batch in batches))
    for answer in answers:
        assert answer.headers["connection"] == "close"
        data = assert_ok(answer)
        assert (data["created"], data["updated"], data["rejected"]) == (200, 0, 0)
    csv_answer = await import_csv(api, "guid,first_name,last_name,phone\nc-x,Ия,Ли,+79161110000\n")
    assert csv_answer.headers["connection"] == "close"
    assert await count(api) == 801
