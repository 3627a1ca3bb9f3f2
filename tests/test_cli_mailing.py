"""``rassylka mailing list`` and ``mailing watch`` against a live API, and what every API
command does when nothing listens at ``--url``."""

from __future__ import annotations

import asyncio
import re
import socket

import httpx
import pytest

from cli_console import channel_counts, free_port, invoke, invoke_async
from conftest import LiveServer, StartServer, StartWorker
from helpers import assert_ok, make_project, make_template
from rassylka.config import Settings
from rassylka.events import bus
from smtp_peer import SmtpPeer
from test_dispatcher import arrange, client, until

SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"])


@SQLITE_ONLY
async def test_list_shows_the_mailings_and_filters_them(api: httpx.AsyncClient) -> None:
    project_id = await make_project(api)
    other_id = await make_project(api, code="020", name="Другой")
    template_id = await make_template(api, project_id)
    other_template = await make_template(api, other_id)
    for name, status, project, template in [
        ("Черновик новостей", 0, project_id, template_id),
        ("Акция", 2, project_id, template_id),
        ("Чужая", 0, other_id, other_template),
    ]:
        body = {
            "name": name,
            "project_id": project,
            "template_id": template,
            "status": status,
            "channels": ["email", "sms"],
            "event": "2030-01-01",
        }
        assert_ok(await api.post("/mailing/create", json=body))
    url = str(api.base_url)

    everything = await invoke_async("mailing", "list", "--url", url)
    assert everything.exit_code == 0, everything.output
    assert "Рассылки: 3 из 3" in everything.stdout
    for name in ("Черновик новостей", "Акция", "Чужая"):
        assert name in everything.stdout
    assert "email, sms" in everything.stdout

    drafts = await invoke_async(
        "mailing", "list", "--project", "010", "--status", "draft", "--url", url
    )
    assert drafts.exit_code == 0, drafts.output
    assert "Черновик новостей" in drafts.stdout
    assert "Акция" not in drafts.stdout
    assert "Чужая" not in drafts.stdout
    assert "черновик" in drafts.stdout

    paused = await invoke_async("mailing", "list", "--status", "2", "--url", url)
    assert "Рассылки: 1 из 1" in paused.stdout
    assert "приостановлена" in paused.stdout

    bad = await invoke_async("mailing", "list", "--status", "спит", "--url", url)
    assert bad.exit_code == 2
    assert bad.stderr.strip().startswith("Ошибка: Неизвестный статус «спит»")


async def stream_opened(server: LiveServer) -> None:
    """Until the server holds an SSE stream: its starting point is fixed by then, so every
    event after this is the watch's to hear."""

    def held() -> bool:
        return sum(getattr(server.app.state, "sse_streams", {}).values()) > 0

    await until(lambda: asyncio.sleep(0, held()))


async def test_watch_follows_a_mailing_until_it_is_done(
    api: httpx.AsyncClient, live_server: LiveServer, smtp: SmtpPeer, start_worker: StartWorker
) -> None:
    smtp.delay = 0.1  # the sends spread over a moment, so the stream has them to tell
    mailing_id = await arrange(
        api,
        [client(n, f"user{n}@example.ru") for n in range(6)]
        + [client(9, "never@example.ru"), client(10, "off@example.ru", opted_out=True)],
    )
    watching = asyncio.create_task(
        invoke_async("mailing", "watch", str(mailing_id), "--url", str(api.base_url))
    )
    await stream_opened(live_server)
    assert not watching.done()
    await start_worker()
    async with asyncio.timeout(30):
        result = await watching
    assert result.exit_code == 0, result.output
    assert f"Рассылка {mailing_id} «Новости»: завершена" in result.stdout
    # email: 6 sent, 1 failed (550), 1 skipped (opted out)
    assert channel_counts(result.stdout, "email") == [0, 6, 0, 0, 0, 1, 0, 1, 8], result.stdout
    events = re.search(r"событий: (\d+)", result.stdout)
    assert events is not None
    assert int(events.group(1)) == 8
    assert "sending → sent" in result.stdout


@SQLITE_ONLY
async def test_watch_waits_for_the_last_events_of_a_lagging_stream(
    monkeypatch: pytest.MonkeyPatch,
    api: httpx.AsyncClient,
    live_server: LiveServer,
    smtp: SmtpPeer,
    start_worker: StartWorker,
) -> None:
    """The server's stream reads new events every 1.5 s here (a loaded machine's lag), longer
    than the watch's look at the mailing's status: the watch still ends with every event."""
    monkeypatch.setattr(bus, "POLL_INTERVAL", 1.5)
    mailing_id = await arrange(api, [client(n, f"user{n}@example.ru") for n in range(4)])
    watching = asyncio.create_task(
        invoke_async("mailing", "watch", str(mailing_id), "--url", str(api.base_url))
    )
    await stream_opened(live_server)
    await start_worker()
    async with asyncio.timeout(30):
        result = await watching
    assert result.exit_code == 0, result.output
    assert "событий: 4" in result.stdout, result.stdout
    assert channel_counts(result.stdout, "email") == [0, 4, 0, 0, 0, 0, 0, 0, 4], result.stdout


