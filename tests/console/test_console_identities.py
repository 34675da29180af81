"""The Clients and Connectors pages in a real browser: adding one shows its bundle once (the
downloads are the PEMs shown; the key is nowhere in the database), disable/enable/revoke with
confirmation, a connector's prefixes changed and its live state; a viewer sees no write
action and a forged write with its session and CSRF token is refused; the clients page at
phone width with a 60-character id; the add form reached with the keyboard."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Dialog, Page, expect

from zgate_control.auth import Role
from zgate_control.console import identities
from zgate_lab.control_harness import Control

SignIn = Callable[[Page, Role], Awaitable[None]]
Shot = Callable[[Page, str], Awaitable[Path]]


def accept_dialogs(page: Page) -> list[str]:
    """Accept every confirmation; returns the list their questions are appended to."""
    asked: list[str] = []

    async def on_dialog(dialog: Dialog) -> None:
        asked.append(dialog.message)
        await dialog.accept()

    page.on("dialog", on_dialog)
    return asked


def session_report(session: str, ident: str, kind: str) -> dict[str, object]:
    """One session as a relay's heartbeat reports it."""
    return {
        "session": session,
        "client": ident,
        "kind": kind,
        "addresses": ["100.64.0.9"],
        "mode": "datagram",
        "since": "2026-12-05T00:00:00Z",
    }


async def test_add_a_client_its_bundle_once_then_disable_enable_revoke(
    page: Page, control: Control, sign_in: SignIn, shot: Shot
) -> None:
    await sign_in(page, "operator")
    await page.goto(f"{control.url}/console/clients")
    # Keyboard: Tab from the top of the page reaches the add form's fields, in order.
    reached = []
    for _ in range(40):
        await page.keyboard.press("Tab")
        for field in ("#client-id", "#client-groups", "#client-days"):
            if field not in reached and await page.locator(f"{field}:focus").count():
                reached.append(field)
        if len(reached) == 3:
            break
    assert reached == ["#client-id", "#client-groups", "#client-days"]

    await page.fill("#client-id", "laptop-1")
    await page.fill("#client-groups", "eng, ops")
    await page.fill("#client-days", "30")
    await page.click("#add-client button[type=submit]")
    await expect(page.locator("h1")).to_contain_text("laptop-1 added")
    key_pem = await page.input_value("#pem-2")
    assert key_pem.startswith("-----BEGIN") and "PRIVATE KEY" in key_pem
    async with page.expect_download() as info:
        await page.click("a[download='laptop-1.key']")
    download = await info.value
    assert Path(await download.path()).read_text() == key_pem
    async with page.expect_download() as info:
        await page.click("a[download='laptop-1.pem']")
    assert Path(await (await info.value).path()).read_text() == await page.input_value("#pem-1")
    await shot(page, "client-added")
    # The key exists in that page only: not in the database.
    database = control.database.engine.url.database
    assert database is not None
    assert key_pem.splitlines()[1].encode() not in Path(database).read_bytes()
    created = control.api("GET", "/clients/laptop-1").json()
    assert created["groups"] == ["eng", "ops"] and created["created_by"] == "operator-user"

    await page.click("text=Done: back to the clients")
    row = page.locator("#clients tr[data-client='laptop-1']")
    await expect(row).to_have_attribute("data-state", "active")
    asked = accept_dialogs(page)
    await row.locator("button.disable").click()
    await expect(row).to_have_attribute("data-state", "disabled")
    assert "Disable client laptop-1" in asked[-1]
    await expect(page.locator("[role=status]")).to_contain_text("laptop-1 disabled")
    await row.locator("button.enable").click()
    await expect(row).to_have_attribute("data-state", "active")
    await shot(page, "clients")
    await row.locator("button.revoke").click()
    await expect(row).to_have_attribute("data-state", "revoked")
    assert "Revoke client laptop-1" in asked[-1]
    await expect(row.locator("button")).to_have_count(0)
    assert control.api("GET", "/clients/laptop-1").json()["revoked_at"] is not None
    actions = [e["action"] for e in control.api("GET", "/admin-log").json()["items"]]
    for action in ("client.create", "client.disable", "client.enable", "client.revoke"):
        assert action in actions

    # Filters, and the add form's errors (the values typed stay).
    await page.select_option("#f-state", "active")
    await page.click("form.filters button[type=submit]")
    await expect(row).to_have_count(0)
    await page.fill("#client-id", "laptop-1")
    await page.click("#add-client button[type=submit]")
    await expect(page.locator("[role=alert]")).to_contain_text("laptop-1 already exists")
    await page.fill("#client-id", "bad.id")
    await page.fill("#client-days", "0")
    # The browser refuses 0 days itself; without its check the server says why too.
    await page.locator("#add-client").evaluate("form => { form.noValidate = true; }")
    await page.click("#add-client button[type=submit]")
    await expect(page.locator("[role=alert]")).to_contain_text("days")
    assert await page.input_value("#client-id") == "bad.id"


