"""The Policies pages in a real browser: a version with a syntax error is refused with the error
at its line, a valid one is published and a relay following the control plane applies it;
explain, impact (over stored audit records) and the diff of two versions; rollback offered only
for versions published before; a viewer gets no control that changes anything."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Dialog, Page, expect

from zgate_control.auth import Role
from zgate_control.console.policies import numbered
from zgate_control.models import AuditRecord, utc_now
from zgate_lab.control_harness import RELAY, Control, following_relay, write_identity_files

SignIn = Callable[[Page, Role], Awaitable[None]]
Shot = Callable[[Page, str], Awaitable[Path]]

V1 = """\
default: deny
rules:
  - id: eng-db
    action: allow
    from: [alice]
    to: [10.1.0.0/24]
    ports: [tcp/5432]
  - id: web
    action: allow
    from: ["*"]
    to: [10.2.0.0/16]
    ports: [tcp/443]
tests:
  - name: alice reaches the database
    from: alice
    to: tcp://10.1.0.5:5432
    expect: allow
    rule: eng-db
"""
#: v1 without alice's database access, with a new ssh rule for bob.
V2 = V1.replace("from: [alice]", "from: [bob]").replace(
    "tests:\n  - name: alice reaches the database\n    from: alice\n    to: tcp://10.1.0.5:5432\n"
    "    expect: allow\n    rule: eng-db\n",
    "  - id: ssh\n    action: allow\n    from: [bob]\n    to: [10.3.0.0/24]\n    ports: [tcp/22]\n",
)
#: Line 5 does not close its flow sequence: YAML reports the error at line 6.
BROKEN = (
    "default: deny\nrules:\n  - id: x\n    action: allow\n    from: [alice\n    to: [10.1.0.0/24]\n"
)


async def _accept(dialog: Dialog) -> None:
    await dialog.accept()


def _create(control: Control, text: str, comment: str = "") -> dict[str, Any]:
    response = control.api("POST", "/policies", json={"yaml": text, "comment": comment})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def _publish(control: Control, version_id: int) -> None:
    response = control.api("POST", f"/policies/{version_id}/publish")
    assert response.status_code == 200, response.text


async def _relay_applies(control: Control, digest: str, timeout: float = 15) -> None:
    """Poll the relays table (the relay's heartbeat reports the digest it runs)."""
    deadline = time.monotonic() + timeout
    while True:
        relays = control.api("GET", "/relays").json()["items"]
        if any(r["id"] == RELAY and r["policy_version"] == digest for r in relays):
            return
        assert time.monotonic() < deadline, f"the relay did not apply {digest}: {relays}"
        await asyncio.sleep(0.2)


async def test_an_error_is_shown_at_its_line_and_a_valid_version_is_applied(
    page: Page, control: Control, tmp_path: Path, sign_in: SignIn, shot: Shot
) -> None:
    pki = write_identity_files(control, tmp_path / "pki", ["alice"])
    async with following_relay(control, tmp_path, pki):
        await sign_in(page, "operator")
        await page.goto(f"{control.url}/console/policies")
        await shot(page, "policies")
        await page.fill("#yaml", BROKEN)
        await page.fill("#comment", "broken on purpose")
        await page.click("#submit-policy")
        # The error list links to the message, which sits right under line 6 of the text.
        link = page.locator("#errors a[href='#error-1']")
        await expect(link).to_contain_text("line 6")
        await expect(page.locator(".src-line.err .ln")).to_have_text(["6"])
        message = page.locator("#L6 + .src-msg")
        await expect(message).to_contain_text("while parsing a flow sequence")
        assert await message.get_attribute("id") == "error-1"
        await expect(page.locator("#yaml")).to_have_value(BROKEN)  # kept for fixing
        await shot(page, "policy-error")

        await page.fill("#yaml", V1)
        await page.fill("#comment", "alice reaches the database")
        await page.click("#submit-policy")
        await page.wait_for_url("**/console/policies/*?done=created")
        await expect(page.locator(".tests tr.test.passed")).to_have_count(1)
        await expect(page.locator("#rule-eng-db")).to_have_text("  - id: eng-db")
        digest = await page.inner_text("#digest")
        page.once("dialog", _accept)
        await page.click("#publish")
        await page.wait_for_url("**?done=published")
        await expect(page.locator("h1 .published")).to_have_text("in force")
        await expect(page.locator("#done")).to_contain_text("relays apply it within seconds")
        await _relay_applies(control, digest)
        await shot(page, "policy-version")
    log = control.api("GET", "/admin-log").json()["items"]
    actions = {(e["action"], e["actor"]) for e in log}
    assert {("policy.create", "operator-user"), ("policy.publish", "operator-user")} <= actions


async def test_failing_inline_tests_are_listed_and_placed(
    page: Page, control: Control, sign_in: SignIn
) -> None:
    await sign_in(page, "admin")
    await page.goto(f"{control.url}/console/policies")
    await page.fill("#yaml", V1.replace("expect: allow", "expect: deny"))
    await page.click("#submit-policy")
    await expect(page.locator(".tests tr.test.failed")).to_contain_text("failed")
    await expect(page.locator(".src-msg")).to_contain_text("FAIL alice reaches the database")
    assert control.api("GET", "/policies").json()["items"] == []


def _flow(client: str, dport: int, verdict: str, rule: str, minutes: int) -> AuditRecord:
    ident = uuid.uuid4().hex
    ts = utc_now() - timedelta(minutes=minutes)
    record = {"id": ident, "event": f"flow.{verdict}", "client": f"client/{client}"}
    return AuditRecord(
        id=ident,
        relay_id="relay-1",
        chain="c" * 32,
        seq=minutes,
        ts=ts,
        event=f"flow.{verdict}",
        client=client,
        proto="tcp",
        dst="10.1.0.5",
        dport=dport,
        verdict=verdict,
        rule=rule,
        policy_version="v1digest",
        prev="0" * 64,
        hash=f"{minutes:064x}",
        record=record,
    )


async def test_explain_impact_and_diff(
    page: Page, control: Control, sign_in: SignIn, shot: Shot
) -> None:
    v1 = _create(control, V1, "first")
    v2 = _create(control, V2, "bob instead of alice")
    _publish(control, v1["id"])
    with control.database.session() as session:
        session.add_all(_flow("alice", 5432, "allow", "eng-db", m) for m in range(1, 6))
    await sign_in(page, "viewer")  # none of this changes anything: a viewer may
    await page.goto(f"{control.url}/console/policies/{v2['id']}")

    await page.fill("#ex-client", "alice")
    await page.fill("#ex-target", "tcp://10.1.0.5:5432")
    await page.click("#explain button[type=submit]")
    await expect(page.locator("#explain-verdict")).to_have_text("deny by the default")
    await expect(page.locator("#explanation")).to_contain_text("eng-db (allow): no match")
    await shot(page, "explain")
    await page.fill("#ex-groups", "eng")
    await page.fill("#ex-client", "bob")
    await page.fill("#ex-target", "tcp://10.3.0.9:22")
    await page.click("#explain button[type=submit]")
    await expect(page.locator("#explain-verdict")).to_contain_text("allow by rule ssh")
    await page.click("#explain-verdict a")
    assert page.url.endswith("#rule-ssh")

    await page.fill("#im-days", "2")
    await page.click("#impact button[type=submit]")
    await expect(page.locator("#impact-summary")).to_contain_text("alice loses tcp/5432")
    cells = page.locator("#impact-clients tbody tr td")
    await expect(cells).to_have_text(["alice", "5", "0"])
    await expect(page.locator("#impact-rules tbody tr")).to_contain_text(["default"])
    await shot(page, "impact")

    await page.select_option("#diff #diff-a", str(v1["id"]))
    await page.select_option("#diff #diff-b", str(v2["id"]))
    await page.click("#diff button[type=submit]")
    await page.wait_for_url(f"**/console/policies/diff?a={v1['id']}&b={v2['id']}")
    await expect(page.locator("#rules-added")).to_have_text("ssh")
    await expect(page.locator("#rules-changed")).to_have_text("eng-db")
    await expect(page.locator("#unified ins").first).to_contain_text("+    from: [bob]")
    await expect(page.locator("#unified del").first).to_contain_text("-    from: [alice]")
    await shot(page, "diff")


async def test_rollback_is_offered_for_earlier_published_versions_only(
    page: Page, control: Control, sign_in: SignIn
) -> None:
    v1 = _create(control, V1)
    v2 = _create(control, V2)
    v3 = _create(control, V2 + "# a comment: same rules, another version\n")
    _publish(control, v1["id"])
    _publish(control, v2["id"])
    await sign_in(page, "admin")
    await page.goto(f"{control.url}/console/policies/{v3['id']}")
    await expect(page.locator("#publish")).to_be_visible()
    await expect(page.locator("#rollback")).to_have_count(0)
    await page.goto(f"{control.url}/console/policies/{v2['id']}")  # in force
    await expect(page.locator("#publish, #rollback")).to_have_count(0)
    await page.goto(f"{control.url}/console/policies/{v1['id']}")
    page.once("dialog", _accept)
    await page.click("#rollback")
    await page.wait_for_url("**?done=rolled-back")
    published = control.api("GET", "/policies/published").json()
    assert published["version"]["id"] == v1["id"]
    assert published["publication"]["kind"] == "rollback"
    await page.goto(f"{control.url}/console/policies")
    row = page.locator(f"#versions tr[data-version='{v1['id']}']")
    await expect(row).to_contain_text("in force")


async def test_a_viewer_sees_no_control_that_changes_anything(
    page: Page, control: Control, sign_in: SignIn
) -> None:
    v1 = _create(control, V1)
    _create(control, V2)
    await sign_in(page, "viewer")
    for path in ("/console/policies", f"/console/policies/{v1['id']}"):
        await page.goto(f"{control.url}{path}")
        await expect(page.locator("#versions, #explain").first).to_be_visible()
        # The only form that posts is signing out.
        await expect(page.locator("main form[method=post]")).to_have_count(0)
        await expect(page.locator("#yaml, #publish, #rollback")).to_have_count(0)
    # And the handlers refuse a viewer anyway.
    csrf = await page.get_attribute("body", "data-csrf")
    refused = await page.request.post(
        f"{control.url}/console/policies/{v1['id']}/publish", form={"csrf": csrf or ""}
    )
    assert refused.status == 403
    assert control.api("GET", "/policies/published").status_code == 404


async def test_a_version_page_fits_a_phone(
    browser: Browser, control: Control, sign_in: SignIn
) -> None:
    long_id = "a-rule-with-a-very-long-identifier-" + "x" * 29  # 64, the longest allowed
    unbroken = "# " + "y" * 300 + "\n"  # one long word must wrap, not widen the page
    version = _create(control, unbroken + V1.replace("id: web", f"id: {long_id}"), unbroken)
    context = await browser.new_context(viewport={"width": 390, "height": 844})
    try:
        page = await context.new_page()
        await sign_in(page, "admin")
        await page.goto(f"{control.url}/console/policies/{version['id']}#rule-{long_id}")
        await expect(page.locator(f"[id='rule-{long_id}']")).to_be_in_viewport()
        widths = await page.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert widths[0] <= widths[1], widths
    finally:
        await context.close()


def test_errors_and_rules_are_placed_at_their_lines() -> None:
    text = "a: 1\nrules:\n  - id: r1\n"
    errors = [{"line": 3, "column": 5, "message": "bad"}, {"line": 5, "message": "at the end"}]
    lines = numbered(text, errors, {3: "r1"})
    # The final newline opens no line; an error past the end gets lines up to its own.
    assert [(line.number, line.text) for line in lines] == [
        (1, "a: 1"),
        (2, "rules:"),
        (3, "  - id: r1"),
        (4, ""),
        (5, ""),
    ]
    assert lines[2].rule == "r1" and [i for i, _ in lines[2].errors] == [1]
    assert [i for i, _ in lines[4].errors] == [2]
    assert numbered("x", [{"line": None, "message": "somewhere"}])[0].errors
