"""``rassylka send-test`` through the transports this process's environment configures: a real
SMTP server, one that is not there, and the outbox."""

from __future__ import annotations

import json
from pathlib import Path

from cli_console import free_port, invoke
from smtp_peer import SmtpPeer


def test_an_email_reaches_the_smtp_server_and_its_reply_is_shown(smtp: SmtpPeer) -> None:
    env = {"RASSYLKA_SMTP_HOST": "127.0.0.1", "RASSYLKA_SMTP_PORT": str(smtp.port)}
    result = invoke("send-test", "--email", "anna@example.ru", env=env)
    assert result.exit_code == 0, result.output
    [message] = smtp.received
    assert str(message["To"]) == "anna@example.ru"
    assert message["Subject"] == "Rassylka: тестовое письмо"
    line = result.stdout.strip()
    assert line.startswith(f"email → anna@example.ru через SMTP 127.0.0.1:{smtp.port}: отправлено")
    assert "250" in line
    assert len(result.stdout.strip().splitlines()) == 1


def test_a_refusal_is_one_line_and_exit_1(smtp: SmtpPeer) -> None:
    env = {"RASSYLKA_SMTP_HOST": "127.0.0.1", "RASSYLKA_SMTP_PORT": str(smtp.port)}
    result = invoke("send-test", "--email", "never@example.ru", env=env)
    assert result.exit_code == 1, result.output
    assert result.stdout.strip().splitlines() == [
        f"email → never@example.ru через SMTP 127.0.0.1:{smtp.port}: ошибка: "
        "550 5.1.1 No such user here"
    ]


def test_an_unreachable_server_is_one_line_and_exit_3(tmp_path: Path) -> None:
    port = free_port()
    env = {
        "RASSYLKA_SMTP_HOST": "127.0.0.1",
        "RASSYLKA_SMTP_PORT": str(port),
        "RASSYLKA_OUTBOX_DIR": str(tmp_path),
    }
    result = invoke("send-test", "--email", "anna@example.ru", "--phone", "89161234567", env=env)
    assert result.exit_code == 3, result.output
    email, sms = result.stdout.strip().splitlines()
    assert email.startswith(f"email → anna@example.ru через SMTP 127.0.0.1:{port}: ошибка: ")
    assert "Connect call failed" in email
    assert sms.startswith("sms → +79161234567 через OutboxChannel")  # no SMPP: the outbox
    assert "отправлено" in sms
    [written] = [json.loads(line) for line in (tmp_path / "sms.jsonl").read_text().splitlines()]
    assert written["to"] == "+79161234567"


def test_nothing_to_send_or_a_bad_number_is_refused() -> None:
    nothing = invoke("send-test")
    assert nothing.exit_code == 2
    assert nothing.stderr.strip() == "Ошибка: Укажите --email, --phone или оба"
    bad = invoke("send-test", "--phone", "12")
    assert bad.exit_code == 2
    assert bad.stderr.strip() == "Ошибка: Некорректный номер телефона «12»"