async def test_watch_resumes_a_stream_the_server_ends_without_losing_an_event(
    start_server: StartServer, smtp: SmtpPeer, start_worker: StartWorker
) -> None:
    """The server ends every stream after 0.3 s (``event: reconnect``): the watch opens it
    again with Last-Event-ID, and hears each of the 8 events exactly once."""
    server = await start_server(sse_max_lifetime=0.3)
    smtp.delay = 0.1
    async with httpx.AsyncClient(base_url=server.url) as api:
        mailing_id = await arrange(
            api,
            [client(n, f"user{n}@example.ru") for n in range(6)]
            + [client(9, "never@example.ru"), client(10, "off@example.ru", opted_out=True)],
        )
    watching = asyncio.create_task(
        invoke_async("mailing", "watch", str(mailing_id), "--url", server.url)
    )
    await stream_opened(server)
    await asyncio.sleep(0.7)  # a few streams have ended and been resumed already
    await start_worker()
    async with asyncio.timeout(30):
        result = await watching
    assert result.exit_code == 0, result.output
    events = re.findall(r"^\s*(\d+)\s*│\s*\d\d:\d\d:\d\d", result.stdout, flags=re.MULTILINE)
    assert len(events) == len(set(events)) == 8, result.stdout  # the last 8: every one, once
    assert "событий: 8" in result.stdout


@SQLITE_ONLY
async def test_watch_waits_out_a_restart_of_the_api(
    start_server: StartServer,
    database_url: str,
    smtp: SmtpPeer,
    start_worker: StartWorker,
) -> None:
    """The API stops (its streams end, connections are refused) and comes back on the same
    port: the watch keeps trying, resumes after the last event it had, and sees the mailing
    through."""
    first = await start_server()
    async with httpx.AsyncClient(base_url=first.url) as api:
        mailing_id = await arrange(api, [client(n, f"user{n}@example.ru") for n in range(4)])
    watching = asyncio.create_task(
        invoke_async("mailing", "watch", str(mailing_id), "--url", first.url)
    )
    await stream_opened(first)
    await first.stop()
    await asyncio.sleep(1.5)  # refused a time or two
    assert not watching.done()
    second = LiveServer(Settings(database_url=database_url))
    second.socket.close()
    second.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    second.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    second.socket.bind(("127.0.0.1", first.port))
    await second.start()
    try:
        await stream_opened(second)
        await start_worker()
        async with asyncio.timeout(30):
            result = await watching
    finally:
        await second.stop()
    assert result.exit_code == 0, result.output
    assert f"Рассылка {mailing_id} «Новости»: завершена" in result.stdout
    assert "событий: 4" in result.stdout


@SQLITE_ONLY
async def test_the_api_key_goes_as_a_bearer_token(start_server: StartServer) -> None:
    server = await start_server(api_keys=["first-key"])
    allowed = await invoke_async("mailing", "list", "--url", server.url, "--api-key", "first-key")
    assert allowed.exit_code == 0, allowed.output
    assert "Рассылки: 0 из 0" in allowed.stdout
    refused = await invoke_async("mailing", "list", "--url", server.url)
    assert refused.exit_code == 2
    assert len(refused.stderr.strip().splitlines()) == 1
    assert refused.stderr.startswith("Ошибка")


@SQLITE_ONLY
async def test_watch_of_a_mailing_that_does_not_exist(api: httpx.AsyncClient) -> None:
    result = await invoke_async("mailing", "watch", "999", "--url", str(api.base_url))
    assert result.exit_code == 2
    assert result.stderr.startswith("Ошибка")
    assert "999" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args",
    [
        ["mailing", "list"],
        ["mailing", "watch", "1"],
        ["client", "import", "{csv}", "--project", "010"],
    ],
)
def test_connection_refused_is_one_line_and_exit_3(args: list[str], tmp_path: object) -> None:
    csv = f"{tmp_path}/clients.csv"
    with open(csv, "w", encoding="utf-8") as file:
        file.write("guid,first_name\nc1,Анна\n")
    url = f"http://127.0.0.1:{free_port()}"
    result = invoke(*[arg.format(csv=csv) for arg in args], "--url", url)
    assert result.exit_code == 3, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("Ошибка")]
    assert lines == [f"Ошибка: Не удалось подключиться к {url}: All connection attempts failed"]
    assert "Traceback" not in result.output


def test_the_url_and_the_key_come_from_the_environment() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = invoke("mailing", "list", env={"RASSYLKA_URL": url, "RASSYLKA_API_KEY": "k"})
    assert result.exit_code == 3
    assert url in result.stderr
