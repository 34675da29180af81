"""Converting the Go original's policy format: the output loads, compiles and decides the same."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from ipaddress import IPv4Address, ip_address, ip_network

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from zgate_policy import (
    PolicyInvalid,
    compile_policy,
    convert_go_policy,
    load_policy_text,
)

NOW = datetime(2026, 6, 1, tzinfo=UTC)

GO = textwrap.dedent(
    """
    default_action: allow
    clients:
      alice:
        rules:
          - {action: allow, destination: 10.0.0.0/8}
          - {action: deny,  destination: 0.0.0.0/0}
      bob.smith:
        rules:
          - action: deny
            destination: 10.1.2.3
          - {action: allow, destination: 10.1.2.0/24}
          - {action: deny, destination: git.corp.example}
          - {action: allow, destination: 192.0.2.7/24}
    """
).lstrip()


def test_each_go_entry_becomes_one_rule() -> None:
    out = convert_go_policy(GO, "go.yaml")
    policy = load_policy_text(out)
    assert policy.default == "allow"
    assert [(r.id, r.action, r.from_) for r in policy.rules] == [
        ("go-alice-1", "allow", ("alice",)),
        ("go-alice-2", "deny", ("alice",)),
        ("go-bob.smith-1", "deny", ("bob.smith",)),
        ("go-bob.smith-2", "allow", ("bob.smith",)),
        ("go-bob.smith-3", "deny", ("bob.smith",)),
        ("go-bob.smith-4", "allow", ("bob.smith",)),
    ]
    assert str(policy.rules[2].to[0]) == "10.1.2.3/32"
    assert policy.rules[4].to[0].resource == "git.corp.example"  # an FQDN destination
    assert str(policy.rules[5].to[0]) == "192.0.2.0/24"  # Go accepts host bits; we clear them
    assert out.startswith("# Converted from the Go policy go.yaml")


def go_decision(client: str, dst: IPv4Address) -> str:
    """The Go semantics: the client's first matching entry, else the default."""
    entries = {
        "alice": [("allow", "10.0.0.0/8"), ("deny", "0.0.0.0/0")],
        "bob.smith": [("deny", "10.1.2.3/32"), ("allow", "10.1.2.0/24"), ("allow", "192.0.2.0/24")],
    }
    for action, net in entries.get(client, []):
        if dst in ip_network(net):
            return action
    return "allow"


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["alice", "bob.smith", "carol"]),
    st.sampled_from(["10.1.2.3", "10.1.2.4", "10.2.0.1", "192.0.2.9", "198.51.100.1"]),
)
def test_converted_policy_decides_like_the_go_plan(client: str, dst: str) -> None:
    compiled = compile_policy(load_policy_text(convert_go_policy(GO)), geoip_available=False)
    address = ip_address(dst)
    assert isinstance(address, IPv4Address)
    decision = compiled.decide(client, (), 6, address, 443, now=NOW)
    assert decision.verdict == go_decision(client, address)


def test_round_trip_is_stable() -> None:
    once = load_policy_text(convert_go_policy(GO))
    again = load_policy_text(convert_go_policy(GO))
    assert once.model_dump() == again.model_dump()


def test_empty_go_policy() -> None:
    policy = load_policy_text(convert_go_policy("default_action: deny\n"))
    assert (policy.default, policy.rules) == ("deny", ())


def test_long_client_names_get_unique_ids() -> None:
    long = "c" * 64
    text = f"clients:\n  {long}:\n    rules:\n" + "".join(
        f"      - {{action: allow, destination: 10.0.0.{i}}}\n" for i in range(12)
    )
    policy = load_policy_text(convert_go_policy(text))
    ids = [r.id for r in policy.rules]
    assert len(set(ids)) == 12 and all(len(i) <= 64 for i in ids)


@pytest.mark.parametrize(
    ("text", "position", "field", "message"),
    [
        ("default_action: maybe\n", (1, 17), "default_action", "expected 'allow' or 'deny'"),
        ("clients:\n  bad name:\n    rules: []\n", (2, 3), "clients.bad name", "invalid client"),
        (
            "clients:\n  a:\n    rules:\n      - {action: allow, destination: 10.0.0.0/33}\n",
            (4, 38),
            "clients.a.rules[0].destination",
            "invalid destination",
        ),
        (
            "clients:\n  a:\n    rules:\n      - {action: allow, dest: 10.0.0.0/8}\n",
            (4, 31),
            "clients.a.rules[0].dest",
            "unknown field",
        ),
    ],
)
def test_errors_point_at_the_go_file(
    text: str, position: tuple[int, int], field: str, message: str
) -> None:
    with pytest.raises(PolicyInvalid) as caught:
        convert_go_policy(text, "go.yaml")
    (problem,) = [p for p in caught.value.problems if p.field == field]
    assert problem.file == "go.yaml"
    assert (problem.line, problem.column) == position
    assert message in problem.message


GO_LEAVES = st.one_of(
    st.none(),
    st.sampled_from(["allow", "deny", "10.0.0.0/8", "a.example", "any", "x y", "2001:db8::/32"]),
    st.text(max_size=8),
)
GO_KEYS = st.sampled_from(["default_action", "clients", "rules", "action", "destination", "alice"])
GO_DOCS = st.recursive(
    GO_LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(GO_KEYS, inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=120), GO_DOCS.map(lambda d: yaml.safe_dump(d))))
def test_arbitrary_go_input_converts_or_raises_policy_invalid(text: str) -> None:
    try:
        out = convert_go_policy(text)
    except PolicyInvalid as exc:
        assert exc.problems
    else:
        assert load_policy_text(out).default in ("allow", "deny")