async def test_connectors_add_change_prefixes_live_state_and_revoke(
    page: Page, control: Control, sign_in: SignIn, shot: Shot
) -> None:
    await sign_in(page, "admin")
    await page.goto(f"{control.url}/console/connectors")
    await page.fill("#connector-id", "site-a")
    await page.fill("#connector-prefixes", "10.20.0.0/24")
    await page.click("#add-connector button[type=submit]")
    await expect(page.locator("h1")).to_contain_text("site-a added")
    assert "PRIVATE KEY" in await page.input_value("#pem-2")
    await page.click("text=Done: back to the connectors")
    row = page.locator("#connectors tr[data-connector='site-a']")
    await expect(row).to_have_attribute("data-live", "no")
    await expect(row).to_contain_text("10.20.0.0/24")

    # A relay reports the connector connected: the page shows it without a reload.
    beat = {"sessions": [session_report("c1", "site-a", "connector")]}
    assert control.api("POST", "/relays/r7/heartbeat", "relay", json=beat).status_code == 200
    await expect(row).to_have_attribute("data-live", "yes", timeout=10_000)
    await expect(row.locator("td.live")).to_contain_text("connected to r7")

    await row.locator("input[name=prefixes]").fill("10.20.0.0/24, 10.30.0.0/24")
    await row.locator("button", has_text="Save prefixes").click()
    await expect(page.locator("[role=status]")).to_contain_text("10.30.0.0/24")
    await expect(row).to_contain_text("10.20.0.0/24, 10.30.0.0/24")
    assert control.api("GET", "/connectors/site-a").json()["prefixes"] == [
        "10.20.0.0/24",
        "10.30.0.0/24",
    ]
    await shot(page, "connectors")
    await row.locator("input[name=prefixes]").fill("10.30.0.1/24")
    await row.locator("button", has_text="Save prefixes").click()
    await expect(page.locator("[role=alert]")).to_contain_text("not a CIDR prefix")

    asked = accept_dialogs(page)
    await row.locator("button.revoke").click()
    await expect(row).to_have_attribute("data-state", "revoked")
    assert "Revoke connector site-a" in asked[-1]
    assert control.api("GET", "/connectors/site-a").json()["revoked_at"] is not None


async def test_a_viewer_sees_no_write_action_and_a_forged_one_is_refused(
    page: Page, control: Control, sign_in: SignIn
) -> None:
    assert control.api("POST", "/clients", json={"id": "alice"}).status_code == 201
    body = {"id": "site-b", "prefixes": ["10.40.0.0/24"]}
    assert control.api("POST", "/connectors", json=body).status_code == 201
    beat = {"sessions": [session_report("s1", "alice", "client")]}
    assert control.api("POST", "/relays/r7/heartbeat", "relay", json=beat).status_code == 200
    await sign_in(page, "viewer")
    for section, row in (
        ("sessions", "tr[data-session='r7/s1']"),
        ("clients", "tr[data-client='alice']"),
        ("connectors", "tr[data-connector='site-b']"),
    ):
        await page.goto(f"{control.url}/console/{section}")
        await expect(page.locator(row)).to_have_count(1)
        await expect(page.locator("main form[method=post]")).to_have_count(0)
        await expect(page.locator("main button.revoke, #add-client, #add-connector")).to_have_count(
            0
        )

    # The viewer's own session and CSRF token do not make a write acceptable.
    csrf = await page.get_attribute("body", "data-csrf")
    cookie = next(c for c in await page.context.cookies() if c["name"] == "zgate_console")
    cookies = {"zgate_console": cookie["value"]}
    for path, data in (
        ("/console/clients/alice/revoke", {}),
        ("/console/clients", {"id": "mallory"}),
        ("/console/sessions/end", {"relay": "r7", "session": "s1"}),
        ("/console/connectors/site-b/prefixes", {"prefixes": "0.0.0.0/0"}),
    ):
        forged = httpx.post(
            f"{control.url}{path}", cookies=cookies, data={"csrf": csrf or "", **data}
        )
        assert forged.status_code == 403, (path, forged.text)
    assert control.api("GET", "/clients/alice").json()["revoked_at"] is None
    assert control.api("GET", "/clients/mallory").status_code == 404
    assert control.api("GET", "/connectors/site-b").json()["prefixes"] == ["10.40.0.0/24"]
    assert control.api("GET", "/sessions").json()["items"] != []


