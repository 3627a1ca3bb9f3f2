"""Well-formed email (issue 9): a sample of varied messages read back by the stdlib's strict parser.

Each message of the sample is composed, 8-bit and 7-bit, and its bytes are parsed with
``email.policy.strict`` (a defect raises) and ``email.policy.SMTP``; then its lines, structure,
headers and Message-ID are checked against what was given.

Display names are read as RFC 2047 §6.2 says: the white space between two adjacent encoded
words is no part of the text. The stdlib's address parser keeps it (``Магазин «Ромашка» —
нов ости`` from a name split over two words, its own generator's output included), so a name
too long for one encoded word is decoded here with ``email.header.decode_header``, which
follows the RFC; a short one is also checked through the stdlib's address parser.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import parsedate_to_datetime

import pytest

from rassylka.channels.base import ChannelKind, OutboundMessage, PermanentChannelError
from rassylka.channels.email_message import MessageIds, compose, parse_sender
from rassylka.channels.outbox import OutboxChannel
from rassylka.channels.smtp import SmtpChannel, SmtpConfig
from rassylka.config import Settings
from rassylka.templates.rendering import plain_text

FROM_NAME = "Магазин «Ромашка» — новости"
FROM = f"{FROM_NAME} <news@shop.example.ru>"
REPLY_TO_NAME = "Служба заботы"
REPLY_TO = f"{REPLY_TO_NAME} <care@shop.example.ru>"
LONG_CYRILLIC_LINE = "Очень длинная строка без переносов " * 60  # ~2,100 characters, 4 KB
LONG_ASCII_LINE = "x" * 1500
HTML = "<html><body><p>Здравствуйте, <b>Иван</b>!</p>\n<p>Скидка 20%</p></body></html>"


def email(number: int, text: str, **fields: object) -> OutboundMessage:
    return OutboundMessage(
        id=number,
        kind=ChannelKind.EMAIL,
        to=str(fields.pop("to", "ivan@example.ru")),
        text=text,
        **fields,  # type: ignore[arg-type]
    )


SAMPLE = {
    "text, Cyrillic": email(1, "Здравствуйте!\nВаша скидка ждёт вас.", subject="Скидка 20%"),
    "text, ASCII": email(2, "Hello,\nplain ASCII only.", subject="Hello there"),
    "both, named recipient": email(
        3,
        "Здравствуйте, Иван!",
        to="Иван Петров <ivan@example.ru>",
        subject="Скидка 20% только сегодня — не пропустите!",
        html=HTML,
    ),
    # As the dispatcher sends a template that has only HTML: the plain part made from it.
    "HTML only": email(4, plain_text(HTML), subject="Только HTML", html=HTML),
    "bare LF and CR": email(
        5, "one\rtwo\nthree\r\nfour\n\n\rfive", subject="Переносы", html="<p>a</p>\r<p>b</p>\nc"
    ),
    "long lines": email(6, LONG_CYRILLIC_LINE, subject="Длинные строки", html=LONG_ASCII_LINE),
    "long subject": email(7, "Текст", subject="Очень длинная тема письма, " * 12),
    "leading dots and From": email(8, ".\n.hidden\nFrom here\n", subject="Точки"),
    "no subject, emoji": email(9, "Привет 👋 мир 🌍", html="<p>👋</p>"),
}


def parse(data: bytes, parse_policy: policy.Policy) -> EmailMessage:
    message = BytesParser(policy=parse_policy).parsebytes(data)
    assert isinstance(message, EmailMessage)
    return message


def assert_no_defects(message: EmailMessage) -> None:
    for part in message.walk():
        assert not part.defects, part.defects
        for name, value in part.items():
            assert not getattr(value, "defects", ()), (name, value.defects)  # type: ignore[attr-defined]


def assert_lines_are_smtp_lines(data: bytes) -> None:
    assert data.endswith(b"\r\n")
    for line in data[:-2].split(b"\r\n"):
        assert b"\r" not in line, "a bare CR"
        assert b"\n" not in line, "a bare LF"
        assert len(line) <= 998, len(line)


def display_name(message: EmailMessage, name: str) -> str:
    """The display name in header ``name``, decoded per RFC 2047 from the raw header."""
    raw = dict(message.raw_items())[name]
    phrase = raw.rpartition("<")[0].replace("\r\n", "").replace("\n", "")
    return str(make_header(decode_header(phrase))).strip()


def lines(text: str) -> str:
    """``text`` as it is meant to read: every kind of line break one LF, ending in one."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text if text.endswith("\n") else text + "\n"


