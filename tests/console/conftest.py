"""Fixtures for the console's browser tests: a control plane on loopback with tokens per role
(zgate_lab.control_harness), Debian's chromium driven by Playwright (executable_path: no browser
is downloaded), signing in through the form, and screenshots of each page into
build/console-screenshots/ (test artefacts, not committed)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from playwright.async_api import Browser, Page, async_playwright

from zgate_control.auth import Role
from zgate_lab.control_harness import Control, serve_control

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "build" / "console-screenshots"

SignIn = Callable[[Page, Role], Awaitable[None]]
Shot = Callable[[Page, str], Awaitable[Path]]


@pytest.fixture
def control(tmp_path: Path) -> Iterator[Control]:
    """A control plane on a free loopback port (SQLite in tmp_path)."""
    with serve_control(tmp_path) as running:
        yield running


@pytest.fixture
async def browser(skip_or_fail: Callable[[str], NoReturn]) -> AsyncIterator[Browser]:
    """Headless chromium (Debian's package)."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        skip_or_fail("no chromium (Debian package chromium)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A fresh browser page at laptop size."""
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    page.set_default_timeout(10_000)
    try:
        yield page
    finally:
        await context.close()


@pytest.fixture
def sign_in(control: Control) -> SignIn:
    """`await sign_in(page, role)`: sign in through the form with a token of `role`."""

    async def go(page: Page, role: Role = "admin") -> None:
        await page.goto(f"{control.url}/console/sign-in")
        await page.fill("#token", control.token(role))
        await page.click("button[type=submit]")
        await page.wait_for_url(f"{control.url}/console/")

    return go


@pytest.fixture
def shot() -> Shot:
    """`await shot(page, name)`: a full-page screenshot, build/console-screenshots/<name>.png."""

    async def take(page: Page, name: str) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}.png"
        await page.screenshot(path=str(path), full_page=True)
        return path

    return take
