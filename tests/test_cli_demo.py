"""``rassylka demo --once``: its own SMTP server and SMSC, the embedded service, a mailing on
email and SMS delivered (SMS receipts included) within the minute, and every helper stopped."""

from __future__ import annotations

import re
import threading

from cli_console import invoke


def test_demo_delivers_its_mailing_and_exits() -> None:
    before = threading.active_count()
    result = invoke("demo", "--once")
    assert result.exit_code == 0, result.output
    sms = re.search(r"│ sms\s*│(.*)│", result.stdout)
    email = re.search(r"│ email\s*│(.*)│", result.stdout)
    assert sms is not None, result.stdout
    assert email is not None, result.stdout
    # columns: queued sent delivered undelivered bounced failed expired skipped total
    assert [int(cell) for cell in sms.group(1).split("│")] == [0, 0, 4, 0, 0, 0, 0, 0, 4]
    assert [int(cell) for cell in email.group(1).split("│")] == [0, 4, 0, 0, 0, 0, 0, 0, 4]
    assert "Писем принял SMTP-сервер: 4, SMS принял SMSC: 4." in result.stdout
    url = re.search(r"Документация API: (http://127\.0\.0\.1:\d+)/docs", result.stdout)
    assert url is not None
    assert "sent → delivered" in result.stdout
    assert threading.active_count() <= before  # nothing left running
