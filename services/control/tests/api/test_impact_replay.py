"""The impact replay on its own: rows in, changes out, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from zgate_control.services.impact import FlowGroup, Impact, replay, window_phrase
from zgate_policy import CompiledPolicy, compile_policy, load_policy_text

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
WEEK = timedelta(days=7)

CANDIDATE = """\
groups:
  sre: []  # from certificates only
rules:
  - id: db
    action: allow
    from: [group:sre]
    to: [10.1.0.0/24]
    ports: [tcp/5432]
  - id: ping
    action: allow
    from: ["*"]
    to: [10.2.0.0/16]
    ports: [icmp]
  - id: temp
    action: allow
    from: [alice]
    to: [10.9.0.0/16]
    expires: 2026-05-01T00:00:00Z
  - id: names
    action: allow
    from: ["*"]
    to: ["*.corp.example"]
"""


def compiled() -> CompiledPolicy:
    """The candidate, compiled."""
    return compile_policy(load_policy_text(CANDIDATE), geoip_available=True)


def row(
    client: str,
    proto: str,
    dst: str | None,
    dport: int | None,
    verdict: str,
    flows: int,
    *,
    rule: str | None = "old",
    fqdn: str | None = None,
    ago: timedelta = timedelta(hours=1),
) -> FlowGroup:
    return FlowGroup(client, proto, dst, dport, fqdn, verdict, rule, flows, NOW - ago)


def run(
    rows: list[FlowGroup], limit: int = 100, groups: dict[str, list[str]] | None = None
) -> Impact:
    return replay(
        rows,
        compiled(),
        client_groups=groups or {},
        since=NOW - WEEK,
        until=NOW,
        now=NOW,
        limit=limit,
    )


def test_groups_come_from_the_clients_table() -> None:
    rows = [
        row("alice", "tcp", "10.1.0.5", 5432, "allow", 4),
        row("bob", "tcp", "10.1.0.5", 5432, "deny", 3),
        row("carol", "tcp", "10.1.0.5", 5432, "allow", 2),
    ]
    result = run(rows, groups={"bob": ["sre"], "carol": ["sre"]})
    assert [(c.client, c.change, c.flows, c.new_rule) for c in result.changes] == [
        ("alice", "loses", 4, "default"),  # not registered: no groups
        ("bob", "gains", 3, "db"),
    ]
    assert result.flows_considered == 9 and result.distinct == 3


def test_rows_differing_only_in_what_the_replay_ignores_are_merged() -> None:
    # ICMP's dport is the echo identifier: two echo ids are one change.
    rows = [
        row("dave", "icmp", "10.2.0.1", 17, "deny", 5, ago=timedelta(hours=3)),
        row("dave", "icmp", "10.2.0.1", 99, "deny", 6, ago=timedelta(hours=1)),
    ]
    [change] = run(rows).changes
    assert (change.flows, change.dport, change.last_seen) == (11, None, NOW - timedelta(hours=1))
    assert change.describe("today") == "dave gains icmp to 10.2.0.1: 11 flows today"


def test_names_expiry_and_unknown_protocols() -> None:
    rows = [
        row("erin", "tcp", "192.0.2.1", 443, "deny", 1, fqdn="www.corp.example"),
        row("alice", "tcp", "10.9.0.1", 80, "allow", 2, rule="temp"),  # expired by now
        row("frank", "gre", "10.2.0.1", 0, "allow", 9),
        row("frank", "47", "10.2.0.1", 0, "allow", 1),
        row("gina", "tcp", "0a000001", 443, "allow", 1),  # an address the relay wrote as hex
    ]
    result = run(rows)
    assert [(c.client, c.change, c.new_rule) for c in result.changes] == [
        ("alice", "loses", "default"),
        ("erin", "gains", "names"),
        ("frank", "loses", "default"),
        ("gina", "loses", "default"),
    ]
    assert result.undecidable == 1 and result.flows_considered == 14
    assert result.summary[1] == "erin gains tcp/443 to www.corp.example: 1 flow in the last 7 days"


def test_changes_are_capped_but_the_totals_count_everything() -> None:
    rows = [row(f"u{i}", "tcp", "10.1.0.5", 5432, "allow", 10 + i) for i in range(5)]
    rows.append(row("u0", "tcp", "10.2.0.5", 22, "allow", 1))
    result = run(rows, limit=2)
    assert [c.client for c in result.changes] == ["u4", "u3"]
    assert result.truncated and len(result.summary) == 2
    assert [(c.client, c.loses) for c in result.by_client] == [
        ("u4", 14),
        ("u3", 13),
        ("u2", 12),
        ("u0", 11),
        ("u1", 11),
    ]
    assert [(r.rule, r.loses, r.gains) for r in result.by_rule] == [("default", 61, 0)]


def test_window_phrases() -> None:
    assert window_phrase(NOW - WEEK, NOW, NOW) == "in the last 7 days"
    assert window_phrase(NOW - timedelta(days=1), NOW, NOW) == "in the last day"
    assert window_phrase(NOW - timedelta(hours=1), NOW, NOW) == "in the last hour"
    assert window_phrase(NOW - timedelta(hours=5), NOW, NOW) == "in the last 5 hours"
    assert (
        window_phrase(NOW - timedelta(minutes=90), NOW, NOW)
        == "between 2026-06-01 10:30 and 2026-06-01 12:00 UTC"
    )
    assert window_phrase(NOW - WEEK, NOW - WEEK / 2, NOW).startswith("between 2026-05-25 12:00")
