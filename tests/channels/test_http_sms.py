"""The HTTP SMS transport against a real HTTP server (uvicorn + Starlette) on 127.0.0.1.

The provider is ``http_sms_peer.Provider``.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from http_sms_peer import API_KEY, Answer, Provider
from rassylka.channels.base import (
    Accepted,
    ChannelKind,
    OutboundMessage,
    Outcome,
    PermanentChannelError,
    TransientChannelError,
)
from rassylka.channels.http_sms import HttpSmsChannel, HttpSmsConfig, render
from rassylka.config import Settings

TOKEN = "Bearer s3cret-token"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def sms_to(to: str, id: int = 1, text: str = "Привет!") -> OutboundMessage:
    return OutboundMessage(id=id, kind=ChannelKind.SMS, to=to, text=text)


def accepted(outcomes: list[Outcome]) -> list[Accepted]:
    assert all(isinstance(outcome, Accepted) for outcome in outcomes), outcomes
    return [outcome for outcome in outcomes if isinstance(outcome, Accepted)]


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    server = Provider()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def make_channel() -> AsyncIterator[Callable[..., HttpSmsChannel]]:
    channels: list[HttpSmsChannel] = []

    def make(url: str, **options: Any) -> HttpSmsChannel:
        settings: dict[str, Any] = {
            "headers": {"Authorization": TOKEN},
            "source": "Rassylka",
            "success_field": "status",
            "id_field": "result.id",
            "timeout": 5.0,
        }
        channel = HttpSmsChannel(HttpSmsConfig(url=url, **{**settings, **options}))
        channels.append(channel)
        return channel

    yield make
    for channel in channels:
        await channel.close()


async def test_json_request_carries_the_fields_and_the_id_comes_back(
    provider: Provider, make_channel: Callable[..., HttpSmsChannel]
) -> None:
    text = "Привет, {name}! Код {to} {0} {{source}} — {"  # braces are text, not templates
    long_text = "Ваш заказ собран. " * 5  # 90 UCS-2 units: two parts

    first, second = accepted(
        await make_channel(provider.url).send(
            [sms_to("+79990000001", id=7, text=text), sms_to("+79990000002", id=8, text=long_text)]
        )
    )

    seen = {request.fields["to"]: request for request in provider.requests}
    request = seen["+79990000001"]
    assert request.content_type == "application/json"
    assert request.fields == {"to": "+79990000001", "text": text, "from": "Rassylka"}
    assert request.headers["authorization"] == TOKEN
    assert request.query == f"key={API_KEY}"
    assert seen["+79990000002"].fields["text"] == long_text
    assert {first.peer_message_id, second.peer_message_id} == {"prov-1", "prov-2"}
    assert (first.parts, second.parts) == (1, 2)
    assert first.reply.startswith('200 OK: {"status":"ok","result":{"id":"prov-')


async def test_form_request_with_custom_fields(
    provider: Provider, make_channel: Callable[..., HttpSmsChannel]
) -> None:
    channel = make_channel(
        provider.url,
        format="form",
        fields={
            "phones": "{to}",
            "mes": "{text}",
            "sender": "{source}",
            "client_ref": "rassylka-{id}",
            "fmt": "3",
        },
    )
    text = "Скидка 20% & «подарок» = {text}?"

    accepted(await channel.send([sms_to("+79990000001", id=42, text=text)]))

    [request] = provider.requests
    assert request.content_type == "application/x-www-form-urlencoded"
    assert request.fields == {
        "phones": "+79990000001",
        "mes": text,
        "sender": "Rassylka",
        "client_ref": "rassylka-42",
        "fmt": "3",
    }
    assert "%D0%A1%D0%BA%D0%B8%D0%B4%D0%BA%D0%B0" in request.raw.decode("ascii")  # "Скидка"


async def test_empty_source_is_left_out(
    provider: Provider, make_channel: Callable[..., HttpSmsChannel]
) -> None:
    accepted(await make_channel(provider.url, source="").send([sms_to("+79990000001")]))

    [request] = provider.requests
    assert request.fields == {"to": "+79990000001", "text": "Привет!"}


async def test_a_message_with_its_projects_sender_goes_from_it(
    provider: Provider, make_channel: Callable[..., HttpSmsChannel]
) -> None:
    own = OutboundMessage(id=1, kind=ChannelKind.SMS, to="+79990000001", text="А", source="SHOP")
    accepted(await make_channel(provider.url).send([own, sms_to("+79990000002")]))

    senders = {request.fields["to"]: request.fields.get("from") for request in provider.requests}
    assert senders == {"+79990000001": "SHOP", "+79990000002": "Rassylka"}


async def test_each_answer_is_classified(
    provider: Provider, make_channel: Callable[..., HttpSmsChannel]
) -> None:
    provider.answers = {
        "throttled": Answer(429, {"error": "too many requests"}, {"Retry-After": "17"}),
        "unavailable": Answer(503, "Service Unavailable", {"Retry-After": "120"}),
        "broken": Answer(500, {"error": "internal"}),
        "request-timeout": Answer(408, "slow upload"),
        "invalid": Answer(400, {"status": "error", "message": "Неверный номер"}),
        "unauthorised": Answer(401, {"status": "error", "message": "bad token"}),
        "moved": Answer(302, "", {"Location": "https://elsewhere.example/api"}),
        "refused": Answer(200, {"status": "error", "message": "Недостаточно средств"}),
        "not-json": Answer(200, "OK"),
        "no-status": Answer(200, {"result": {"id": "x"}}),
        "created": Answer(201, {"status": "ok", "result": {"id": 12345}}),
    }
    destinations = [*provider.answers, "plain-ok"]
    batch = [sms_to(to, id=n) for n, to in enumerate(destinations)]

    outcomes = dict(zip(destinations, await make_channel(provider.url).send(batch), strict=True))

    def transient(to: str, code: int) -> str:
        outcome = outcomes[to]
        assert isinstance(outcome, TransientChannelError), (to, outcome)
        assert outcome.code == code
        return outcome.reply

    def permanent(to: str, code: int) -> str:
        outcome = outcomes[to]
        assert isinstance(outcome, PermanentChannelError), (to, outcome)
        assert outcome.code == code
        return outcome.reply

    assert transient("throttled", 429) == (
        '429 Too Many Requests (Retry-After: 17): {"error":"too many requests"}'
    )
    assert transient("unavailable", 503) == (
        "503 Service Unavailable (Retry-After: 120): Service Unavailable"
    )
    assert transient("broken", 500) == '500 Internal Server Error: {"error":"internal"}'
    assert transient("request-timeout", 408).startswith("408 Request Timeout")
    assert "Неверный номер" in permanent("invalid", 400)
    assert permanent("unauthorised", 401).startswith("401 Unauthorized: ")
    assert permanent("moved", 302) == "302 Found (Location: https://elsewhere.example/api)"
    assert permanent("refused", 200) == (
        '200 OK: {"status":"error","message":"Недостаточно средств"}'
    )
    assert permanent("not-json", 200) == "200 OK: OK (not JSON; expected 'status' in it)"
    assert "no 'status' in the answer" in permanent("no-status", 200)
    created = outcomes["created"]
    assert isinstance(created, Accepted)
    assert created.peer_message_id == "12345"
    assert isinstance(outcomes["plain-ok"], Accepted)
    assert len(provider.requests) == len(destinations)  # one request each, no redirect followed


async def test_success_value_is_compared_as_json_text(
    provider: Provider, make_channel: Callable[..., HttpSmsChannel]
) -> None:
    provider.answers = {
        "yes": Answer(200, {"response": [{"ok": True, "sms_id": "a1"}]}),
        "no": Answer(200, {"response": [{"ok": False, "error": "blacklisted"}]}),
    }
    channel = make_channel(
        provider.url,
        success_field="response.0.ok",
        success_value="true",
        id_field="response.0.sms_id",
    )

    yes, no = await channel.send([sms_to("yes", id=1), sms_to("no", id=2)])

    assert isinstance(yes, Accepted)
    assert yes.peer_message_id == "a1"
    assert isinstance(no, PermanentChannelError)
    assert "blacklisted" in no.reply


async def test_without_a_success_field_any_2xx_is_accepted(
    provider: Provider, make_channel: Callable[..., HttpSmsChannel]
) -> None:
    provider.answers = {
        "text": Answer(200, "OK 1 SMS"),
        "error-in-json": Answer(200, {"status": "error"}),
        "no-id": Answer(202, {"queued": True}),
    }
    channel = make_channel(provider.url, success_field=None)

    text, error_in_json, no_id = accepted(
        await channel.send([sms_to("text"), sms_to("error-in-json"), sms_to("no-id")])
    )

    assert (text.peer_message_id, text.reply) == (None, "200 OK: OK 1 SMS")
    assert error_in_json.peer_message_id is None
    assert no_id.peer_message_id is None
    assert no_id.reply.startswith("202 Accepted")


async def test_a_long_answer_is_cut_in_the_reply(
    provider: Provider, make_channel: Callable[..., HttpSmsChannel]
) -> None:
    provider.answers = {"long": Answer(400, "Ошибка:\n" + "подробности " * 200)}

    [outcome] = await make_channel(provider.url).send([sms_to("long")])

    assert isinstance(outcome, PermanentChannelError)
    excerpt = outcome.reply.removeprefix("400 Bad Request: ")
    assert len(excerpt) == 500
    assert excerpt.startswith("Ошибка: подробности подробности")
    assert excerpt.endswith("…")


async def test_concurrency_is_limited_and_connections_kept_alive(
    provider: Provider, make_channel: Callable[..., HttpSmsChannel]
) -> None:
    provider.delay = 0.05
    channel = make_channel(provider.url, concurrency=3)

    accepted(await channel.send([sms_to(f"+7999000{n:04d}", id=n) for n in range(15)]))
    first_connections = provider.connections
    accepted(await channel.send([sms_to(f"+7999100{n:04d}", id=n) for n in range(6)]))

    assert len(provider.requests) == 21
    assert provider.max_in_flight == 3
    assert len(first_connections) == 3
    assert provider.connections == first_connections  # the second batch reused them


async def test_connection_refused_is_transient_and_keeps_the_key_out(
    make_channel: Callable[..., HttpSmsChannel],
) -> None:
    port = free_port()
    channel = make_channel(f"http://127.0.0.1:{port}/api/send?key={API_KEY}")

    outcomes = await channel.send([sms_to(f"+7999000000{n}", id=n) for n in range(3)])

    for outcome in outcomes:
        assert isinstance(outcome, TransientChannelError)
        assert outcome.code is None
        assert outcome.reply.startswith(f"cannot reach http://127.0.0.1:{port}: ")
        assert API_KEY not in outcome.reply


async def test_timeout_is_transient(
    provider: Provider, make_channel: Callable[..., HttpSmsChannel]
) -> None:
    provider.answers = {"slow": Answer(delay=30)}
    channel = make_channel(provider.url, timeout=0.3)

    slow, fast = await asyncio.wait_for(channel.send([sms_to("slow"), sms_to("fast")]), 5)

    assert isinstance(slow, TransientChannelError)
    assert slow.reply.startswith("no answer from http://127.0.0.1:")
    assert "within 0.3 s (ReadTimeout)" in slow.reply
    assert isinstance(fast, Accepted)


async def test_unsendable_messages_are_permanent_without_a_request(
    provider: Provider, make_channel: Callable[..., HttpSmsChannel]
) -> None:
    batch = [
        sms_to("+79990000001", id=1, text="Ж" * (67 * 255 + 1)),
        sms_to("+79990000002", id=2, text="lone \ud800 surrogate"),
        OutboundMessage(id=3, kind=ChannelKind.EMAIL, to="ivan@example.ru", text="Привет"),
        sms_to("+79990000004", id=4),
    ]

    *unsendable, good = await make_channel(provider.url).send(batch)

    assert all(isinstance(outcome, PermanentChannelError) for outcome in unsendable), unsendable
    assert isinstance(good, Accepted)
    assert [request.fields["to"] for request in provider.requests] == ["+79990000004"]


async def test_an_injected_transport_replaces_the_network() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"status": "ok", "id": json.loads(request.content)["to"]})

    config = HttpSmsConfig(url="https://sms.example/api", success_field="status", id_field="id")
    channel = HttpSmsChannel(config, transport=httpx.MockTransport(answer))
    try:
        [outcome] = accepted(await channel.send([sms_to("+79990000001")]))
    finally:
        await channel.close()

    assert outcome.peer_message_id == "+79990000001"


def test_render_substitutes_only_the_four_names_in_one_pass() -> None:
    values = {"to": "+7999", "text": "{source} {id} {0} {", "source": "Shop", "id": "5"}

    assert render("{to}|{text}|{source}|{id}|{{to}}|{}|%s", values) == (
        "+7999|{source} {id} {0} {|Shop|5|{+7999}|{}|%s"
    )


def test_config_from_settings_and_validation() -> None:
    settings = Settings(
        sms_http_url="https://sms.example/api/send",
        sms_http_format="form",
        sms_http_headers={"Authorization": "Bearer abc"},
        sms_http_fields={"phone": "{to}", "msg": "{text}"},
        sms_http_source="Shop",
        sms_http_success_field="result.status",
        sms_http_success_value="0",
        sms_http_id_field="result.id",
        sms_http_timeout=3,
        sms_http_concurrency=2,
    )

    assert HttpSmsConfig.from_settings(settings) == HttpSmsConfig(
        url="https://sms.example/api/send",
        format="form",
        headers={"Authorization": "Bearer abc"},
        fields={"phone": "{to}", "msg": "{text}"},
        source="Shop",
        success_field="result.status",
        success_value="0",
        id_field="result.id",
        timeout=3.0,
        concurrency=2,
    )
    assert HttpSmsConfig.from_settings(Settings(sms_http_url="http://x")).fields == {
        "to": "{to}",
        "text": "{text}",
        "from": "{source}",
    }
    with pytest.raises(ValueError, match="RASSYLKA_SMS_HTTP_URL"):
        HttpSmsConfig.from_settings(Settings())
    with pytest.raises(ValueError, match=r"\{phone\}"):
        HttpSmsConfig(url="http://x", fields={"to": "{phone}"})
    with pytest.raises(ValueError, match="http"):
        HttpSmsConfig(url="ftp://sms.example/")
    with pytest.raises(ValueError, match="dotted path"):
        HttpSmsConfig(url="http://x", success_field="result..status")
