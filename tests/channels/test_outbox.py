"""The outbox transport, writing to a real directory (pytest's ``tmp_path``)."""

from __future__ import annotations

import asyncio
import email
import errno
import json
import re
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest

from rassylka.channels import outbox
from rassylka.channels.base import (
    Accepted,
    ChannelKind,
    OutboundMessage,
    Outcome,
    PermanentChannelError,
    TransientChannelError,
)
from rassylka.channels.outbox import OutboxChannel
from rassylka.config import Settings

SENDER = "Рассылка <rassylka@example.ru>"
FIXED = datetime(2025, 3, 1, 14, 25, 1, 123456, tzinfo=UTC)


def email_to(to: str, id: int = 1, **fields: Any) -> OutboundMessage:
    return OutboundMessage(id=id, kind=ChannelKind.EMAIL, to=to, text="Здравствуйте!", **fields)


def sms_to(to: str, id: int = 1, text: str = "Привет!") -> OutboundMessage:
    return OutboundMessage(id=id, kind=ChannelKind.SMS, to=to, text=text)


def accepted(outcomes: list[Outcome]) -> list[Accepted]:
    assert all(isinstance(outcome, Accepted) for outcome in outcomes), outcomes
    return [outcome for outcome in outcomes if isinstance(outcome, Accepted)]


def read_eml(directory: Path, outcome: Accepted) -> EmailMessage:
    data = (directory / outcome.reply).read_bytes()
    message = email.message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def body(part: EmailMessage | None) -> str:
    assert part is not None
    content: str = part.get_content()
    # The file holds what SMTP carries, CRLF line ends included; the parser keeps them.
    return content.replace("\r\n", "\n").rstrip("\n")


def sms_lines(directory: Path) -> list[dict[str, Any]]:
    text = (directory / "sms.jsonl").read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [json.loads(line) for line in text.split("\n")[:-1]]


def eml_files(directory: Path) -> list[Path]:
    return sorted((directory / "email").rglob("*.eml"))


def leftovers(directory: Path) -> list[Path]:
    return [path for path in directory.rglob("*") if path.name.endswith(".tmp")]


@pytest.fixture
def email_channel(tmp_path: Path) -> OutboxChannel:
    return OutboxChannel(ChannelKind.EMAIL, tmp_path / "outbox", sender=SENDER)


@pytest.fixture
def sms_channel(tmp_path: Path) -> OutboxChannel:
    return OutboxChannel(ChannelKind.SMS, tmp_path / "outbox")


async def test_email_is_written_as_the_message_smtp_would_carry(
    email_channel: OutboxChannel,
) -> None:
    subject = "Скидка 20% только сегодня — не пропустите!"
    text = "Здравствуйте, Иван!\nВаша скидка ждёт вас."
    html = "<p>Здравствуйте, <b>Иван</b>!</p>"
    message = OutboundMessage(
        id=42,
        kind=ChannelKind.EMAIL,
        to="Иван Петров <ivan@пример.рф>",
        text=text,
        subject=subject,
        html=html,
        headers={"List-Unsubscribe": "<mailto:unsubscribe@example.ru>"},
    )

    [outcome] = accepted(await email_channel.send([message]))

    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert re.fullmatch(rf"email/{today}/\d{{6}}\.\d{{6}}-42-1\.eml", outcome.reply)
    raw = (email_channel.directory / outcome.reply).read_bytes()
    assert b"\r\n" in raw
    assert "Здравствуйте".encode() in raw  # 8-bit body, readable as it is
    mail = read_eml(email_channel.directory, outcome)
    assert mail["Subject"] == subject
    assert str(mail["From"]) == SENDER
    assert str(mail["To"]) == "Иван Петров <ivan@xn--e1afmkfd.xn--p1ai>"
    assert mail["List-Unsubscribe"] == "<mailto:unsubscribe@example.ru>"
    assert mail["Message-ID"] == outcome.peer_message_id
    assert outcome.peer_message_id is not None
    assert outcome.peer_message_id.endswith("@example.ru>")
    assert abs(parsedate_to_datetime(mail["Date"]) - datetime.now(UTC)) < timedelta(minutes=1)
    assert mail.get_content_type() == "multipart/alternative"
    plain, rich = mail.get_body(("plain",)), mail.get_body(("html",))
    assert body(plain) == text
    assert body(rich) == html
    assert leftovers(email_channel.directory) == []


