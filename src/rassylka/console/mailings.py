"""``rassylka mailing list``: the API's mailing list (``GET /mailing/list``) as a table."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from rassylka.console.api import EXIT_REFUSED, Api, CliFailure
from rassylka.console.watching import MAILING_STATUSES

PAGE = 1000  # the most the API gives per request
STATUS_WORDS = {
    "draft": 0,
    "active": 1,
    "paused": 2,
    "completed": 3,
    "done": 3,
    "cancelled": 4,
    **{name: number for number, name in MAILING_STATUSES.items()},
}
CHANNEL_NAMES = {1: "email", 2: "sms"}


def parse_status(value: str | None) -> int | None:
    """A mailing status by number (0–4) or word (``active``, ``done``, ``черновик`` …)."""
    if value is None:
        return None
    text = value.strip().lower()
    if text.isdigit() and int(text) in MAILING_STATUSES:
        return int(text)
    if text in STATUS_WORDS:
        return STATUS_WORDS[text]
    raise CliFailure(
        f"Неизвестный статус «{value}»: 0 draft, 1 active, 2 paused, 3 done, 4 cancelled",
        EXIT_REFUSED,
    )


async def fetch(
    api: Api, *, project: str | None, status: int | None, limit: int
) -> tuple[list[dict[str, Any]], int]:
    """Up to ``limit`` mailings (page after page) and how many there are in all."""
    params: dict[str, Any] = {}
    if project is not None:
        params["project"] = project
    if status is not None:
        params["status"] = status
    found: list[dict[str, Any]] = []
    total = 0
    while len(found) < limit:
        page = await api.get(
            "/mailing/list",
            params={**params, "limit": min(PAGE, limit - len(found)), "offset": len(found)},
        )
        total = int(page["total"])
        found += page["items"]
        if not page["items"] or len(found) >= total:
            break
    return found, total


def table(mailings: list[dict[str, Any]], total: int) -> Table:
    shown = Table(title=f"Рассылки: {len(mailings)} из {total}", title_justify="left")
    for column in ("id", "проект", "название", "статус", "каналы", "запусков", "следующий"):
        shown.add_column(column, justify="right" if column in {"id", "запусков"} else "left")
    for mailing in mailings:
        status = int(mailing["status"])
        shown.add_row(
            str(mailing["id"]),
            str(mailing["project_id"]),
            escape(str(mailing["name"])),
            MAILING_STATUSES.get(status, str(status)),
            ", ".join(CHANNEL_NAMES.get(int(c), str(c)) for c in mailing["channels"]),
            str(mailing.get("runs_count", "")),
            str(mailing.get("next_run_at") or "")[:16].replace("T", " "),
        )
    return shown
