"""The Audit pages in a real browser: search with filters, the next page keeping them, the
export with the console's session, a record's detail with the rule that decided it linked in the
policy version that was in force (found by the record's digest), and the page at phone width."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Page, expect

from zgate_control.auth import Role
from zgate_control.models import AuditRecord, utc_now
from zgate_lab.control_harness import Control

SignIn = Callable[[Page, Role], Awaitable[None]]
Shot = Callable[[Page, str], Awaitable[Path]]

POLICY = """\
default: deny
rules:
  - id: web
    action: allow
    from: ["*"]
    to: [10.2.0.0/16]
    ports: [tcp/443]
  - id: eng-db
    action: allow
    from: [alice]
    to: [10.1.0.0/24]
    ports: [tcp/5432]
"""


def _record(
    client: str, verdict: str, rule: str, digest: str, at: datetime, seq: int
) -> AuditRecord:
    """A stored flow record (its chain fields are not what is tested here)."""
    ident = uuid.uuid4().hex
    shipped: dict[str, Any] = {
        "id": ident,
        "ts": at.isoformat(),
        "event": f"flow.{verdict}",
        "client": f"client/{client}",
        "proto": "tcp",
        "dst": "10.1.0.5",
        "dport": 5432,
        "verdict": verdict,
        "rule": rule,
        "policy_version": digest,
        "seq": seq,
    }
    return AuditRecord(
        id=ident,
        relay_id="relay-1",
        chain="c" * 32,
        seq=seq,
        ts=at,
        event=f"flow.{verdict}",
        client=client,
        proto="tcp",
        src="100.64.0.2",
        sport=40000,
        dst="10.1.0.5",
        dport=5432,
        verdict=verdict,
        rule=rule,
        policy_version=digest,
        prev="0" * 64,
        hash=f"{seq:064x}",
        record=shipped,
    )


def _fill(control: Control) -> tuple[int, str, datetime]:
    """A published version, a later one with the same digest (never published), and records:
    60 of alice allowed by eng-db in the last hour, 5 of bob denied; (version id, digest, now)."""
    first = control.api("POST", "/policies", json={"yaml": POLICY})
    assert first.status_code == 201, first.text
    version: dict[str, Any] = first.json()
    published = control.api("POST", f"/policies/{version['id']}/publish")
    assert published.status_code == 200, published.text
    twin = control.api("POST", "/policies", json={"yaml": POLICY + "# same rules\n"})
    assert twin.json()["digest"] == version["digest"] and twin.json()["id"] > version["id"]
    now = utc_now().replace(microsecond=0)
    rows = [
        _record("alice", "allow", "eng-db", version["digest"], now - timedelta(seconds=i), i)
        for i in range(1, 61)
    ]
    rows += [
        _record("bob", "deny", "default", version["digest"], now - timedelta(seconds=i), 100 + i)
        for i in range(1, 6)
    ]
    with control.database.session() as session:
        session.add_all(rows)
    return version["id"], version["digest"], now


async def test_search_pages_and_exports(
    page: Page, control: Control, sign_in: SignIn, shot: Shot
) -> None:
    _fill(control)
    await sign_in(page, "viewer")
    await page.goto(f"{control.url}/console/audit")
    await page.fill("#f-client", "alice")
    await page.select_option("#f-verdict", "allow")
    await page.fill("#f-rule", "eng-db")
    await page.click("#audit-search button[type=submit]")
    rows = page.locator("#records tbody tr")
    await expect(rows).to_have_count(50)
    assert set(await page.locator("#records tbody td:nth-child(3)").all_inner_texts()) == {
        "client/alice"
    }
    await shot(page, "audit")
    await page.click("#next-page")
    await expect(rows).to_have_count(10)  # the filters were kept: bob's 5 are not here
    await expect(page.locator("#f-client")).to_have_value("alice")
    assert "verdict=allow" in page.url and "cursor=" in page.url
    await expect(page.locator("#next-page")).to_have_count(0)

    await page.goto(f"{control.url}/console/audit?event=flow.deny&relay=relay-1")
    await expect(rows).to_have_count(5)
    await page.goto(f"{control.url}/console/audit?relay=relay-2")
    await expect(page.locator("#records tbody tr.empty")).to_have_text("No record matches.")
    await page.goto(f"{control.url}/console/audit?verdict=deny")
    await expect(rows).to_have_count(5)
    href = await page.get_attribute("#export-csv", "href")
    assert href is not None and "verdict=deny" in href
    exported = await page.request.get(f"{control.url}{href}")  # the session, no token
    assert exported.ok
    table = list(csv.DictReader(io.StringIO(await exported.text())))
    assert len(table) == 5 and {r["client"] for r in table} == {"client/bob"}
    lines = await page.request.get(f"{control.url}/console/audit/export?client=alice&format=jsonl")
    assert len([json.loads(x) for x in (await lines.text()).splitlines()]) == 60


async def test_a_time_window_narrows_the_search(
    page: Page, control: Control, sign_in: SignIn
) -> None:
    _, _, now = _fill(control)
    await sign_in(page, "viewer")
    await page.goto(f"{control.url}/console/audit")
    # alice's records are 1..60 s old: a window from 10.5 s ago to 0.5 s ago holds 10 of them.
    since = (now - timedelta(seconds=10, microseconds=500_000)).replace(tzinfo=None)
    until = (now - timedelta(microseconds=500_000)).replace(tzinfo=None)
    await page.fill("#f-client", "alice")
    await page.fill("#f-since", since.replace(microsecond=0).isoformat())
    await page.fill("#f-until", until.replace(microsecond=0).isoformat())
    await page.click("#audit-search button[type=submit]")
    await expect(page.locator("#records tbody tr")).to_have_count(10)
    await page.goto(f"{control.url}/console/audit?since=yesterday")
    await expect(page.locator("[role=alert]")).to_contain_text("since: not a date")


async def test_a_record_links_to_its_rule_in_the_version_in_force(
    page: Page, control: Control, sign_in: SignIn, shot: Shot
) -> None:
    version_id, digest, _ = _fill(control)
    await sign_in(page, "viewer")
    await page.goto(f"{control.url}/console/audit?client=alice")
    await page.locator("#records tbody tr").first.get_by_role("link", name="details").click()
    await page.wait_for_url("**/console/audit/*")
    fields = page.locator("#fields")
    await expect(fields).to_contain_text("policy_version")
    await expect(fields).to_contain_text(digest)
    await expect(fields).to_contain_text("client/alice")
    link = page.locator("#rule-link")
    # The twin version has the same digest but was never published: the link names the first.
    await expect(link).to_have_text(f"eng-db in v{version_id}")
    await shot(page, "audit-record")
    await link.click()
    await page.wait_for_url(f"**/console/policies/{version_id}#rule-eng-db")
    await expect(page.locator("#rule-eng-db")).to_be_in_viewport()


async def test_the_audit_page_fits_a_phone(
    browser: Browser, control: Control, sign_in: SignIn
) -> None:
    _fill(control)
    context = await browser.new_context(viewport={"width": 390, "height": 844})
    try:
        page = await context.new_page()
        await sign_in(page, "viewer")
        await page.goto(f"{control.url}/console/audit?client=alice")
        await expect(page.locator("#records tbody tr")).to_have_count(50)
        widths = await page.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert widths[0] <= widths[1], widths
    finally:
        await context.close()