async def test_non_ascii_local_part_is_written_with_utf8_headers(
    email_channel: OutboxChannel,
) -> None:
    [outcome] = accepted(await email_channel.send([email_to("иван@example.ru")]))

    mail = read_eml(email_channel.directory, outcome)
    assert mail["To"] == "иван@example.ru"
    assert body(mail) == "Здравствуйте!"


async def test_many_emails_in_one_call(email_channel: OutboxChannel) -> None:
    batch = [email_to(f"client-{n}@example.ru", id=n, subject=f"Письмо №{n}") for n in range(60)]

    outcomes = accepted(await email_channel.send(batch))

    assert len(outcomes) == 60
    assert len({outcome.reply for outcome in outcomes}) == 60
    assert len({outcome.peer_message_id for outcome in outcomes}) == 60
    for number, outcome in enumerate(outcomes):
        assert f"-{number}-1.eml" in outcome.reply
        mail = read_eml(email_channel.directory, outcome)
        assert mail["To"] == f"client-{number}@example.ru"
        assert mail["Subject"] == f"Письмо №{number}"
    assert len(eml_files(email_channel.directory)) == 60


async def test_names_sort_by_time_of_writing(tmp_path: Path) -> None:
    times = iter([FIXED, FIXED + timedelta(seconds=1), FIXED + timedelta(days=1)])
    channel = OutboxChannel(ChannelKind.EMAIL, tmp_path, clock=lambda: next(times))

    outcomes = accepted(
        await channel.send([email_to("a@example.ru", id=9), email_to("b@example.ru", id=10)])
    )
    outcomes += accepted(await channel.send([email_to("c@example.ru", id=8)]))

    assert [outcome.reply for outcome in outcomes] == [
        "email/2025-03-01/142501.123456-9-1.eml",
        "email/2025-03-01/142502.123456-10-1.eml",
        "email/2025-03-02/142501.123456-8-1.eml",
    ]
    assert [path.relative_to(tmp_path).as_posix() for path in eml_files(tmp_path)] == [
        outcome.reply for outcome in outcomes
    ]


async def test_two_channels_writing_the_same_ids_never_overwrite(tmp_path: Path) -> None:
    first = OutboxChannel(ChannelKind.EMAIL, tmp_path, clock=lambda: FIXED)
    second = OutboxChannel(ChannelKind.EMAIL, tmp_path, clock=lambda: FIXED)
    batch = [email_to(f"client-{n}@example.ru", id=n) for n in range(20)]

    outcomes_a, outcomes_b = await asyncio.gather(first.send(batch), second.send(batch))
    outcomes_c = await first.send(batch[:1])  # a retry of one of them

    outcomes = accepted(outcomes_a) + accepted(outcomes_b) + accepted(outcomes_c)
    assert len({outcome.reply for outcome in outcomes}) == 41
    assert len(eml_files(tmp_path)) == 41
    for number in range(20):
        suffixes = {"1", "2"} if number else {"1", "2", "3"}
        names = {p.name for p in eml_files(tmp_path) if f"-{number}-" in p.name}
        assert names == {f"142501.123456-{number}-{suffix}.eml" for suffix in suffixes}
    # Each file holds the message its outcome names.
    for outcome in outcomes:
        assert read_eml(tmp_path, outcome)["Message-ID"] == outcome.peer_message_id
    assert leftovers(tmp_path) == []


