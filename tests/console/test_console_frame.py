"""The console's frame in a real browser: sign-in (a wrong token says so; a good one lands on
the overview), the session cookie's flags, sign-out, CSRF, and the overview showing a live
relay and session as an agent connects."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from playwright.async_api import Page, expect

from zgate_control.auth import Role
from zgate_lab.control_harness import Control, following_relay, write_identity_files
from zgate_lab.harness import app_agent, until

SignIn = Callable[[Page, Role], Awaitable[None]]
Shot = Callable[[Page, str], Awaitable[Path]]


async def test_sign_in_out_and_the_cookie(
    page: Page, control: Control, sign_in: SignIn, shot: Shot
) -> None:
    await page.goto(f"{control.url}/console/")
    assert "/console/sign-in" in page.url  # not signed in: sent to the form
    await shot(page, "sign-in")
    await page.fill("#token", "zgt_000000000000_" + "x" * 40)
    await page.click("button[type=submit]")
    assert "not valid" in await page.inner_text("[role=alert]")
    await sign_in(page, "viewer")
    cookies = {c["name"]: c for c in await page.context.cookies()}
    cookie = cookies["zgate_console"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert "viewer" in await page.inner_text(".who")
    await page.click(".who button")
    await page.wait_for_url("**/console/sign-in")
    await page.goto(f"{control.url}/console/")
    assert "/console/sign-in" in page.url


async def test_a_post_without_the_csrf_token_is_refused(
    page: Page, control: Control, sign_in: SignIn
) -> None:
    await sign_in(page, "admin")
    cookie = next(c for c in await page.context.cookies() if c["name"] == "zgate_console")
    # A forged cross-site form would carry the cookie (were SameSite absent) but not the token.
    forged = httpx.post(
        f"{control.url}/console/clients",
        cookies={"zgate_console": cookie["value"]},
        data={"id": "mallory"},
    )
    assert forged.status_code in (403, 404, 405, 422)
    assert control.api("GET", "/clients/mallory").status_code == 404
    # A sign-in form posted from another site's page is refused.
    elsewhere = httpx.post(
        f"{control.url}/console/sign-in",
        data={"token": control.token("viewer")},
        headers={"Origin": "https://evil.example"},
    )
    assert elsewhere.status_code == 403 and "zgate_console" not in elsewhere.cookies
    # Nor can another site sign the user out: the sign-out form carries the token too.
    signed_out = httpx.post(
        f"{control.url}/console/sign-out", cookies={"zgate_console": cookie["value"]}
    )
    assert signed_out.status_code == 403
    await page.goto(f"{control.url}/console/")
    assert page.url.endswith("/console/")  # still signed in


async def test_the_overview_shows_the_live_relay_and_session(
    page: Page, control: Control, tmp_path: Path, sign_in: SignIn, shot: Shot
) -> None:
    pki = write_identity_files(control, tmp_path / "pki", ["alice"])
    async with following_relay(control, tmp_path, pki) as running:
        await sign_in(page, "admin")
        async with app_agent(running, pki, "alice"):
            await until(
                lambda: control.api("GET", "/sessions").json()["items"] != [],
                15,
                "the relay to report alice's session",
            )
            # the page refreshes itself: no reload
            sessions = page.locator('[data-field="totals.sessions"]')
            await expect(sessions).to_have_text("1", timeout=10_000)
            row = page.locator("#relays tr[data-relay='relay-console']")
            assert "healthy" in await row.inner_text()
            await shot(page, "overview")
