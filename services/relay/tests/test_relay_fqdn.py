"""Per-client FQDN bindings: TTLs on a fake clock, isolation, bounds, CNAME chains."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zgate_relay.fqdn import FqdnBindings, normalize_name

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address
WEB = V4("203.0.113.10")
WEB6 = V6("2001:db8::10")


def test_binding_lives_for_its_ttl_and_no_longer() -> None:
    b = FqdnBindings()
    b.record("alice", "Wiki.Corp.Example.", [WEB, WEB6], ttl=60, now=1000.0)
    assert b.names_for("alice", WEB, 1000.0) == {"wiki.corp.example"}
    assert b.names_for("alice", WEB6.packed, 1059.9) == {"wiki.corp.example"}
    assert b.names_for("alice", WEB, 1060.0) == frozenset()
    assert b.names_for("alice", V4("203.0.113.11"), 1000.0) == frozenset()


def test_bindings_are_per_client() -> None:
    b = FqdnBindings()
    b.record("alice", "wiki.corp.example", [WEB], ttl=60, now=0.0)
    b.record("bob", "evil.example", [WEB], ttl=60, now=0.0)
    assert b.names_for("alice", WEB, 1.0) == {"wiki.corp.example"}
    assert b.names_for("bob", WEB, 1.0) == {"evil.example"}
    assert b.names_for("carol", WEB, 1.0) == frozenset()
    b.forget("alice")
    assert b.names_for("alice", WEB, 1.0) == frozenset()
    assert b.names_for("bob", WEB, 1.0) == {"evil.example"}
    assert len(b) == 1


def test_ttl_is_clamped() -> None:
    b = FqdnBindings(min_ttl=5, max_ttl=100)
    b.record("alice", "zero.example", [WEB], ttl=0, now=0.0)
    b.record("alice", "long.example", [WEB6], ttl=86400, now=0.0)
    assert b.names_for("alice", WEB, 4.9) == {"zero.example"}
    assert b.names_for("alice", WEB, 5.0) == frozenset()
    assert b.names_for("alice", WEB6, 99.0) == {"long.example"}
    assert b.names_for("alice", WEB6, 100.0) == frozenset()


def test_cname_chain_binds_every_name_to_the_final_addresses() -> None:
    b = FqdnBindings()
    for name in ("www.corp.example", "corp.cdn.example"):  # as the DNS service calls it
        b.record("alice", name, [WEB], ttl=30, now=0.0)
    assert b.names_for("alice", WEB, 1.0) == {"www.corp.example", "corp.cdn.example"}


def test_a_shorter_later_answer_does_not_cut_an_earlier_one_short() -> None:
    b = FqdnBindings()
    b.record("alice", "a.example", [WEB], ttl=300, now=0.0)
    b.record("alice", "a.example", [WEB], ttl=10, now=5.0)
    assert b.names_for("alice", WEB, 200.0) == {"a.example"}
    b.record("alice", "a.example", [WEB6], ttl=10, now=250.0)  # round robin: a new address
    assert b.names_for("alice", WEB, 299.0) == {"a.example"}
    assert b.names_for("alice", WEB6, 259.0) == {"a.example"}
    assert b.names_for("alice", WEB6, 260.0) == frozenset()


def test_expire_drops_due_names_only_and_respects_its_budget() -> None:
    b = FqdnBindings()
    for i in range(10):
        b.record("alice", f"n{i}.example", [V4(f"203.0.113.{i}")], ttl=10 + i, now=0.0)
    assert b.expire(now=9.0) == 0
    assert b.expire(now=14.5, budget=3) == 3
    assert b.expire(now=14.5) == 2
    assert len(b) == 5
    assert b.names_for("alice", V4("203.0.113.5"), 14.5) == {"n5.example"}
    assert b.expire(now=1000.0) == 5
    assert len(b) == 0 and b.count_for("alice") == 0


def test_expire_skips_names_recorded_again_since() -> None:
    b = FqdnBindings()
    b.record("alice", "a.example", [WEB], ttl=10, now=0.0)
    b.record("alice", "a.example", [WEB], ttl=10, now=8.0)  # renewed until 18
    assert b.expire(now=12.0) == 0
    assert b.names_for("alice", WEB, 12.0) == {"a.example"}
    assert b.expire(now=18.0) == 1
    assert b.names_for("alice", WEB, 12.0) == frozenset()  # gone from the index too


def test_names_per_client_are_bounded_oldest_evicted() -> None:
    b = FqdnBindings(max_names_per_client=3)
    for i in range(3):
        b.record("alice", f"n{i}.example", [V4(f"203.0.113.{i}")], ttl=60, now=float(i))
    b.record("alice", "n0.example", [V4("203.0.113.0")], ttl=60, now=3.0)  # n1 is now oldest
    b.record("alice", "n3.example", [V4("203.0.113.3")], ttl=60, now=4.0)
    assert b.count_for("alice") == 3
    assert b.names_for("alice", V4("203.0.113.1"), 5.0) == frozenset()
    for i in (0, 2, 3):
        assert b.names_for("alice", V4(f"203.0.113.{i}"), 5.0) == {f"n{i}.example"}
    b.record("bob", "n9.example", [WEB], ttl=60, now=5.0)  # bob has his own bound
    assert b.count_for("alice") == 3 and b.count_for("bob") == 1


def test_addresses_per_name_are_bounded() -> None:
    b = FqdnBindings(max_addresses_per_name=4)
    many = [V4(f"198.51.100.{i}") for i in range(10)]
    b.record("alice", "big.example", many, ttl=60, now=0.0)
    bound = [a for a in many if b.names_for("alice", a, 1.0)]
    assert bound == many[-4:]


def test_heap_of_expiry_times_stays_bounded_under_renewals() -> None:
    b = FqdnBindings()
    for i in range(20000):
        b.record("alice", "busy.example", [WEB], ttl=60, now=float(i))
    assert len(b._heap) <= 2 * len(b) + 1024
    assert b.names_for("alice", WEB, 20000.0) == {"busy.example"}


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        FqdnBindings(max_names_per_client=0)
    with pytest.raises(ValueError):
        FqdnBindings(min_ttl=10, max_ttl=5)


def test_normalize_name() -> None:
    assert normalize_name("WWW.Example.COM.") == "www.example.com"
    assert normalize_name("a.example") == "a.example"


# A model check: with bounds too large to bite, ``names_for`` must equal a brute-force
# reading of every record made so far, whatever the order of records, expiries and lookups.
_clients = st.sampled_from(["alice", "bob"])
_names = st.sampled_from(["a.example", "b.example", "c.example"])
_addresses = st.lists(st.sampled_from([WEB, WEB6, V4("203.0.113.20")]), min_size=1, max_size=3)
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("record"), _clients, _names, _addresses, st.integers(0, 50)),
        st.tuples(st.just("expire"), st.integers(0, 3)),
        st.tuples(st.just("forget"), _clients),
        st.tuples(st.just("tick"), st.integers(1, 20)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(_ops)
def test_matches_a_brute_force_model(ops: list[tuple[object, ...]]) -> None:
    b = FqdnBindings(min_ttl=1, max_ttl=40)
    model: dict[tuple[str, bytes, str], float] = {}
    now = 0.0
    for op in ops:
        if op[0] == "record":
            _, client, name, addresses, ttl = op
            assert isinstance(client, str) and isinstance(name, str)
            assert isinstance(addresses, list) and isinstance(ttl, int)
            b.record(client, name, addresses, ttl, now)
            until = now + min(max(ttl, 1), 40)
            for a in addresses:
                key = (client, a.packed, name)
                model[key] = max(model.get(key, 0.0), until)
        elif op[0] == "expire":
            b.expire(now, budget=int(str(op[1])))
        elif op[0] == "forget":
            b.forget(str(op[1]))
            model = {k: v for k, v in model.items() if k[0] != op[1]}
        else:
            now += float(str(op[1]))
        for client in ("alice", "bob"):
            for a in (WEB, WEB6, V4("203.0.113.20")):
                expected = {n for (c, p, n), t in model.items() if c == client and p == a.packed}
                expected = {n for n in expected if model[(client, a.packed, n)] > now}
                assert b.names_for(client, a, now) == expected
