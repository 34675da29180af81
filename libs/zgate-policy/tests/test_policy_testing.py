"""zgate_policy.testing: the policy's inline tests, run at every load (load_and_compile refuses a
policy whose tests fail)."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from ipaddress import ip_address
from pathlib import Path

import pytest

from zgate_policy import (
    PolicyInvalid,
    PolicyTestFailed,
    TestTarget,
    compile_policy,
    load_and_compile,
    load_policy_text,
    run_policy_tests,
    target_flow,
)

NOW = datetime(2026, 6, 1, tzinfo=UTC)

POLICY = textwrap.dedent(
    """
    default: deny
    groups:
      eng: [alice, bob]
    resources:
      corp-net:
        - 10.1.0.0/16
        - fqdn: "*.corp.example"
          ports: [tcp/443]
    rules:
      - id: deny-evil
        action: deny
        from: ["*"]
        to: [203.0.113.66/32]
      - id: eng-corp
        action: allow
        from: ["group:eng"]
        to: [corp-net]
        ports: [tcp/443, udp/5000-5100, icmp]
        expires: 2027-01-01T00:00:00Z
    tests:
      - {from: alice, to: "tcp://10.1.2.3:443", expect: allow}
      - {from: mallory, to: "udp://203.0.113.66:53", expect: deny, rule: deny-evil}
      - {from: alice, to: "tcp://wiki.corp.example:443", expect: allow}
      - {from: dave, groups: [eng], to: "icmp://10.1.0.1", expect: allow}
      - {from: alice, to: "tcp://10.1.2.3:443", expect: deny, at: 2027-01-02}
    """
).lstrip()


def test_all_inline_tests_pass_and_load_and_compile_returns_the_policy(tmp_path: Path) -> None:
    loaded = load_policy_text(POLICY)
    results = run_policy_tests(loaded, compile_policy(loaded, geoip_available=False), now=NOW)
    assert [r.passed for r in results] == [True] * 5
    assert results[1].decision.rule_id == "deny-evil"
    assert results[0].describe() == (
        "alice -> tcp://10.1.2.3:443: allow by eng-corp (expected allow)"
    )
    compiled = load_and_compile(POLICY, geoip_available=False, now=NOW)
    assert compiled.rule_ids == ("deny-evil", "eng-corp", "default")
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    assert load_and_compile(path, geoip_available=False, now=NOW).version == compiled.version


def test_a_failing_test_refuses_the_policy_and_says_where() -> None:
    text = POLICY.replace("expect: deny, rule: deny-evil", "expect: allow")
    with pytest.raises(PolicyTestFailed) as caught:
        load_and_compile(text, geoip_available=False, now=NOW, name="policy.yaml")
    (failure,) = caught.value.failures
    assert failure.index == 1 and failure.decision.rule_id == "deny-evil"
    line = text.splitlines().index(
        '  - {from: mallory, to: "udp://203.0.113.66:53", expect: allow}'
    )
    assert str(caught.value) == (
        f"policy.yaml:{line + 1}:5: tests[1]: FAIL mallory -> udp://203.0.113.66:53:"
        " deny by deny-evil (expected allow)"
    )


def test_the_expected_rule_id_is_checked_too() -> None:
    text = POLICY.replace("rule: deny-evil", "rule: eng-corp")
    with pytest.raises(PolicyTestFailed):
        load_and_compile(text, geoip_available=False, now=NOW)


def test_tests_run_at_the_load_time_unless_they_give_one() -> None:
    # After the expiry the first test fails: a policy must not be accepted then.
    with pytest.raises(PolicyTestFailed) as caught:
        load_and_compile(POLICY, geoip_available=False, now=datetime(2027, 2, 1, tzinfo=UTC))
    assert {r.index for r in caught.value.failures} == {0, 2, 3}


def test_invalid_policies_are_refused_before_tests() -> None:
    with pytest.raises(PolicyInvalid):
        load_and_compile(POLICY.replace("group:eng", "group:engg"), geoip_available=False, now=NOW)


def test_name_targets_match_only_fqdn_rules() -> None:
    name = TestTarget.parse("tcp://wiki.corp.example:443")
    assert target_flow(name) == (6, None, 443, ("wiki.corp.example",))
    address = TestTarget.parse("udp://[2001:db8::1]:53")
    assert target_flow(address, "ns.example") == (
        17,
        ip_address("2001:db8::1"),
        53,
        ("ns.example",),
    )
    assert target_flow(TestTarget.parse("icmp://2001:db8::1"))[0] == 58
    assert target_flow(TestTarget.parse("icmp://10.0.0.1"))[0] == 1
    assert str(address) == "udp://[2001:db8::1]:53"
    # A name in 10.1.0.0/16 is still only a name: the CIDR entry does not apply to it.
    text = POLICY + '  - {from: alice, to: "tcp://intranet.example:443", expect: deny}\n'
    assert load_and_compile(text, geoip_available=False, now=NOW).version


def test_tests_can_give_the_resolved_name_and_the_country() -> None:
    text = textwrap.dedent(
        """
        rules:
          - {id: wiki, action: allow, from: ["*"], to: [wiki.corp.example]}
          - {id: de, action: allow, from: ["*"], to: ["country:DE"]}
        tests:
          - {from: a, to: "tcp://198.51.100.1:443", fqdn: wiki.corp.example, expect: allow}
          - {from: a, to: "tcp://198.51.100.1:443", expect: deny}
          - {from: a, to: "tcp://198.51.100.2:22", country: de, expect: allow, rule: de}
        """
    )
    assert load_and_compile(text, geoip_available=True, now=NOW).uses_geoip
