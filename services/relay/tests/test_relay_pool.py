"""The address pool."""

from __future__ import annotations

import ipaddress

import pytest

from zgate_relay.pool import AddressPool, PoolExhausted

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address


def test_first_addresses_skip_network_and_relay_address() -> None:
    pool = AddressPool(
        ipaddress.IPv4Network("10.100.0.0/16"), ipaddress.IPv6Network("fd7a:7a67::/64")
    )
    assert pool.gateway4 == V4("10.100.0.1")
    assert pool.gateway6 == V6("fd7a:7a67::1")
    assert pool.allocate() == [V4("10.100.0.2"), V6("fd7a:7a67::2")]
    assert pool.allocate() == [V4("10.100.0.3"), V6("fd7a:7a67::3")]


def test_wanted_address_is_honoured_when_free_only() -> None:
    pool = AddressPool(ipaddress.IPv4Network("10.9.0.0/24"))
    assert pool.allocate(V4("10.9.0.77")) == [V4("10.9.0.77")]
    assert pool.allocate(V4("10.9.0.77")) != [V4("10.9.0.77")]
    assert pool.allocate(V4("10.9.0.1")) != [V4("10.9.0.1")]  # the relay's own
    assert pool.allocate(V4("192.0.2.1")) != [V4("192.0.2.1")]  # outside the pool


def test_small_pool_is_exhausted_then_reusable() -> None:
    pool = AddressPool(ipaddress.IPv4Network("10.9.0.0/29"))  # hosts .2 .. .6
    got = [pool.allocate()[0] for _ in range(5)]
    assert got == [V4(f"10.9.0.{i}") for i in range(2, 7)]
    with pytest.raises(PoolExhausted):
        pool.allocate()
    pool.release(V4("10.9.0.4"))
    assert pool.allocate() == [V4("10.9.0.4")]
    assert pool.in_use() == 5


def test_released_addresses_are_not_reused_at_once() -> None:
    pool = AddressPool(ipaddress.IPv4Network("10.9.0.0/24"))
    first = pool.allocate()[0]
    pool.release(first)
    assert pool.allocate()[0] != first


def test_v6_failure_gives_the_v4_address_back() -> None:
    pool = AddressPool(ipaddress.IPv4Network("10.9.0.0/24"), ipaddress.IPv6Network("fd00::/126"))
    pool.allocate()  # fd00::2
    pool.allocate()  # fd00::3
    with pytest.raises(PoolExhausted):
        pool.allocate()
    assert pool.in_use() == 4
