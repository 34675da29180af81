"""Address pool edges, written to kill the mutants `make mutants` found alive: the smallest
pool, the IPv4 broadcast address, and a wanted IPv6 address."""

from __future__ import annotations

import ipaddress

import pytest

from zgate_relay.pool import AddressPool, PoolExhausted

V4, V6 = ipaddress.IPv4Address, ipaddress.IPv6Address


def test_a_slash_30_is_the_smallest_pool_and_holds_one_agent() -> None:
    pool = AddressPool(ipaddress.IPv4Network("192.0.2.0/30"))
    assert pool.gateway4 == V4("192.0.2.1")
    assert pool.allocate() == [V4("192.0.2.2")]
    with pytest.raises(PoolExhausted, match=r"192\.0\.2\.0/30 is exhausted"):
        pool.allocate()
    with pytest.raises(ValueError, match=r"192\.0\.2\.0/31 is too small"):
        AddressPool(ipaddress.IPv4Network("192.0.2.0/31"))


def test_the_ipv4_broadcast_address_is_never_handed_out() -> None:
    pool = AddressPool(ipaddress.IPv4Network("192.0.2.0/29"))
    assert pool.allocate(wanted4=V4("192.0.2.7")) == [V4("192.0.2.2")]
    assert pool.allocate(wanted4=V4("192.0.2.6")) == [V4("192.0.2.6")]


def test_a_free_wanted_ipv6_address_is_honoured() -> None:
    pool = AddressPool(ipaddress.IPv4Network("10.100.0.0/16"), ipaddress.IPv6Network("fd00::/64"))
    wanted = V6("fd00::abcd")
    assert pool.allocate(wanted6=wanted) == [V4("10.100.0.2"), wanted]
    assert pool.allocate(wanted6=wanted)[1] != wanted  # taken now
