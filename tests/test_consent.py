"""Consent to advertising, per-channel opt-outs, the mailing's kind and the project's frequency
caps: through the API and the import, and what materialising a run makes of them."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from conftest import StartWorker
from helpers import assert_error, assert_ok, fields, make_project, make_template
from rassylka.clients.models import Client
from rassylka.messages.models import Message, MessageEvent, Run
from smtp_peer import SmtpPeer
from test_dashboard_data import post_form
from test_dispatcher import all_final, until
from test_materialize import messages, start

CONSENT_FIELDS = {
    "email_consent",
    "email_consent_at",
    "email_consent_source",
    "sms_consent",
    "sms_consent_at",
    "sms_consent_source",
    "email_opted_out",
    "sms_opted_out",
}


def person(guid: str, **extra: Any) -> dict[str, Any]:
    n = sum(map(ord, guid)) % 10_000
    return {
        "guid": guid,
        "first_name": "Имя",
        "last_name": "Фамилия",
        "email": f"{guid}@example.ru",
        "phone": f"+7916{n:07d}",
        **extra,
    }


def moment(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


async def read_client(api: httpx.AsyncClient, client_id: int) -> dict[str, Any]:
    return assert_ok(await api.get(f"/client/{client_id}"), 200)


async def by_guid(api: httpx.AsyncClient, guid: str) -> dict[str, Any]:
    data = assert_ok(await api.get("/client/list", params={"project": "010", "guid": guid}), 200)
    [found] = data["items"]
    return dict(found)


async def test_the_manuals_create_is_unchanged_and_reads_the_defaults(
    api: httpx.AsyncClient,
) -> None:
    await make_project(api)
    body = {"project": "010", "guid": "g", "first_name": "И", "last_name": "И", "email": "g@x.ru"}
    data = assert_ok(await api.post("/client/create", json=body))
    assert {name: data[name] for name in CONSENT_FIELDS} == {
        "email_consent": "unknown",
        "email_consent_at": None,
        "email_consent_source": None,
        "sms_consent": "unknown",
        "sms_consent_at": None,
        "sms_consent_source": None,
        "email_opted_out": False,
        "sms_opted_out": False,
    }
    assert (await by_guid(api, "g"))["email_consent"] == "unknown"


async def test_consent_is_created_stamped_read_listed_and_updated(api: httpx.AsyncClient) -> None:
    await make_project(api)
    before = datetime.now(UTC)
    given = "2026-01-15T10:00:00+03:00"
    data = assert_ok(
        await api.post(
            "/client/create",
            json={
                "project": "010",
                **person("a"),
                "email_consent": "granted",
                "email_consent_source": "форма на сайте",
                "sms_consent": "DENIED",
                "sms_consent_at": given,
            },
        )
    )
    client_id = int(data["id"])
    stamped = moment(data["email_consent_at"])
    assert stamped is not None
    assert before - timedelta(seconds=1) <= stamped <= datetime.now(UTC)
    assert data["email_consent_source"] == "форма на сайте"
    assert data["sms_consent"] == "denied"
    assert moment(data["sms_consent_at"]) == datetime(2026, 1, 15, 7, tzinfo=UTC)
    read = await read_client(api, client_id)
    assert read["email_consent"] == "granted"
    assert moment(read["email_consent_at"]) == stamped
    listed = await by_guid(api, "a")
    assert listed["sms_consent"] == "denied"
    assert listed["email_consent_source"] == "форма на сайте"

    # The same consent again keeps its moment; another one is stamped now.
    same = assert_ok(
        await api.put(f"/client/{client_id}/update", json={"email_consent": "granted"})
    )
    assert moment(same["email_consent_at"]) == stamped
    changed = assert_ok(
        await api.put(
            f"/client/{client_id}/update",
            json={"sms_consent": "granted", "sms_consent_source": "звонок"},
        )
    )
    changed_at = moment(changed["sms_consent_at"])
    assert changed_at is not None
    assert changed_at >= before
    assert changed["sms_consent_source"] == "звонок"
    assert changed["sms_consent"] == "granted"


async def test_bad_consent_values_are_refused_in_russian(api: httpx.AsyncClient) -> None:
    await make_project(api)
    client_id = int(
        assert_ok(await api.post("/client/create", json={"project": "010", **person("a")}))["id"]
    )
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    for body, field in (
        ({"email_consent": "yes"}, "email_consent"),
        ({"sms_consent": 1}, "sms_consent"),
        ({"email_consent": "granted", "email_consent_at": future}, "email_consent_at"),
        ({"sms_consent_source": "x" * 256}, "sms_consent_source"),
        ({"sms_consent_at": "0001-01-01T00:00:00+01:00"}, "sms_consent_at"),
        ({"sms_consent_at": "не дата"}, "sms_consent_at"),
        ({"email_consent": None}, "email_consent"),
        ({"sms_opted_out": None}, "sms_opted_out"),
        ({"email_opted_out": "может быть"}, "email_opted_out"),
    ):
        details = assert_error(
            await api.put(f"/client/{client_id}/update", json=body), 400, "Ошибка валидации"
        )
        assert fields(details) == {field}, details
        assert all(any("а" <= c <= "я" for c in d["message"].lower()) for d in details), details
    details = assert_error(
        await api.post(
            "/client/create", json={"project": "010", **person("b"), "email_consent": "maybe"}
        ),
        400,
        "Ошибка валидации",
    )
    assert details == [
        {
            "field": "email_consent",
            "message": "Согласие: granted (дано), denied (отозвано) или unknown (неизвестно)",
        }
    ]
    future_details = assert_error(
        await api.post(
            "/client/create", json={"project": "010", **person("c"), "sms_consent_at": future}
        ),
        400,
        "Ошибка валидации",
    )
    assert future_details[0]["message"] == "Момент согласия не может быть в будущем"
    assert (await read_client(api, client_id))["email_consent"] == "unknown"


async def test_json_import_carries_consent_and_keeps_the_moment_of_an_unchanged_one(
    api: httpx.AsyncClient,
) -> None:
    await make_project(api)
    rows = [
        person("a", email_consent="granted", email_consent_source="CRM", sms_opted_out=True),
        person("b", sms_consent="granted", sms_consent_at="2026-02-01T00:00:00Z"),
        person("c", email_consent="нет"),
    ]
    data = assert_ok(await api.post("/client/import", json={"project": "010", "clients": rows}))
    assert (data["created"], data["rejected"]) == (2, 1)
    assert data["errors"][0]["field"] == "email_consent"
    a = await by_guid(api, "a")
    assert (a["email_consent"], a["email_consent_source"], a["sms_opted_out"]) == (
        "granted",
        "CRM",
        True,
    )
    first_at = moment(a["email_consent_at"])
    assert first_at is not None
    b = await by_guid(api, "b")
    assert moment(b["sms_consent_at"]) == datetime(2026, 2, 1, tzinfo=UTC)
    assert b["email_consent"] == "unknown"
    assert b["email_consent_at"] is None

    again = [
        person("a", email_consent="granted"),  # the same: its moment stays
        person("b", sms_consent="denied"),  # changed: stamped now
    ]
    data = assert_ok(await api.post("/client/import", json={"project": "010", "clients": again}))
    assert (data["created"], data["updated"]) == (0, 2)
    a = await by_guid(api, "a")
    assert moment(a["email_consent_at"]) == first_at
    assert a["email_consent_source"] == "CRM"  # not in the row: kept
    assert a["sms_opted_out"] is True  # not in the row: kept
    b = await by_guid(api, "b")
    assert b["sms_consent"] == "denied"
    b_at = moment(b["sms_consent_at"])
    assert b_at is not None
    assert b_at > datetime(2026, 2, 1, tzinfo=UTC)


async def test_csv_import_carries_consent_and_opt_outs(api: httpx.AsyncClient) -> None:
    await make_project(api)
    csv = (
        "guid;first_name;last_name;email;email_consent;email_consent_at;email_consent_source;"
        "sms_consent;email_opted_out\n"
        "a;А;А;a@example.ru;granted;2026-03-01T12:00:00+00:00;бумажная анкета;denied;нет\n"
        "b;Б;Б;b@example.ru;unknown;;;granted;да\n"
        "c;В;В;c@example.ru;дано;;;;\n"
    ).encode()
    data = assert_ok(
        await api.post(
            "/client/import",
            params={"project": "010"},
            files={"file": ("clients.csv", csv, "text/csv")},
        )
    )
    assert (data["created"], data["rejected"]) == (2, 1)
    assert data["errors"] == [
        {
            "row": 4,
            "field": "email_consent",
            "message": "Согласие: granted (дано), denied (отозвано) или unknown (неизвестно)",
        }
    ]
    a = await by_guid(api, "a")
    assert moment(a["email_consent_at"]) == datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert (a["email_consent"], a["email_consent_source"], a["sms_consent"]) == (
        "granted",
        "бумажная анкета",
        "denied",
    )
    assert a["sms_consent_at"] is not None  # given without a moment: stamped
    assert a["email_opted_out"] is False
    b = await by_guid(api, "b")
    assert (b["email_consent"], b["sms_consent"], b["email_opted_out"]) == (
        "unknown",
        "granted",
        True,
    )


# -- materialisation -------------------------------------------------------------------------


async def setup(api: httpx.AsyncClient, clients: list[dict[str, Any]]) -> tuple[int, int]:
    """Project 010 with a template and ``clients``: (project id, template id)."""
    project_id = await make_project(api)
    template_id = await make_template(api, project_id)
    data = assert_ok(await api.post("/client/import", json={"project": "010", "clients": clients}))
    assert data["created"] == len(clients), data
    return project_id, template_id


async def mailing(
    api: httpx.AsyncClient, project_id: int, template_id: int, **extra: Any
) -> dict[str, Any]:
    body = {
        "name": "m",
        "project_id": project_id,
        "template_id": template_id,
        "status": 1,
        "channels": [1, 2],
        "event": "2020-08-02",
        **extra,
    }
    return assert_ok(await api.post("/mailing/create", json=body))


async def run_messages(engine: AsyncEngine, run_id: int) -> dict[tuple[str, int], tuple[str, str]]:
    """(client guid, channel) → (status, reason) of a run's messages."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(Client.guid, Message.channel, Message.status, Message.reason)
            .join(Client, Client.id == Message.client_id)
            .where(Message.run_id == run_id)
        )
        return {(row.guid, row.channel): (row.status, row.reason) for row in rows}


