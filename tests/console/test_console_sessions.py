"""The Sessions page in a real browser: a live session appears as an agent connects (no
reload), "End session" makes its relay end it (the row goes; the agent may connect again with
a new session), "Revoke client" ends the client for good; the filters narrow the list."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from playwright.async_api import Dialog, Page, expect

from zgate_control.auth import Role
from zgate_lab.control_harness import RELAY, Control, following_relay, write_identity_files
from zgate_lab.harness import app_agent

SignIn = Callable[[Page, Role], Awaitable[None]]
Shot = Callable[[Page, str], Awaitable[Path]]

LIVE = 10_000  # ms: heartbeats every 0.5 s, the page re-reads itself every 2 s


def accept_dialogs(page: Page) -> list[str]:
    """Accept every confirmation; returns the list their questions are appended to."""
    asked: list[str] = []

    async def on_dialog(dialog: Dialog) -> None:
        asked.append(dialog.message)
        await dialog.accept()

    page.on("dialog", on_dialog)
    return asked


async def test_a_session_appears_live_ends_and_its_client_is_revoked(
    page: Page, control: Control, tmp_path: Path, sign_in: SignIn, shot: Shot
) -> None:
    pki = write_identity_files(control, tmp_path / "pki", ["alice", "bob"])
    async with following_relay(control, tmp_path, pki) as running:
        await sign_in(page, "operator")
        await page.goto(f"{control.url}/console/sessions")
        alice = page.locator("#sessions tr[data-client='alice']")
        bob = page.locator("#sessions tr[data-client='bob']")
        await expect(alice).to_have_count(0)
        async with app_agent(running, pki, "alice"), app_agent(running, pki, "bob"):
            # The page refreshes itself: no reload.
            await expect(alice).to_have_count(1, timeout=LIVE)
            await expect(bob).to_have_count(1, timeout=LIVE)
            assert RELAY in await alice.inner_text()
            await shot(page, "sessions")

            ended = await alice.get_attribute("data-session")
            asked = accept_dialogs(page)
            await alice.locator("button.end-session").click()
            await page.wait_for_url("**/console/sessions?done=*")
            assert asked and "End alice's session" in asked[0]
            await expect(page.locator(f"#sessions tr[data-session='{ended}']")).to_have_count(
                0, timeout=LIVE
            )
            await expect(bob).to_have_count(1)
            log = control.api("GET", "/admin-log").json()["items"]
            assert any(
                e["action"] == "session.end" and e["target"] == ended and e["role"] == "operator"
                for e in log
            )

            # The agent connects again (a new session): revoking the client keeps it out.
            await expect(alice).to_have_count(1, timeout=LIVE)
            await alice.locator("button.revoke").click()
            await page.wait_for_url("**/console/sessions?done=*")
            assert "Revoke client alice" in asked[-1]
            await expect(alice).to_have_count(0, timeout=LIVE)
            assert control.api("GET", "/clients/alice").json()["revoked_at"] is not None
            await expect(bob).to_have_count(1)

            # Filters: part of the client id, and the relay.
            await page.fill("#f-client", "bo")
            await page.click("form.filters button[type=submit]")
            await expect(page.locator("#sessions tbody tr[data-client]")).to_have_count(1)
            await page.select_option("#f-relay", RELAY)
            await page.click("form.filters button[type=submit]")
            await expect(bob).to_have_count(1)
            await page.fill("#f-client", "nobody")
            await page.click("form.filters button[type=submit]")
            await expect(page.locator("#sessions tr.empty")).to_contain_text("matches the filter")


async def test_ending_a_session_that_is_gone_says_so(
    page: Page, control: Control, sign_in: SignIn
) -> None:
    beat = {"sessions": [session_report("s1", "carol")]}
    assert control.api("POST", "/relays/r9/heartbeat", "relay", json=beat).status_code == 200
    await sign_in(page, "admin")
    await page.goto(f"{control.url}/console/sessions")
    row = page.locator("#sessions tr[data-session='r9/s1']")
    await expect(row).to_have_count(1)
    # The relay reports the session gone before the operator clicks.
    assert control.api("POST", "/relays/r9/heartbeat", "relay", json={}).status_code == 200
    accept_dialogs(page)
    await row.locator("button.end-session").click()
    await expect(page.locator("[role=alert]")).to_contain_text("reports no live session s1")


def session_report(session: str, client: str, kind: str = "client") -> dict[str, object]:
    """One session as a relay's heartbeat reports it."""
    return {
        "session": session,
        "client": client,
        "kind": kind,
        "addresses": ["100.64.0.9"],
        "mode": "datagram",
        "since": "2026-12-05T00:00:00Z",
        "bytes_in": 1_234_567,
        "bytes_out": 890,
    }
