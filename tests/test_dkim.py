"""DKIM signing per project (issue 9, point 2): set through the API, signed on the way out,
verified by dkimpy against the DNS record docs/deliverability.md tells the user to publish."""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import dkim
import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from conftest import StartWorker
from helpers import assert_error, assert_ok, fields
from rassylka.channels.base import Accepted, ChannelKind, OutboundMessage
from rassylka.channels.dkim import DkimKey
from rassylka.channels.outbox import OutboxChannel
from smtp_peer import SmtpPeer

# `two` is test_api_keys's fixture (projects A and B, a global key and A's key), used here.
from test_api_keys import FORBIDDEN, Two, two  # noqa: F401
from test_dispatcher import all_final, arrange, client, statuses, until

DOMAIN = "shop.example.ru"
SELECTOR = "rassylka"


@pytest.fixture(scope="module")
def key_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """An RSA 2048 key made with the commands the docs give, and the TXT record's text."""
    directory = tmp_path_factory.mktemp("dkim")
    key = directory / "shop.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    public = subprocess.run(
        ["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
    return key, record


def dns_stub(record: bytes):  # type: ignore[no-untyped-def]
    """A resolver for dkimpy's ``dnsfunc``: a test double, because no DNS server we could
    publish to runs here. It answers the one name the docs tell the user to publish, with the
    record they give, and nothing else."""

    def get_txt(name: bytes, timeout: float = 5) -> bytes | None:
        if name == f"{SELECTOR}._domainkey.{DOMAIN}.".encode() or name == (
            f"{SELECTOR}._domainkey.{DOMAIN}".encode()
        ):
            return record
        return None

    return get_txt


def dkim_fields(key: Path) -> dict[str, str]:
    return {"dkim_domain": DOMAIN, "dkim_selector": SELECTOR, "dkim_key_path": str(key)}


async def test_a_project_with_dkim_signs_its_email_and_the_published_record_verifies_it(
    api: httpx.AsyncClient,
    engine: AsyncEngine,
    smtp: SmtpPeer,
    start_worker: StartWorker,
    key_pair: tuple[Path, bytes],
) -> None:
    key, record = key_pair
    await arrange(
        api,
        [client(1, "anna@example.ru"), client(2, "boris@example.ru")],
        email_subject="Скидки для {{ first_name }}",
        email_text="Здравствуйте, {{ first_name }}!\nСкидка 10%.",
        email_html="<p>Здравствуйте, <b>{{ first_name }}</b>!</p>",
    )
    project = assert_ok(await api.get("/project/list"), 200)["items"][0]
    updated = assert_ok(await api.put(f"/project/{project['id']}/update", json=dkim_fields(key)))
    assert {name: updated[name] for name in dkim_fields(key)} == dkim_fields(key)
    await start_worker()
    await until(lambda: all_final(engine))
    assert {row["status"] for row in (await statuses(engine)).values()} == {"sent"}
    assert len(smtp.raw) == 2
    resolve = dns_stub(record)
    for raw in smtp.raw:
        assert raw.startswith(b"DKIM-Signature: "), "prepended to the bytes sent"
        signature = dkim.DKIM(raw)
        assert signature.verify(dnsfunc=resolve) is True
        tags = signature.signature_fields
        assert tags[b"d"] == DOMAIN.encode()
        assert tags[b"s"] == SELECTOR.encode()
        assert tags[b"c"] == b"relaxed/relaxed"
        signed = set(signature.include_headers)
        assert {b"from", b"to", b"subject", b"date", b"message-id", b"mime-version"} <= signed
        assert b"content-type" in signed
        head, body = raw.split(b"\r\n\r\n", 1)
        assert not dkim.verify(head + b"\r\n\r\n" + body.replace(b"10%", b"90%"), dnsfunc=resolve)
        assert not dkim.verify(raw.replace(b"Subject: ", b"Subject: RE: ", 1), dnsfunc=resolve)
        assert not dkim.verify(raw, dnsfunc=dns_stub(b"v=DKIM1; k=rsa; p=" + b"A" * 40))


async def test_a_project_without_dkim_sends_unsigned(
    api: httpx.AsyncClient, engine: AsyncEngine, smtp: SmtpPeer, start_worker: StartWorker
) -> None:
    await arrange(api, [client(1, "anna@example.ru")])
    project = assert_ok(await api.get("/project/list"), 200)["items"][0]
    assert project["dkim_domain"] is None
    await start_worker()
    await until(lambda: all_final(engine))
    assert len(smtp.raw) == 1
    assert b"dkim-signature" not in smtp.raw[0].lower()


async def test_a_key_gone_at_send_time_fails_the_message_with_the_reason(
    api: httpx.AsyncClient,
    engine: AsyncEngine,
    smtp: SmtpPeer,
    start_worker: StartWorker,
    tmp_path: Path,
    key_pair: tuple[Path, bytes],
) -> None:
    key = tmp_path / "moved.pem"
    key.write_bytes(key_pair[0].read_bytes())
    await arrange(api, [client(1, "anna@example.ru")])
    project = assert_ok(await api.get("/project/list"), 200)["items"][0]
    assert_ok(await api.put(f"/project/{project['id']}/update", json=dkim_fields(key)))
    key.unlink()
    await start_worker()
    await until(lambda: all_final(engine))
    row = (await statuses(engine))["anna@example.ru"]
    assert row["status"] == "failed"
    assert "DKIM" in row["reason"]
    assert str(key) in row["reason"]
    assert row["attempts"] == 1, "permanent: retrying cannot bring the key back"
    assert smtp.raw == [], "never sent unsigned instead"


async def test_dkim_is_set_at_create_and_turned_off_with_three_nulls(
    api: httpx.AsyncClient, key_pair: tuple[Path, bytes]
) -> None:
    body = {"name": "Магазин", "code": "shop", **dkim_fields(key_pair[0])}
    created = assert_ok(await api.post("/project/create", json=body))
    assert created["dkim_selector"] == SELECTOR
    off = {"dkim_domain": None, "dkim_selector": None, "dkim_key_path": None}
    updated = assert_ok(await api.put(f"/project/{created['id']}/update", json=off))
    assert updated["dkim_domain"] is None
    assert updated["dkim_key_path"] is None
    read = assert_ok(await api.get(f"/project/{created['id']}"), 200)
    assert read["dkim_selector"] is None


async def test_a_bad_dkim_key_path_or_a_partial_setting_is_a_400(
    api: httpx.AsyncClient, tmp_path: Path, key_pair: tuple[Path, bytes]
) -> None:
    not_a_key = tmp_path / "note.pem"
    not_a_key.write_text("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (tmp_path / "missing.pem", not_a_key, tmp_path, fifo, Path("/dev/zero")):
        body = {"name": "Магазин", "code": "shop", **dkim_fields(path)}
        details = assert_error(
            await api.post("/project/create", json=body), 400, "Ошибка валидации"
        )
        assert fields(details) == {"dkim_key_path"}
        assert "ключ" in details[0]["message"]
    partial = {"name": "Магазин", "code": "shop", "dkim_domain": DOMAIN}
    details = assert_error(await api.post("/project/create", json=partial), 400, "Ошибка валидации")
    assert "dkim_selector" in details[0]["message"]
    bad_domain = {"name": "Магазин", "code": "shop", **dkim_fields(key_pair[0])}
    bad_domain["dkim_domain"] = "not a domain"
    details = assert_error(
        await api.post("/project/create", json=bad_domain), 400, "Ошибка валидации"
    )
    assert fields(details) == {"dkim_domain"}
    project_id = assert_ok(await api.post("/project/create", json={"name": "М", "code": "m"}))["id"]
    update = await api.put(
        f"/project/{project_id}/update", json={"dkim_key_path": str(key_pair[0])}
    )
    assert_error(update, 400, "Ошибка валидации")
    assert assert_ok(await api.get(f"/project/{project_id}"), 200)["dkim_key_path"] is None


async def test_the_outbox_signs_too_and_reply_to_and_list_unsubscribe_are_signed(
    tmp_path: Path, key_pair: tuple[Path, bytes]
) -> None:
    key, record = key_pair
    channel = OutboxChannel(ChannelKind.EMAIL, tmp_path, sender="Магазин <news@shop.example.ru>")
    headers = {
        "Reply-To": "help@shop.example.ru",
        "List-Unsubscribe": "<https://shop.example.ru/u/1>, <mailto:u@shop.example.ru>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    message = OutboundMessage(
        id=1,
        kind=ChannelKind.EMAIL,
        to="anna@example.ru",
        subject="Привет",
        text="Текст",
        headers=headers,
        dkim=DkimKey(DOMAIN, SELECTOR, str(key)),
    )
    [outcome] = await channel.send([message])
    assert isinstance(outcome, Accepted), outcome
    raw = (tmp_path / outcome.reply).read_bytes()
    signature = dkim.DKIM(raw)
    assert signature.verify(dnsfunc=dns_stub(record)) is True
    signed = set(signature.include_headers)
    assert {b"reply-to", b"list-unsubscribe", b"list-unsubscribe-post"} <= signed


async def test_only_a_global_key_sets_dkim(
    two: Two,  # noqa: F811
    key_pair: tuple[Path, bytes],
) -> None:
    """A project's key may rename its project, but not point its signing at a file of the
    server (another project's key): that is for a global key."""
    update = f"/project/{two.a}/update"
    assert_error(await two.scoped.put(update, json=dkim_fields(key_pair[0])), 403, FORBIDDEN)
    assert_ok(await two.admin.put(update, json=dkim_fields(key_pair[0])))
    off = {"dkim_domain": None, "dkim_selector": None, "dkim_key_path": None}
    assert_error(await two.scoped.put(update, json=off), 403, FORBIDDEN)
