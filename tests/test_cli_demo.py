"""``rassylka demo --once``: its own SMTP server and SMSC, the embedded service, a mailing on
email and SMS delivered (SMS receipts included) within the minute, and every helper stopped."""

from __future__ import annotations

import re
import threading

from cli_console import channel_counts, invoke


def test_demo_delivers_its_mailing_and_exits() -> None:
    before = threading.active_count()
    result = invoke("demo", "--once")
    assert result.exit_code == 0, result.output
    # queued sent delivered undelivered bounced failed expired skipped, total
    assert channel_counts(result.stdout, "sms") == [0, 0, 4, 0, 0, 0, 0, 0, 4], result.stdout
    assert channel_counts(result.stdout, "email") == [0, 4, 0, 0, 0, 0, 0, 0, 4], result.stdout
    assert "Писем принял SMTP-сервер: 4, SMS принял SMSC: 4." in result.stdout
    url = re.search(r"Документация API: (http://127\.0\.0\.1:\d+)/docs", result.stdout)
    assert url is not None
    assert "sent → delivered" in result.stdout
    assert threading.active_count() <= before  # nothing left running
