"""zgate_policy.lint: rules that can never match (shadowed, emptied or expired)."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime

from zgate_policy import lint, load_policy_text

NOW = datetime(2026, 6, 1, tzinfo=UTC)


LINT = textwrap.dedent(
    """
    groups:
      eng: [alice]
      staff: ["group:eng", carol]
    resources:
      web: [{cidr: 0.0.0.0/0, ports: [tcp/80, tcp/443]}]
      empty: []
    rules:
      - {id: a, action: allow, from: ["group:staff"], to: [10.0.0.0/8]}
      - {id: b, action: deny, from: [alice], to: [10.1.0.0/16], ports: [tcp/443]}
      - {id: c, action: allow, from: ["*"], to: [web]}
      - {id: d, action: allow, from: [bob], to: [{cidr: 203.0.113.0/24, ports: [tcp/443]}]}
      - {id: e, action: allow, from: [bob], to: ["*.x.example"], ports: [tcp/22]}
      - {id: f, action: allow, from: [bob], to: ["*.a.x.example", b.x.example], ports: [tcp/22]}
      - {id: g, action: allow, from: [bob], to: [{fqdn: a.example, ports: [udp/1]}], ports: [tcp]}
      - {id: h, action: allow, from: [bob], to: ["*"], expires: 2020-01-01}
      - {id: i, action: allow, from: [bob], to: [empty]}
      - {id: j, action: allow, from: [bob], to: [x.example], ports: [tcp/22]}
      - {id: k, action: allow, from: [bob, "group:eng"], to: ["2001:db8::/32"]}
      - {id: l, action: deny, from: [bob], to: ["2001:db8:1::/48"], ports: [udp/53]}
      - {id: m, action: deny, from: ["*"], to: ["2001:db8:1::/48"], ports: [udp/53]}
      - {id: n, action: deny, from: [carol], to: ["country:DE"]}
      - {id: o, action: deny, from: [carol], to: [{country: [DE, FR]}]}
    """
)


def test_lint_finds_rules_that_can_never_match() -> None:
    warnings = lint(load_policy_text(LINT), now=NOW)
    found = {w.rule_id: w.message for w in warnings}
    assert set(found) == {"b", "d", "f", "g", "h", "i", "l"}
    assert found["b"] == 'can never match: rule "a" (rules[0]) matches all of its flows first'
    assert found["d"].endswith(
        'rule "c" (rules[2]) matches all of its flows first (same action: redundant)'
    )
    assert 'rule "e"' in found["f"]
    assert "no destination is left" in found["g"]
    assert found["h"].startswith("expired at 2020-01-01")
    assert "no destination is left" in found["i"]
    assert 'rule "k"' in found["l"]
    assert warnings[0].path == ("rules", 1)
    # Without a time, expiry is not judged.
    assert "h" not in {w.rule_id for w in lint(load_policy_text(LINT))}


def test_lint_does_not_count_rules_with_expiry_or_partial_cover() -> None:
    text = textwrap.dedent(
        """
        rules:
          - {id: a, action: allow, from: ["*"], to: [10.0.0.0/8], expires: 2099-01-01}
          - {id: b, action: allow, from: ["*"], to: [10.1.0.0/16]}
          - {id: c, action: allow, from: ["*"], to: [10.1.0.0/16, 192.0.2.0/24]}
          - {id: d, action: allow, from: [x], to: [{cidr: 10.1.0.0/16, ports: [udp/53]}]}
        """
    )
    found = {w.rule_id: w.message for w in lint(load_policy_text(text), now=NOW)}
    assert set(found) == {"d"}
    assert 'rule "b"' in found["d"]
