"""The compiled matcher against a naive reference: random small policies, random flows.

The reference reads the Policy model directly and checks every rule in order, written
independently of the compiler (its own group closure, FQDN, CIDR and port-spec matching), so
both have to agree on first-match semantics, intersections of port limits, groups and expiry.
"""

from __future__ import annotations

from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from zgate_policy import Policy, PortSpec, compile_policy
from zgate_policy.model import Destination

CLIENTS = ["alice", "bob", "carol", "dave"]
GROUPS = ["g0", "g1", "g2"]
NAMES = ["a.example", "b.a.example", "example", "c.b.a.example", "x.org", "ab.example"]
PATTERNS = ["a.example", "*.example", "b.a.example", "*.a.example", "x.org", "*.x.org"]
COUNTRIES = ["DE", "FR", "US"]
PORT_SPECS = [
    "tcp",
    "udp",
    "icmp",
    "any",
    "tcp/80",
    "tcp/1-100",
    "udp/53",
    "tcp/50-60",
    "udp/1-65535",
]
TIMES = [datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 7, 1, tzinfo=UTC)]
EXPIRY = datetime(2026, 3, 1, tzinfo=UTC)

Flow = tuple[
    str,
    tuple[str, ...],
    int,
    IPv4Address | IPv6Address | None,
    int | None,
    tuple[str, ...],
    str | None,
    datetime,
]


def _cidrs() -> st.SearchStrategy[str]:
    v4 = st.builds(
        lambda length, host: str(ip_network((0x0A000000 | host, length), strict=False)),
        st.integers(24, 32),
        st.integers(0, 255),
    )
    v6 = st.builds(
        lambda length, host: str(
            ip_network((int(IPv6Address("2001:db8::")) | host, length), strict=False)
        ),
        st.integers(120, 128),
        st.integers(0, 255),
    )
    return st.one_of(v4, v6, st.sampled_from(["0.0.0.0/0", "::/0", "10.0.0.0/8"]))


PORTS = st.none() | st.lists(st.sampled_from(PORT_SPECS), min_size=1, max_size=3)


def _with_ports(place: dict[str, Any], ports: list[str] | None) -> dict[str, Any] | str:
    return {**place, "ports": ports} if ports is not None else place


PLACE = st.one_of(
    _cidrs().map(lambda c: {"cidr": c}),
    st.sampled_from(PATTERNS).map(lambda f: {"fqdn": f}),
    st.lists(st.sampled_from(COUNTRIES), min_size=1, max_size=2).map(lambda c: {"country": c}),
)
ENTRY = st.builds(_with_ports, PLACE, PORTS)
RULE_TO = st.one_of(
    ENTRY,
    _cidrs(),
    st.sampled_from(["*", "res0", "res1", "b.a.example", "*.example", "country:DE"]),
    st.builds(
        lambda r, p: _with_ports({"resource": r}, p), st.sampled_from(["res0", "res1"]), PORTS
    ),
)
PRINCIPAL = st.sampled_from(["*", *CLIENTS, *(f"group:{g}" for g in GROUPS)])


@st.composite
def policies(draw: st.DrawFn) -> dict[str, Any]:
    groups = {}
    for i, name in enumerate(GROUPS):
        nested = [f"group:{g}" for g in draw(st.lists(st.sampled_from(GROUPS[i + 1 :] or ["-"])))]
        clients = draw(st.lists(st.sampled_from(CLIENTS), max_size=3))
        groups[name] = [*clients, *(n for n in nested if n != "group:-")]
    rules = []
    for i in range(draw(st.integers(0, 8))):
        rule: dict[str, Any] = {
            "id": f"r{i}",
            "action": draw(st.sampled_from(["allow", "deny"])),
            "from": draw(st.lists(PRINCIPAL, min_size=1, max_size=3)),
            "to": draw(st.lists(RULE_TO, min_size=1, max_size=3)),
        }
        ports = draw(PORTS)
        if ports is not None:
            rule["ports"] = ports
        if draw(st.booleans()):
            rule["expires"] = EXPIRY.isoformat()
        rules.append(rule)
    return {
        "default": draw(st.sampled_from(["allow", "deny"])),
        "groups": groups,
        "resources": {
            "res0": draw(st.lists(ENTRY, max_size=3)),
            "res1": draw(st.lists(ENTRY, max_size=3)),
        },
        "rules": rules,
    }


