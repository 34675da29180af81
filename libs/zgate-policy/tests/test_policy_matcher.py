"""Decisions of compiled policies: first match, defaults, groups, destinations, ports, expiry."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest

from zgate_policy import CompiledPolicy, Decision, compile_policy, load_policy_text

TCP, UDP, ICMP, ICMPV6, GRE = 6, 17, 1, 58, 47
NOW = datetime(2026, 6, 1, tzinfo=UTC)


def compiled(body: str) -> CompiledPolicy:
    text = textwrap.dedent(body).lstrip()
    return compile_policy(load_policy_text(text), geoip_available=True)


def ip(text: str) -> IPv4Address | IPv6Address:
    return ip_address(text)


def decide(
    policy: CompiledPolicy,
    client: str,
    proto: int,
    dst: str | None,
    dport: int | None = None,
    *,
    groups: tuple[str, ...] = (),
    fqdns: tuple[str, ...] = (),
    country: str | None = None,
    now: datetime = NOW,
) -> str:
    """The deciding rule id, after checking that explain agrees with decide."""
    address = ip(dst) if dst is not None else None
    args = (client, groups, proto, address, dport)
    decision = policy.decide(*args, fqdns=fqdns, country=country, now=now)
    explained = policy.explain(*args, fqdns=fqdns, country=country, now=now)
    assert explained.decision == decision
    return decision.rule_id


BASIC = """
    default: deny
    groups:
      eng: [alice, bob]
      staff: [carol, "group:eng"]
      admins: []
    resources:
      corp-net:
        - 10.1.0.0/16
        - fqdn: "*.corp.example"
          ports: [tcp/443]
      web:
        - cidr: 0.0.0.0/0
          ports: [tcp/80, tcp/443]
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
      - id: staff-web
        action: allow
        from: ["group:staff"]
        to: [web]
      - id: admins-all
        action: allow
        from: ["group:admins"]
        to: ["*"]
    """


@pytest.fixture(scope="module")
def basic() -> CompiledPolicy:
    return compiled(BASIC)


def test_first_match_wins(basic: CompiledPolicy) -> None:
    # deny-evil comes before staff-web, which would allow tcp/443 anywhere.
    assert basic.decide("alice", (), TCP, ip("203.0.113.66"), 443, now=NOW) == Decision(
        "deny", "deny-evil"
    )
    assert decide(basic, "alice", TCP, "203.0.113.67", 443) == "staff-web"
    assert decide(basic, "alice", TCP, "10.1.2.3", 443) == "eng-corp"


def test_default_deny_and_default_allow(basic: CompiledPolicy) -> None:
    assert basic.decide("mallory", (), TCP, ip("10.1.2.3"), 443, now=NOW) == Decision(
        "deny", "default"
    )
    allow = compiled(BASIC.replace("default: deny", "default: allow"))
    assert allow.decide("mallory", (), TCP, ip("10.1.2.3"), 443, now=NOW) == Decision(
        "allow", "default"
    )
    assert allow.rule_ids == ("deny-evil", "eng-corp", "staff-web", "admins-all", "default")


def test_nested_groups(basic: CompiledPolicy) -> None:
    assert basic.groups_of("alice", ()) == {"eng", "staff"}
    assert basic.groups_of("carol", ()) == {"staff"}
    assert decide(basic, "carol", TCP, "10.1.2.3", 443) == "staff-web"  # staff, not eng
    assert decide(basic, "carol", TCP, "10.1.2.3", 22) == "default"
    deep = compiled(
        """
        groups:
          a: ["group:b"]
          b: ["group:c"]
          c: [zed]
        rules:
          - {id: r, action: allow, from: ["group:a"], to: ["*"]}
        """
    )
    assert deep.groups_of("zed", ()) == {"a", "b", "c"}
    assert decide(deep, "zed", UDP, "198.51.100.1", 53) == "r"


def test_certificate_groups(basic: CompiledPolicy) -> None:
    assert decide(basic, "dave", TCP, "10.9.9.9", 22) == "default"
    assert decide(basic, "dave", TCP, "10.9.9.9", 22, groups=("admins",)) == "admins-all"
    # A certificate group nested in the policy brings the enclosing groups along.
    assert basic.groups_of("dave", ("eng",)) == {"eng", "staff"}
    assert decide(basic, "dave", TCP, "10.1.2.3", 443, groups=("eng",)) == "eng-corp"
    # Groups the policy does not know are kept but match nothing.
    assert decide(basic, "dave", TCP, "10.1.2.3", 443, groups=("sales",)) == "default"


def test_ports_and_protocols_intersect(basic: CompiledPolicy) -> None:
    # eng-corp: corp-net 10.1.0.0/16 (no entry limit) x rule ports tcp/443, udp/5000-5100, icmp.
    assert decide(basic, "bob", UDP, "10.1.0.1", 5000) == "eng-corp"
    assert decide(basic, "bob", UDP, "10.1.0.1", 5100) == "eng-corp"
    assert decide(basic, "bob", UDP, "10.1.0.1", 5101) == "default"
    assert decide(basic, "bob", UDP, "10.1.0.1", 443) == "default"
    assert decide(basic, "bob", TCP, "10.1.0.1", 5000) == "default"
    assert decide(basic, "bob", GRE, "10.1.0.1") == "default"
    # The FQDN entry allows only tcp/443; the rule allows udp/5000 too: intersection is tcp/443.
    wiki = ("wiki.corp.example",)
    assert decide(basic, "bob", TCP, "198.51.100.7", 443, fqdns=wiki) == "eng-corp"
    assert decide(basic, "bob", UDP, "198.51.100.7", 5000, fqdns=wiki) == "default"
    assert decide(basic, "bob", ICMP, "198.51.100.7", fqdns=wiki) == "default"


def test_a_flow_without_a_port_matches_only_whole_protocols() -> None:
    policy = compiled(
        """
        rules:
          - {id: some, action: allow, from: ["*"], to: ["*"], ports: [tcp/1-65535]}
          - {id: all, action: deny, from: ["*"], to: ["*"], ports: [tcp]}
        """
    )
    assert decide(policy, "a", TCP, "10.0.0.1", 80) == "some"
    assert decide(policy, "a", TCP, "10.0.0.1", None) == "all"


def test_icmp_covers_v4_and_v6(basic: CompiledPolicy) -> None:
    assert decide(basic, "alice", ICMP, "10.1.0.9") == "eng-corp"
    v6 = compiled(
        """
        rules:
          - {id: ping6, action: allow, from: ["*"], to: ["2001:db8::/32"], ports: [icmp]}
          - {id: v4only, action: allow, from: ["*"], to: [10.0.0.0/8], ports: [any]}
        """
    )
    assert decide(v6, "a", ICMPV6, "2001:db8::1") == "ping6"
    assert decide(v6, "a", TCP, "2001:db8::1", 80) == "default"
    assert decide(v6, "a", GRE, "10.0.0.1") == "v4only"


def test_ipv6_and_ipv4_never_mix() -> None:
    policy = compiled(
        """
        rules:
          - {id: v6, action: allow, from: ["*"], to: ["2001:db8:1::/48", "::/0"], ports: [tcp/22]}
          - {id: v4, action: allow, from: ["*"], to: [0.0.0.0/0, 10.0.0.0/8]}
          - {id: host6, action: deny, from: ["*"], to: ["2001:db8::5"]}
        """
    )
    assert decide(policy, "a", TCP, "2001:db8:1::9", 22) == "v6"
    assert decide(policy, "a", TCP, "2001:db8::5", 80) == "host6"
    assert decide(policy, "a", TCP, "2001:db8::6", 80) == "default"
    # ::a00:1 has the same integer as 10.0.0.1 but is not in 10.0.0.0/8.
    assert decide(policy, "a", TCP, "::a00:1", 80) == "default"
    assert decide(policy, "a", TCP, "10.0.0.1", 22) == "v4"


def test_fqdn_wildcards_match_subdomains_not_the_apex() -> None:
    policy = compiled(
        """
        resources:
          corp: [{fqdn: "*.corp.example"}]
        rules:
          - {id: exact, action: deny, from: ["*"], to: [secret.corp.example]}
          - {id: wild, action: allow, from: ["*"], to: [corp]}
        """
    )

    def by_name(name: str) -> str:
        return decide(policy, "a", TCP, "198.51.100.1", 443, fqdns=(name,))

    assert by_name("a.corp.example") == "wild"
    assert by_name("a.b.corp.example") == "wild"
    assert by_name("A.Corp.Example.") == "wild"  # names are case-insensitive, final dot ignored
    assert by_name("corp.example") == "default"
    assert by_name("xcorp.example") == "default"
    assert by_name("secret.corp.example") == "exact"
    assert by_name("a.secret.corp.example") == "wild"
    # Without a name the IP alone cannot match an FQDN rule; with several names, any counts.
    assert decide(policy, "a", TCP, "198.51.100.1", 443) == "default"
    both = ("x.org", "a.corp.example")
    assert decide(policy, "a", TCP, "198.51.100.1", 443, fqdns=both) == "wild"
    # A destination known only by its name (dst None).
    assert decide(policy, "a", TCP, None, 443, fqdns=("z.corp.example",)) == "wild"


def test_country_rules() -> None:
    policy = compiled(
        """
        resources:
          europe: [{country: [DE, FR]}]
        rules:
          - {id: eu, action: allow, from: ["*"], to: [europe]}
          - {id: us, action: deny, from: ["*"], to: ["country:US"]}
        """
    )
    assert policy.uses_geoip and not policy.uses_fqdn
    assert decide(policy, "a", TCP, "198.51.100.1", 443, country="DE") == "eu"
    assert decide(policy, "a", TCP, "198.51.100.1", 443, country="fr") == "eu"
    assert decide(policy, "a", TCP, "198.51.100.1", 443, country="US") == "us"
    assert decide(policy, "a", TCP, "198.51.100.1", 443, country="JP") == "default"
    assert decide(policy, "a", TCP, "198.51.100.1", 443) == "default"


def test_expired_rules_never_match() -> None:
    policy = compiled(
        """
        rules:
          - {id: temp, action: allow, from: [alice], to: ["*"], expires: 2026-06-01T12:00:00Z}
          - {id: rest, action: deny, from: ["*"], to: ["*"]}
        """
    )
    expiry = datetime(2026, 6, 1, 12, tzinfo=UTC)
    assert decide(policy, "alice", TCP, "10.0.0.1", 1, now=expiry - timedelta(seconds=1)) == "temp"
    assert decide(policy, "alice", TCP, "10.0.0.1", 1, now=expiry) == "rest"
    assert decide(policy, "alice", TCP, "10.0.0.1", 1, now=expiry + timedelta(days=1)) == "rest"
    # A naive `now` is taken as UTC rather than failing the comparison.
    assert decide(policy, "alice", TCP, "10.0.0.1", 1, now=datetime(2026, 6, 1, 11)) == "temp"


def test_the_index_skips_candidates_that_fail_on_another_target() -> None:
    # r1's first target matches the destination, its second the port: not one target both.
    policy = compiled(
        """
        rules:
          - id: r1
            action: deny
            from: ["*"]
            to: [{cidr: 10.0.0.0/8, ports: [udp/53]}, {cidr: 192.0.2.0/24, ports: [tcp/443]}]
          - {id: r2, action: allow, from: ["*"], to: [10.0.0.0/8]}
        """
    )
    assert decide(policy, "a", TCP, "10.0.0.1", 443) == "r2"
    assert decide(policy, "a", UDP, "10.0.0.1", 53) == "r1"


def test_explain_says_why_each_rule_did_not_match(basic: CompiledPolicy) -> None:
    explanation = basic.explain("carol", (), TCP, ip("10.1.2.3"), 22, now=NOW)
    assert explanation.decision == Decision("deny", "default")
    reasons = {step.rule_id: step.reason for step in explanation.steps}
    assert reasons["deny-evil"] == "destination: 10.1.2.3 is not in [203.0.113.66/32]"
    assert reasons["eng-corp"] == "principal: not one of [group:eng]"
    assert reasons["staff-web"].startswith("port: tcp/22 is not allowed (web: 0.0.0.0/0: tcp/80")
    assert reasons["admins-all"] == "principal: not one of [group:admins]"
    lines = explanation.lines()
    assert lines[0] == "verdict: deny (the default)"
    assert lines[-1] == "  default (deny): no rule matched"

    matched = basic.explain("alice", (), TCP, ip("10.1.2.3"), 443, now=NOW)
    assert [s.matched for s in matched.steps] == [False, True]
    assert matched.steps[-1].reason == (
        "from [group:eng], to corp-net: 10.1.0.0/16, ports icmp, tcp/443, udp/5000-5100"
    )
    assert matched.lines()[0] == "verdict: allow (rule eng-corp)"


def test_explain_reports_expiry() -> None:
    policy = compiled(
        """
        rules:
          - {id: temp, action: allow, from: ["*"], to: ["*"], expires: 2026-01-01}
        """
    )
    step = policy.explain("a", (), TCP, ip("10.0.0.1"), 1, now=NOW).steps[0]
    assert (step.matched, step.reason) == (False, "expired at 2026-01-01T00:00:00+00:00")


def test_version_ignores_layout_but_not_content() -> None:
    one = compiled(BASIC)
    block = "      eng:\n        - alice\n        - bob  # the eng team\n"
    reformatted = compiled(BASIC.replace("      eng: [alice, bob]\n", block))
    other = compiled(BASIC.replace("tcp/80, tcp/443", "tcp/443"))
    assert len(one.version) == 12 and int(one.version, 16) >= 0
    assert reformatted.version == one.version
    assert other.version != one.version


def test_caches_are_bounded(basic: CompiledPolicy) -> None:
    for i in range(20_000):
        basic.groups_of(f"user{i}", ())
    assert 0 < len(basic._groups_cache) <= 16384
