"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against the whole
service (``rassylka serve``: API, scheduler and dispatcher in one process) on 127.0.0.1,
sending email to a real SMTP server (aiosmtpd, tests/smtp_peer.py).

The pages read and write through the same services as the JSON API, which the rest of the
suite runs on both databases; here SQLite is enough, and keeps these tests lean.
Chromium comes from ``apt-get install chromium`` (.ci/run does it); without it these tests are
skipped, or fail in CI (``RASSYLKA_TEST_REQUIRE_PEERS``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

from conftest import LiveServer, serve
from helpers import missing_peer
from rassylka.config import Settings
from smtp_peer import SmtpPeer

CHROMIUM = os.environ.get("RASSYLKA_TEST_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
"""Where ``RASSYLKA_TEST_SCREENSHOTS=1`` makes the browser tests keep their pages' pictures
(the ones in docs/ are made so)."""


@pytest.fixture
def backend() -> str:
    return "sqlite"


@pytest.fixture
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        missing_peer(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    return CHROMIUM


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium,
            headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu"],
        )
        yield launched
        await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(locale="ru-RU", viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    opened = await context.new_page()
    yield opened
    await context.close()


@pytest.fixture
async def service(database_url: str, smtp: SmtpPeer) -> AsyncIterator[LiveServer]:
    """``rassylka serve`` on this test's database, its email going to ``smtp``."""
    server = await serve(
        Settings(
            database_url=database_url,
            smtp_host="127.0.0.1",
            smtp_port=smtp.port,
            dispatch_poll_interval=0.1,
        ),
        worker=True,
    )
    yield server
    await server.stop()


async def screenshot(page: Page, name: str) -> None:
    """Keep the page's picture in docs/screenshots/ when asked to
    (``RASSYLKA_TEST_SCREENSHOTS=1``)."""
    if os.environ.get("RASSYLKA_TEST_SCREENSHOTS"):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