async def test_the_clients_page_at_phone_width_with_a_long_id(
    browser: Browser, control: Control, sign_in: SignIn, shot: Shot
) -> None:
    long_id = "a-very-long-client-id-for-a-build-machine-0123456789abcdefgh"
    assert len(long_id) == 60
    assert (
        control.api("POST", "/clients", json={"id": long_id, "groups": ["eng"]}).status_code == 201
    )
    context = await browser.new_context(viewport={"width": 390, "height": 844})
    page = await context.new_page()
    page.set_default_timeout(10_000)
    try:
        await sign_in(page, "admin")
        for section in ("clients", "sessions", "connectors"):
            await page.goto(f"{control.url}/console/{section}")
            scroll = await page.evaluate("document.documentElement.scrollWidth")
            width = await page.evaluate("document.documentElement.clientWidth")
            assert scroll <= width, (section, scroll, width)
        await page.goto(f"{control.url}/console/clients")
        cell = page.locator(f"#clients tr[data-client='{long_id}'] td.id")
        await expect(cell).to_have_text(long_id)
        box = await cell.bounding_box()
        assert box is not None and box["x"] + box["width"] <= 390
        await shot(page, "clients-phone")
    finally:
        await context.close()


async def test_list_filters_pages_and_refused_adds(
    page: Page, control: Control, sign_in: SignIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    for ident in ("c-active", "c-disabled", "c-revoked"):
        assert control.api("POST", "/clients", json={"id": ident}).status_code == 201
    assert control.api("PATCH", "/clients/c-disabled", json={"disabled": True}).status_code == 200
    assert control.api("POST", "/clients/c-revoked/revoke").status_code == 200
    monkeypatch.setattr(identities, "PAGE", 2)  # the server runs in this process
    await sign_in(page, "admin")
    rows = page.locator("#clients tbody tr[data-client]")
    for state, expected in (("disabled", "c-disabled"), ("revoked", "c-revoked")):
        await page.goto(f"{control.url}/console/clients?state={state}")
        await expect(rows).to_have_count(1)
        await expect(rows).to_have_attribute("data-client", expected)
    await page.goto(f"{control.url}/console/clients")
    await expect(rows).to_have_count(2)
    await page.get_by_role("link", name="Next page").click()
    await page.wait_for_url("**cursor=*")
    await expect(rows).to_have_count(1)
    await page.goto(f"{control.url}/console/clients?cursor=garbage")
    await expect(page.locator("[role=alert]")).to_be_visible()

    body = {"id": "site-c", "prefixes": ["10.50.0.0/24"]}
    assert control.api("POST", "/connectors", json=body).status_code == 201
    await page.goto(f"{control.url}/console/connectors")
    await page.fill("#connector-id", "site-c")
    await page.click("#add-connector button[type=submit]")
    await expect(page.locator("[role=alert]")).to_contain_text("site-c already exists")
    await page.fill("#connector-id", "site-d")
    await page.fill("#connector-prefixes", "10.60.0.1/24")
    await page.click("#add-connector button[type=submit]")
    await expect(page.locator("[role=alert]")).to_contain_text("not a CIDR prefix")
    assert await page.input_value("#connector-prefixes") == "10.60.0.1/24"
    assert control.api("GET", "/connectors/site-d").status_code == 404