@pytest.mark.parametrize("eight_bit", [True, False], ids=["8bit", "7bit"])
@pytest.mark.parametrize("name", list(SAMPLE))
@pytest.mark.parametrize("parse_policy", [policy.strict, policy.SMTP], ids=["strict", "SMTP"])
def test_a_sample_of_messages_is_well_formed(
    name: str, eight_bit: bool, parse_policy: policy.Policy
) -> None:
    message = SAMPLE[name]
    sender = parse_sender(FROM, reply_to=REPLY_TO)
    data = compose(message, sender=sender).as_bytes(eight_bit=eight_bit)

    assert_lines_are_smtp_lines(data)
    if not eight_bit:
        assert data.isascii()
    parsed = parse(data, parse_policy)
    assert_no_defects(parsed)

    # Headers decode to what was given.
    assert display_name(parsed, "From") == FROM_NAME
    assert parsed["From"].addresses[0].addr_spec == "news@shop.example.ru"
    assert display_name(parsed, "Reply-To") == REPLY_TO_NAME
    # Short enough for one encoded word: the stdlib's address parser reads it whole too.
    assert parsed["Reply-To"].addresses[0].display_name == REPLY_TO_NAME
    assert parsed["Reply-To"].addresses[0].addr_spec == "care@shop.example.ru"
    assert str(parsed["To"]) == message.to
    if message.subject is None:
        assert "Subject" not in parsed
    else:
        assert str(parsed["Subject"]) == message.subject
    date = parsedate_to_datetime(str(parsed["Date"]))
    assert date.tzinfo is not None
    assert abs(datetime.now(UTC) - date) < timedelta(hours=1)
    assert parsed["MIME-Version"] == "1.0"

    # Structure: text/plain alone, or first in multipart/alternative.
    if message.html is None:
        assert parsed.get_content_type() == "text/plain"
        parts = [parsed]
    else:
        assert parsed.get_content_type() == "multipart/alternative"
        parts = list(parsed.iter_parts())  # type: ignore[arg-type]
        assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    texts = [message.text] + ([message.html] if message.html is not None else [])
    for part, text in zip(parts, texts, strict=True):
        assert part.get_content_charset() == "utf-8"
        assert part.get_content().replace("\r\n", "\n") == lines(text)


@pytest.mark.parametrize("name", list(SAMPLE))
def test_message_id_is_the_message_rows_on_every_attempt(name: str) -> None:
    message = SAMPLE[name]
    sender = parse_sender(FROM)
    first, again = (
        parse(compose(message, sender=sender).as_bytes(), policy.strict) for _ in range(2)
    )
    other = parse(
        compose(dataclasses.replace(message, id=message.id + 100), sender=sender).as_bytes(),
        policy.strict,
    )

    assert first["Message-ID"] == again["Message-ID"]
    assert first["Message-ID"] != other["Message-ID"]
    local, domain = first["Message-ID"].strip("<>").split("@")
    assert domain == "shop.example.ru"
    number, tag = local.split(".")
    assert int(number) == message.id
    assert len(tag) == 20
    assert int(tag, 16) >= 0  # hex digits


def test_message_ids_with_a_key_agree_across_processes_and_differ_across_installations() -> None:
    """Two senders with one key stand for two workers of one installation; another key, for
    another installation sending from the same domain."""
    message = SAMPLE["text, Cyrillic"]
    one = compose(message, sender=parse_sender(FROM, message_ids=MessageIds(b"k" * 32)))
    same = compose(message, sender=parse_sender(FROM, message_ids=MessageIds(b"k" * 32)))
    other = compose(message, sender=parse_sender(FROM, message_ids=MessageIds(b"o" * 32)))
    unkeyed = compose(message, sender=parse_sender(FROM))

    assert one.message_id == same.message_id
    assert one.message_id != other.message_id
    assert unkeyed.message_id not in (one.message_id, other.message_id)


def test_a_callers_message_id_still_wins() -> None:
    message = dataclasses.replace(SAMPLE["text, ASCII"], headers={"Message-ID": "<mine@crm.ru>"})

    composed = compose(message, sender=parse_sender(FROM))

    assert composed.message_id == "<mine@crm.ru>"
    parsed = parse(composed.as_bytes(), policy.strict)
    assert parsed.get_all("Message-ID") == ["<mine@crm.ru>"]


def test_without_reply_to_there_is_no_reply_to_header() -> None:
    parsed = parse(
        compose(SAMPLE["text, ASCII"], sender=parse_sender(FROM)).as_bytes(), policy.strict
    )
    assert "Reply-To" not in parsed


def test_a_reply_to_with_a_non_ascii_local_part_needs_smtputf8() -> None:
    sender = parse_sender(FROM, reply_to="Забота <забота@shop.example.ru>")
    assert compose(SAMPLE["text, ASCII"], sender=sender).utf8


def test_settings_carry_reply_to_and_the_key_to_both_email_transports(tmp_path: object) -> None:
    settings = Settings(
        smtp_host="mail.example.ru",
        email_from=FROM,
        email_reply_to=REPLY_TO,
        secret_key="s" * 32,
        outbox_dir=str(tmp_path),
    )
    smtp_config = SmtpConfig.from_settings(settings)
    assert smtp_config.reply_to == REPLY_TO
    assert smtp_config.message_ids == MessageIds(b"s" * 32)
    outbox = OutboxChannel.from_settings(settings, ChannelKind.EMAIL)
    message = SAMPLE["text, ASCII"]
    expected = MessageIds(b"s" * 32).of(message.id, "shop.example.ru")
    composed = compose(message, sender=outbox._senders.default)  # type: ignore[union-attr]
    assert composed.message_id == expected
    assert b"Reply-To: " in composed.as_bytes()


@pytest.mark.parametrize("reply_to", ["not an address", "a@b.ru, c@d.ru", "<@[ "])
def test_an_invalid_reply_to_stops_the_transports_at_start(reply_to: str, tmp_path: object) -> None:
    with pytest.raises(PermanentChannelError, match="reply-to"):
        SmtpChannel(SmtpConfig(host="127.0.0.1", sender=FROM, reply_to=reply_to))
    with pytest.raises(PermanentChannelError, match="reply-to"):
        OutboxChannel(ChannelKind.EMAIL, str(tmp_path), sender=FROM, reply_to=reply_to)