def _address(v6: bool, host: int) -> IPv4Address | IPv6Address:
    return (
        ip_address(int(IPv6Address("2001:db8::")) + host) if v6 else IPv4Address(0x0A000000 + host)
    )


FLOWS = st.tuples(
    st.sampled_from([*CLIENTS, "eve"]),
    st.lists(st.sampled_from([*GROUPS, "other"]), max_size=2).map(tuple),
    st.sampled_from([1, 6, 17, 58, 47]),
    st.one_of(st.none(), st.builds(_address, st.booleans(), st.integers(0, 255))),
    st.one_of(st.none(), st.integers(1, 120), st.sampled_from([53, 80, 443, 65535])),
    st.lists(st.sampled_from(NAMES), max_size=2).map(tuple),
    st.one_of(st.none(), st.sampled_from(COUNTRIES)),
    st.sampled_from(TIMES),
)


# ---- the reference -------------------------------------------------------------------------


def _groups(policy: Policy, client: str, cert_groups: tuple[str, ...]) -> set[str]:
    groups = set(cert_groups)
    changed = True
    while changed:
        changed = False
        for name, members in policy.groups.items():
            if name not in groups and (
                client in members or any(f"group:{g}" in members for g in groups)
            ):
                groups.add(name)
                changed = True
    return groups


def _spec_allows(spec: PortSpec, proto: int, dport: int | None) -> bool:
    if spec.proto == "any":
        return True
    if spec.proto == "icmp":
        return proto in (1, 58)
    if proto != {"tcp": 6, "udp": 17}[spec.proto]:
        return False
    if (spec.low, spec.high) == (0, 65535):
        return True
    return dport is not None and spec.low <= dport <= spec.high


def _limit_allows(specs: tuple[PortSpec, ...] | None, proto: int, dport: int | None) -> bool:
    return specs is None or any(_spec_allows(s, proto, dport) for s in specs)


def _name_matches(pattern: str, name: str) -> bool:
    if pattern.startswith("*."):
        suffix = pattern[2:].split(".")
        labels = name.split(".")
        return len(labels) > len(suffix) and labels[-len(suffix) :] == suffix
    return pattern == name


def _place_matches(entry: Destination, flow: Flow) -> bool:
    _, _, _, dst, _, fqdns, country, _ = flow
    if entry.cidr is not None:
        return dst is not None and dst.version == entry.cidr.version and dst in entry.cidr
    if entry.fqdn is not None:
        return any(_name_matches(entry.fqdn, n) for n in fqdns)
    if entry.country is not None:
        return country in entry.country
    if entry.resource == "*":
        return True
    return any(_name_matches(str(entry.resource), n) for n in fqdns)


def naive(policy: Policy, flow: Flow) -> tuple[str, str]:
    client, cert_groups, proto, _, dport, _, _, now = flow
    principals = {client, *(f"group:{g}" for g in _groups(policy, client, cert_groups))}
    for rule in policy.rules:
        if rule.expires is not None and now >= rule.expires:
            continue
        if "*" not in rule.from_ and not principals & set(rule.from_):
            continue
        for entry in rule.to:
            limits = [rule.ports, entry.ports]
            if entry.resource in policy.resources:
                places = [(sub, [*limits, sub.ports]) for sub in policy.resources[entry.resource]]
            else:
                places = [(entry, limits)]
            for place, place_limits in places:
                if _place_matches(place, flow) and all(
                    _limit_allows(limit, proto, dport) for limit in place_limits
                ):
                    return rule.action, rule.id
    return policy.default, "default"


@settings(max_examples=400, deadline=None)
@given(policies(), st.lists(FLOWS, min_size=1, max_size=25))
def test_compiled_decisions_equal_the_naive_reference(
    doc: dict[str, Any], flows: list[Flow]
) -> None:
    policy = Policy.model_validate(doc)
    compiled = compile_policy(policy, geoip_available=True)
    for flow in flows:
        client, groups, proto, dst, dport, fqdns, country, now = flow
        decision = compiled.decide(
            client, groups, proto, dst, dport, fqdns=fqdns, country=country, now=now
        )
        assert (decision.verdict, decision.rule_id) == naive(policy, flow), flow
        explained = compiled.explain(
            client, groups, proto, dst, dport, fqdns=fqdns, country=country, now=now
        )
        assert explained.decision == decision
