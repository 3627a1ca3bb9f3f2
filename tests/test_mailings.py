"""Mailings: channels by id or name, event dates in the mailing's zone, template ownership."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from helpers import assert_error, assert_ok, fields, make_project, make_template


@pytest.fixture
async def ids(api: httpx.AsyncClient) -> tuple[int, int]:
    project_id = await make_project(api, code="010")
    return project_id, await make_template(api, project_id)


def mailing(ids: tuple[int, int], **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "Осенняя",
        "project_id": ids[0],
        "template_id": ids[1],
        "status": 1,
        "channels": [1, 2],
        "event": "2030-08-02",
    }
    body.update(changes)
    return body


@pytest.mark.parametrize(
    ("channels", "stored"),
    [
        ([1], [1]),
        ("1", [1]),
        (2, [2]),
        (["email", "sms"], [1, 2]),
        (["SMS", "2", 2], [2]),
        (["sms", 1], [2, 1]),
    ],
)
async def test_channels_by_id_or_name(
    api: httpx.AsyncClient, ids: tuple[int, int], channels: object, stored: list[int]
) -> None:
    data = assert_ok(await api.post("/mailing/create", json=mailing(ids, channels=channels)))
    assert data["channels"] == stored


@pytest.mark.parametrize("channels", [[], ["fax"], [3], [True], "email,sms", None])
async def test_bad_channels_are_400(
    api: httpx.AsyncClient, ids: tuple[int, int], channels: object
) -> None:
    response = await api.post("/mailing/create", json=mailing(ids, channels=channels))
    assert fields(assert_error(response, 400, "Ошибка валидации")) == {"channels"}


@pytest.mark.parametrize(
    ("event", "timezone", "stored"),
    [
        ("2030-08-02", None, "2030-08-02T00:00:00+00:00"),
        ("2030-08-02", "Europe/Moscow", "2030-08-02T00:00:00+03:00"),
        ("2030-08-02T10:30:00+03:00", None, "2030-08-02T07:30:00+00:00"),
        ("2030-08-02T10:30:00Z", "Asia/Vladivostok", "2030-08-02T20:30:00+10:00"),
        ("2030-08-02T10:30", "Europe/Moscow", "2030-08-02T10:30:00+03:00"),
    ],
)
async def test_event_is_a_date_or_a_moment(
    api: httpx.AsyncClient, ids: tuple[int, int], event: str, timezone: str | None, stored: str
) -> None:
    body = mailing(ids, event=event)
    if timezone:
        body["timezone"] = timezone
    data = assert_ok(await api.post("/mailing/create", json=body))
    assert data["event"] == stored
    assert data["timezone"] == (timezone or "UTC")


@pytest.mark.parametrize("event", ["02.08.2030", "2030-13-01", "tomorrow", "", "2030-08-02T25:00"])
async def test_bad_event_is_400(api: httpx.AsyncClient, ids: tuple[int, int], event: str) -> None:
    response = await api.post("/mailing/create", json=mailing(ids, event=event))
    assert fields(assert_error(response, 400, "Ошибка валидации")) == {"event"}


@pytest.mark.parametrize("status", [0, 1, 2, "2"])
async def test_every_status_a_new_mailing_can_have(
    api: httpx.AsyncClient, ids: tuple[int, int], status: object
) -> None:
    data = assert_ok(await api.post("/mailing/create", json=mailing(ids, status=status)))
    assert data["status"] == int(str(status))


@pytest.mark.parametrize("status", [3, 4])
async def test_a_new_mailing_is_not_completed_or_cancelled(
    api: httpx.AsyncClient, ids: tuple[int, int], status: int
) -> None:
    response = await api.post("/mailing/create", json=mailing(ids, status=status))
    assert fields(assert_error(response, 400, "Ошибка валидации")) == {"status"}


async def test_template_of_another_project_is_400(
    api: httpx.AsyncClient, ids: tuple[int, int]
) -> None:
    other_project = await make_project(api, code="020")
    foreign = await make_template(api, other_project)
    response = await api.post("/mailing/create", json=mailing(ids, template_id=foreign))
    details = assert_error(response, 400, "Ошибка валидации")
    assert fields(details) == {"template_id"}
    assert "другому проекту" in details[0]["message"]


async def test_unknown_project_or_template_is_400(
    api: httpx.AsyncClient, ids: tuple[int, int]
) -> None:
    response = await api.post("/mailing/create", json=mailing(ids, project_id=999))
    assert fields(assert_error(response, 400, "Ошибка валидации")) == {"project_id"}
    response = await api.post("/mailing/create", json=mailing(ids, template_id=999))
    assert fields(assert_error(response, 400, "Ошибка валидации")) == {"template_id"}


async def test_channel_without_text_in_the_template_is_400(
    api: httpx.AsyncClient, ids: tuple[int, int]
) -> None:
    sms_only = await make_template(api, ids[0], sms_text="hi")
    response = await api.post("/mailing/create", json=mailing(ids, template_id=sms_only))
    details = assert_error(response, 400, "Ошибка валидации")
    assert details == [
        {
            "field": "channels",
            "message": f"Канал email: в шаблоне {sms_only} нет письма (темы и текста)",
        }
    ]
    assert_ok(
        await api.post("/mailing/create", json=mailing(ids, template_id=sms_only, channels=[2]))
    )


async def test_update(api: httpx.AsyncClient, ids: tuple[int, int]) -> None:
    created = assert_ok(await api.post("/mailing/create", json=mailing(ids)))
    path = f"/mailing/{created['id']}/update"
    data = assert_ok(
        await api.put(path, json={"status": 2, "channels": "sms", "timezone": "Europe/Moscow"})
    )
    assert (data["status"], data["channels"], data["timezone"]) == (2, [2], "Europe/Moscow")
    assert data["event"] == "2030-08-02T03:00:00+03:00", "the moment stays when only the zone moves"
    data = assert_ok(await api.put(path, json={"event": "2030-09-01"}))
    assert data["event"] == "2030-09-01T00:00:00+03:00"
    sms_only = await make_template(api, ids[0], sms_text="hi")
    response = await api.put(path, json={"template_id": sms_only, "channels": [1]})
    assert fields(assert_error(response, 400, "Ошибка валидации")) == {"channels"}
    response = await api.put(path, json={"name": None})
    assert fields(assert_error(response, 400, "Ошибка валидации")) == {"name"}
    response = await api.put(path, json={"project_id": 5})
    assert fields(assert_error(response, 400, "Ошибка валидации")) == {"project_id"}


async def test_list_filters(api: httpx.AsyncClient, ids: tuple[int, int]) -> None:
    draft = assert_ok(await api.post("/mailing/create", json=mailing(ids, status=0)))
    assert_ok(await api.post("/mailing/create", json=mailing(ids, status=1)))
    drafts = assert_ok(await api.get("/mailing/list", params={"status": 0}), 200)
    assert [item["id"] for item in drafts["items"]] == [draft["id"]]
    assert assert_ok(await api.get("/mailing/list", params={"project": "010"}), 200)["total"] == 2
    response = await api.get("/mailing/list", params={"status": 7})
    assert fields(assert_error(response, 400, "Ошибка валидации")) == {"status"}