async def test_kind_is_created_read_updated_and_checked(api: httpx.AsyncClient) -> None:
    project_id, template_id = await setup(api, [person("a")])
    plain = await mailing(api, project_id, template_id, status=0)
    assert plain["kind"] == "service"
    ad = await mailing(api, project_id, template_id, status=0, kind="advertising")
    assert ad["kind"] == "advertising"
    assert assert_ok(await api.get(f"/mailing/{ad['id']}"), 200)["kind"] == "advertising"
    changed = assert_ok(
        await api.put(f"/mailing/{plain['id']}/update", json={"kind": "advertising"})
    )
    assert changed["kind"] == "advertising"
    details = assert_error(
        await api.post(
            "/mailing/create",
            json={
                "name": "m",
                "project_id": project_id,
                "template_id": template_id,
                "status": 0,
                "channels": [1],
                "kind": "promo",
            },
        ),
        400,
        "Ошибка валидации",
    )
    assert fields(details) == {"kind"}
    assert details[0]["message"].startswith("Допустимые виды: advertising")
    details = assert_error(
        await api.put(f"/mailing/{plain['id']}/update", json={"kind": None}),
        400,
        "Ошибка валидации",
    )
    assert fields(details) == {"kind"}


async def test_advertising_goes_only_where_the_channels_consent_is_granted(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    project_id, template_id = await setup(
        api,
        [
            person("both", email_consent="granted", sms_consent="granted"),
            person("email", email_consent="granted", sms_consent="denied"),
            person("none"),
            person("out", email_consent="granted", email_opted_out=True),
        ],
    )
    await mailing(api, project_id, template_id, kind="advertising")
    [ad_run] = await start(engine)
    found = await run_messages(engine, ad_run)
    assert found == {
        ("both", 1): ("queued", None),
        ("both", 2): ("queued", None),
        ("email", 1): ("queued", None),
        ("email", 2): ("skipped", "Нет согласия на рекламу по SMS"),
        ("none", 1): ("skipped", "Нет согласия на рекламу по email"),
        ("none", 2): ("skipped", "Нет согласия на рекламу по SMS"),
        # Opted out of the channel comes before consent, whatever the consent says.
        ("out", 1): ("skipped", "Клиент отписался от писем проекта"),
        ("out", 2): ("skipped", "Нет согласия на рекламу по SMS"),
    }
    await mailing(api, project_id, template_id)  # service: to all not opted out
    [service_run] = await start(engine)
    found = await run_messages(engine, service_run)
    assert {key: status for key, (status, _) in found.items() if status == "skipped"} == {
        ("out", 1): "skipped"
    }
    assert len(found) == 8


async def test_reasons_keep_their_order(api: httpx.AsyncClient, engine: AsyncEngine) -> None:
    project_id, template_id = await setup(
        api,
        [
            {**person("nomail"), "email": None},
            person("all-out", opted_out=True, email_opted_out=True),
            person("suppressed"),
            person("noconsent"),
            person("capped", email_consent="granted"),
        ],
    )
    assert_ok(
        await api.post(
            "/suppression/create",
            json={"project": "010", "address": "suppressed@example.ru", "reason": "жалоба"},
        )
    )
    # Every client already had an email today, so each is at the cap of 1.
    assert_ok(await api.put(f"/project/{project_id}/update", json={"frequency_cap": {"email": 1}}))
    await mailing(api, project_id, template_id, channels=[1])
    [first] = await start(engine)
    async with engine.begin() as connection:
        # The first run's messages as if all had been sent (none skipped).
        await connection.execute(
            update(Message).where(Message.run_id == first).values(status="sent", reason=None)
        )
    await mailing(api, project_id, template_id, channels=[1], kind="advertising")
    [second] = await start(engine)
    found = await run_messages(engine, second)
    assert {guid: reason for (guid, _), (_, reason) in found.items()} == {
        "nomail": "У клиента нет email",
        "all-out": "Клиент отказался от рассылок",
        "suppressed": "Адрес в списке подавления: жалоба",
        "noconsent": "Нет согласия на рекламу по email",
        "capped": "Превышен лимит частоты: не более 1 email за 24 часа",
    }


async def test_the_frequency_cap_skips_the_second_run_of_a_day_and_lets_the_next_day_go(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    project_id, template_id = await setup(api, [person("a"), person("b"), person("c")])
    assert_ok(
        await api.put(
            f"/project/{project_id}/update", json={"frequency_cap": {"email": 1, "sms": 2}}
        )
    )
    await mailing(api, project_id, template_id)
    [first] = await start(engine)
    assert {status for status, _ in (await run_messages(engine, first)).values()} == {"queued"}
    # A failed message never reached the client: it does not count.
    async with engine.begin() as connection:
        await connection.execute(
            update(Message)
            .where(
                Message.run_id == first,
                Message.channel == 1,
                Message.address == "c@example.ru",
            )
            .values(status="failed", reason="550")
        )

    await mailing(api, project_id, template_id)
    [second] = await start(engine)
    found = await run_messages(engine, second)
    capped = "Превышен лимит частоты: не более 1 email за 24 часа"
    assert found == {
        ("a", 1): ("skipped", capped),
        ("b", 1): ("skipped", capped),
        ("c", 1): ("queued", None),
        ("a", 2): ("queued", None),  # the second SMS of the day, under a cap of 2
        ("b", 2): ("queued", None),
        ("c", 2): ("queued", None),
    }
    await mailing(api, project_id, template_id, channels=[2])
    [third] = await start(engine)
    assert {status for status, _ in (await run_messages(engine, third)).values()} == {"skipped"}
    assert (await run_messages(engine, third))[("a", 2)][1] == (
        "Превышен лимит частоты: не более 2 SMS за 24 часа"
    )

    # A day later the earlier runs fall out of the window.
    async with engine.begin() as connection:
        day = timedelta(hours=24, minutes=1)
        for run_id in (first, second, third):
            started = (
                await connection.execute(select(Run.started_at).where(Run.id == run_id))
            ).scalar_one()
            await connection.execute(
                update(Run).where(Run.id == run_id).values(started_at=started - day)
            )
    await mailing(api, project_id, template_id)
    [fourth] = await start(engine)
    assert {status for status, _ in (await run_messages(engine, fourth)).values()} == {"queued"}

    # Without a cap nothing is skipped however many messages came today.
    assert_ok(
        await api.put(
            f"/project/{project_id}/update", json={"frequency_cap": {"email": None, "sms": None}}
        )
    )
    await mailing(api, project_id, template_id)
    [fifth] = await start(engine)
    assert {status for status, _ in (await run_messages(engine, fifth)).values()} == {"queued"}


async def test_a_channels_opt_out_through_the_api_skips_whats_queued_there(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    project_id, template_id = await setup(api, [person("a"), person("b")])
    await mailing(api, project_id, template_id)
    await start(engine)
    a = await by_guid(api, "a")
    data = assert_ok(await api.put(f"/client/{a['id']}/update", json={"email_opted_out": True}))
    assert data["email_opted_out"] is True
    found = await messages(engine)
    assert found[("a@example.ru", 1)] == ("skipped", "Клиент отписался от писем проекта")
    assert found[(person("a")["phone"], 2)] == ("queued", None)
    assert found[("b@example.ru", 1)] == ("queued", None)

    # The import's opt-out of SMS does the same for b.
    rows = [{**person("b"), "sms_opted_out": "да"}]
    data = assert_ok(await api.post("/client/import", json={"project": "010", "clients": rows}))
    assert data["updated"] == 1, data
    found = await messages(engine)
    assert found[(person("b")["phone"], 2)] == ("skipped", "Клиент отписался от SMS проекта")
    assert found[("b@example.ru", 1)] == ("queued", None)

    # Subscribed again: the next run queues a's email.
    assert_ok(await api.put(f"/client/{a['id']}/update", json={"email_opted_out": False}))
    await mailing(api, project_id, template_id, channels=[1])
    [again] = await start(engine)
    assert (await run_messages(engine, again))[("a", 1)] == ("queued", None)


async def test_only_consenting_clients_receive_an_advertising_mailing_over_smtp(
    api: httpx.AsyncClient, engine: AsyncEngine, smtp: SmtpPeer, start_worker: StartWorker
) -> None:
    project_id, template_id = await setup(
        api,
        [
            person("yes", email_consent="granted", email_consent_source="сайт"),
            person("no", email_consent="denied"),
            person("unknown"),
        ],
    )
    await mailing(api, project_id, template_id, channels=[1], kind="advertising")
    await start_worker()
    await until(lambda: all_final(engine))
    assert {str(message["To"]) for message in smtp.received} == {"yes@example.ru"}
    found = await messages(engine)
    assert found[("yes@example.ru", 1)][0] == "sent"
    assert found[("no@example.ru", 1)] == ("skipped", "Нет согласия на рекламу по email")
    assert found[("unknown@example.ru", 1)] == ("skipped", "Нет согласия на рекламу по email")


# -- the dashboard ---------------------------------------------------------------------------


async def test_the_dashboard_edits_consent_and_opt_outs_and_sets_the_kind(
    api: httpx.AsyncClient,
) -> None:
    project_id, template_id = await setup(
        api, [person("a", email_consent="granted", email_consent_source="сайт")]
    )
    client_id = int((await by_guid(api, "a"))["id"])
    stamped = (await read_client(api, client_id))["email_consent_at"]
    card = await api.get(f"/ui/client/{client_id}")
    assert card.status_code == 200
    assert re.search(r'<option value="granted"\s+selected>', card.text)
    assert 'value="сайт"' in card.text
    assert "Отписался от писем проекта" in card.text

    saved = await post_form(
        api,
        f"/ui/client/{client_id}",
        {
            "guid": "a",
            "first_name": "Имя",
            "last_name": "Фамилия",
            "email": "a@example.ru",
            "email_consent": "granted",  # unchanged: its moment stays
            "email_consent_source": "сайт",
            "sms_consent": "denied",
            "sms_consent_source": "звонок",
            "sms_opted_out": "on",
        },
    )
    assert saved.status_code == 303, saved.text
    stored = await read_client(api, client_id)
    assert stored["email_consent_at"] == stamped
    assert (stored["sms_consent"], stored["sms_consent_source"]) == ("denied", "звонок")
    assert stored["sms_consent_at"] is not None
    assert (stored["sms_opted_out"], stored["email_opted_out"]) == (True, False)
    assert "без SMS" in (await api.get(f"/ui/project/{project_id}/clients")).text

    made = await post_form(
        api,
        f"/ui/project/{project_id}/mailings",
        {
            "name": "Акция",
            "template_id": str(template_id),
            "channels": "email",
            "kind": "advertising",
            "when": "now",
            "start": "0",
        },
    )
    assert made.status_code == 303, made.text
    mailing_id = int(made.headers["location"].split("/")[-1])
    assert assert_ok(await api.get(f"/mailing/{mailing_id}"), 200)["kind"] == "advertising"
    page = await api.get(f"/ui/mailing/{mailing_id}")
    assert "рекламная (только с согласием на канал)" in page.text


async def test_opting_out_of_everything_and_a_channel_at_once_skips_each_message_once(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    project_id, template_id = await setup(api, [person("a"), person("b")])
    await mailing(api, project_id, template_id)
    await start(engine)
    a = await by_guid(api, "a")
    assert_ok(
        await api.put(f"/client/{a['id']}/update", json={"opted_out": True, "sms_opted_out": True})
    )
    found = await messages(engine)
    assert found[("a@example.ru", 1)] == ("skipped", "Клиент отказался от рассылок")
    assert found[(person("a")["phone"], 2)] == ("skipped", "Клиент отказался от рассылок")
    assert found[("b@example.ru", 1)] == ("queued", None)
    async with engine.connect() as connection:
        events = (
            await connection.execute(
                select(MessageEvent.message_id, MessageEvent.status)
                .join(Message, Message.id == MessageEvent.message_id)
                .where(Message.client_id == a["id"])
                .order_by(MessageEvent.id)
            )
        ).all()
    assert [status for _, status in events] == ["skipped", "skipped"]
    assert len({message_id for message_id, _ in events}) == 2