async def test_without_hard_links_names_are_reserved_instead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(source: object, target: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(outbox.os, "link", no_links)
    channel = OutboxChannel(ChannelKind.EMAIL, tmp_path, clock=lambda: FIXED)

    outcomes = accepted(await channel.send([email_to("a@example.ru"), email_to("b@example.ru")]))

    assert [outcome.reply for outcome in outcomes] == [
        "email/2025-03-01/142501.123456-1-1.eml",
        "email/2025-03-01/142501.123456-1-2.eml",
    ]
    assert [read_eml(tmp_path, outcome)["To"] for outcome in outcomes] == [
        "a@example.ru",
        "b@example.ru",
    ]
    assert leftovers(tmp_path) == []


async def test_unusable_emails_are_permanent_and_the_rest_written(
    email_channel: OutboxChannel,
) -> None:
    batch = [
        email_to("not an address", id=1),
        email_to("ok@example.ru", id=2, headers={"X-Bad": "a\r\nBcc: spy@example.ru"}),
        email_to("ok@example.ru", id=3, headers={"Content-Type": "text/html"}),
        sms_to("+79990000000", id=4),
        email_to("ok@example.ru", id=5),
    ]

    *unusable, good = await email_channel.send(batch)

    assert all(isinstance(outcome, PermanentChannelError) for outcome in unusable), unusable
    assert isinstance(good, Accepted)
    assert len(eml_files(email_channel.directory)) == 1


async def test_sms_lines(sms_channel: OutboxChannel) -> None:
    long_latin = "Your code is 1234. " * 10  # 190 septets: two GSM-7 parts
    batch = [
        sms_to("+79990000001", id=1, text="Привет, Иван! Скидка {20%}"),
        sms_to("+79990000002", id=2, text=long_latin),
        sms_to("+79990000003", id=3, text="Строка 1\nСтрока 2\u2028«конец»"),
    ]

    outcomes = accepted(await sms_channel.send(batch))

    lines = sms_lines(sms_channel.directory)
    assert [(line["id"], line["to"], line["text"]) for line in lines] == [
        (m.id, m.to, m.text) for m in batch
    ]
    assert [(line["parts"], line["coding"]) for line in lines] == [
        (1, "ucs2"),
        (2, "gsm7"),
        (1, "ucs2"),
    ]
    assert [outcome.parts for outcome in outcomes] == [1, 2, 1]
    for line in lines:
        assert abs(datetime.fromisoformat(line["at"]) - datetime.now(UTC)) < timedelta(minutes=1)
    # Every line is a line to any reader, str.splitlines included.
    content = (sms_channel.directory / "sms.jsonl").read_text(encoding="utf-8")
    assert len(content.splitlines()) == 3
    assert "Привет".encode() in (sms_channel.directory / "sms.jsonl").read_bytes()
    # The reply points at the line.
    raw = (sms_channel.directory / "sms.jsonl").read_bytes()
    for outcome, line in zip(outcomes, lines, strict=True):
        offset = int(outcome.reply.removeprefix("sms.jsonl at byte "))
        assert json.loads(raw[offset:].split(b"\n", 1)[0]) == line


async def test_sms_lines_record_the_sender(tmp_path: Path) -> None:
    channel = OutboxChannel(ChannelKind.SMS, tmp_path / "outbox", sms_source="Rassylka")
    own = OutboundMessage(id=1, kind=ChannelKind.SMS, to="+79990000001", text="А", source="SHOP")

    accepted(await channel.send([own, sms_to("+79990000002", id=2, text="Б")]))

    assert [line["source"] for line in sms_lines(channel.directory)] == ["SHOP", "Rassylka"]


async def test_many_sms_from_two_channels_at_once_stay_whole_lines(tmp_path: Path) -> None:
    first = OutboxChannel(ChannelKind.SMS, tmp_path)
    second = OutboxChannel(ChannelKind.SMS, tmp_path)
    text = "Ваш заказ №{n} собран и ждёт вас в пункте выдачи. " * 3

    calls = [
        channel.send([sms_to(f"+799{call:02d}{which}{n:04d}", id=n, text=text) for n in range(100)])
        for call in range(6)
        for which, channel in enumerate((first, second))
    ]
    results = await asyncio.gather(*calls)

    assert all(len(accepted(outcomes)) == 100 for outcomes in results)
    lines = sms_lines(tmp_path)
    assert len(lines) == 1200
    assert {line["text"] for line in lines} == {text}
    assert len({line["to"] for line in lines}) == 1200


async def test_second_batch_appends(sms_channel: OutboxChannel) -> None:
    accepted(await sms_channel.send([sms_to("+79990000001", id=1)]))
    accepted(await sms_channel.send([sms_to("+79990000002", id=2)]))

    assert [line["id"] for line in sms_lines(sms_channel.directory)] == [1, 2]


async def test_unsendable_sms_are_permanent_and_the_rest_written(
    sms_channel: OutboxChannel,
) -> None:
    batch = [
        sms_to("+79990000001", id=1, text="Ж" * (67 * 255 + 1)),  # 256 UCS-2 parts
        sms_to("+79990000002", id=2, text="lone \ud800 surrogate"),
        email_to("ivan@example.ru", id=3),
        sms_to("+79990000004", id=4),
    ]

    too_long, surrogate, not_sms, good = await sms_channel.send(batch)

    assert isinstance(too_long, PermanentChannelError)
    assert "256 parts" in too_long.reply
    assert isinstance(surrogate, PermanentChannelError)
    assert isinstance(not_sms, PermanentChannelError)
    assert isinstance(good, Accepted)
    assert [line["id"] for line in sms_lines(sms_channel.directory)] == [4]


def permissions_apply(directory: Path) -> bool:
    """Whether this process is refused a read-only directory (root, as a rule, is not)."""
    probe = directory / "probe"
    probe.mkdir(mode=0o555)
    try:
        (probe / "file").touch()
    except PermissionError:
        return True
    finally:
        probe.chmod(0o755)
    return False


@pytest.mark.parametrize("kind", [ChannelKind.EMAIL, ChannelKind.SMS])
async def test_read_only_directory_is_transient(tmp_path: Path, kind: ChannelKind) -> None:
    if not permissions_apply(tmp_path):
        pytest.skip("this process writes to read-only directories anyway (root)")
    directory = tmp_path / "outbox"
    (directory / "email").mkdir(parents=True)
    directory.chmod(0o555)
    (directory / "email").chmod(0o555)
    channel = OutboxChannel(kind, directory)
    message = email_to("ivan@example.ru") if kind is ChannelKind.EMAIL else sms_to("+7999")

    try:
        outcomes = await channel.send([message, message])
    finally:
        (directory / "email").chmod(0o755)
        directory.chmod(0o755)

    for outcome in outcomes:
        assert isinstance(outcome, TransientChannelError)
        assert "Permission denied" in outcome.reply


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
async def test_disk_full_is_transient(sms_channel: OutboxChannel) -> None:
    sms_channel.directory.mkdir(parents=True)
    (sms_channel.directory / "sms.jsonl").symlink_to("/dev/full")

    outcomes = await sms_channel.send([sms_to("+79990000001", id=1), sms_to("+7999", id=2)])

    for outcome in outcomes:
        assert isinstance(outcome, TransientChannelError)
        assert "No space left on device" in outcome.reply


async def test_unusable_directory_is_transient(tmp_path: Path) -> None:
    blocked = tmp_path / "outbox"
    blocked.write_text("a file where the directory should be")

    for kind, message in [
        (ChannelKind.EMAIL, email_to("ivan@example.ru")),
        (ChannelKind.SMS, sms_to("+79990000001")),
    ]:
        [outcome] = await OutboxChannel(kind, blocked).send([message])

        assert isinstance(outcome, TransientChannelError), kind
        assert "cannot write to the outbox" in outcome.reply
        assert str(blocked) in outcome.reply


async def test_empty_batch(email_channel: OutboxChannel) -> None:
    assert await email_channel.send([]) == []
    assert not email_channel.directory.exists()
    await email_channel.close()


def test_from_settings(tmp_path: Path) -> None:
    settings = Settings(outbox_dir=str(tmp_path / "out"), email_from="CRM <crm@example.ru>")

    channel = OutboxChannel.from_settings(settings, ChannelKind.SMS)

    assert channel.kind is ChannelKind.SMS
    assert channel.directory == tmp_path / "out"
    with pytest.raises(PermanentChannelError, match="sender"):
        OutboxChannel(ChannelKind.EMAIL, tmp_path, sender="not an address")
