"""The sans-IO router and session bookkeeping."""

from __future__ import annotations

import ipaddress
from typing import Any

from zgate_lab.harness import udp4
from zgate_pki import Identity
from zgate_proto.capsules import AddressRequest, RequestedAddress
from zgate_relay.pool import AddressPool
from zgate_relay.router import EGRESS, Drop, Router
from zgate_relay.session import FULL_ROUTES, RelaySession, routes_for


def session(*addresses: str) -> RelaySession:
    s = RelaySession(
        identity=Identity("client", "t", None, (), 1), stream=Any, peer="p", opened_at=0.0
    )  # type: ignore[arg-type]
    s.set_addresses([ipaddress.ip_address(a) for a in addresses])
    return s


def test_from_session_routes_to_egress_other_session_or_drops() -> None:
    router = Router()
    a, b = session("10.100.0.2"), session("10.100.0.3")
    router.attach(a)
    router.attach(b)
    assert router.from_session(a, udp4("10.100.0.2", "203.0.113.10", b"x")) is EGRESS
    assert router.from_session(a, udp4("10.100.0.2", "10.100.0.3", b"x")) is b
    spoofed = router.from_session(a, udp4("10.100.0.3", "203.0.113.10", b"x"))
    assert isinstance(spoofed, Drop) and spoofed.reason == "spoofed_source"
    for junk in (b"", b"\x45" * 10, b"\x75" + b"\x00" * 40, b"\x60" + b"\x00" * 30):
        dropped = router.from_session(a, junk)
        assert isinstance(dropped, Drop) and dropped.reason == "malformed_packet"


def test_from_egress_finds_the_session_by_destination() -> None:
    router = Router()
    a = session("10.100.0.2", "fd7a:7a67::2")
    router.attach(a)
    assert router.from_egress(udp4("203.0.113.10", "10.100.0.2", b"x")) is a
    v6 = bytes([0x60, 0, 0, 0, 0, 8, 17, 64]) + ipaddress.IPv6Address("2001:db8::1").packed
    v6 += ipaddress.IPv6Address("fd7a:7a67::2").packed + b"\x00" * 8
    assert router.from_egress(v6) is a
    gone = router.from_egress(udp4("203.0.113.10", "10.100.0.9", b"x"))
    assert isinstance(gone, Drop) and gone.reason == "no_session"
    igmp = router.from_egress(udp4("10.100.0.1", "224.0.0.22", b"x"))
    assert isinstance(igmp, Drop) and igmp.reason == "multicast"
    router.detach(a)
    assert len(router) == 0
    assert isinstance(router.from_egress(udp4("203.0.113.10", "10.100.0.2", b"x")), Drop)


def test_address_request_is_honoured_when_free() -> None:
    pool = AddressPool(
        ipaddress.IPv4Network("10.100.0.0/16"), ipaddress.IPv6Network("fd7a:7a67::/64")
    )
    s = session()
    s.assign(pool)
    wanted = ipaddress.IPv4Network("10.100.5.5/32")
    reply = s.answer_address_request(AddressRequest((RequestedAddress(7, wanted),)), pool)
    assert ipaddress.IPv4Address("10.100.5.5") in s.addresses
    assert {(a.request_id, a.prefix) for a in reply.addresses} >= {(7, wanted)}
    # A taken address is answered with the one held, under the request's ID.
    other = session()
    other.assign(pool)
    reply = other.answer_address_request(AddressRequest((RequestedAddress(9, wanted),)), pool)
    v4 = [a for a in reply.addresses if a.prefix.version == 4]
    assert v4[0].request_id == 9 and v4[0].prefix != wanted
    assert pool.in_use() == 4


def test_route_advertisement_defaults_to_everything_and_merges_prefixes() -> None:
    assert RelaySession.route_advertisement().ranges == FULL_ROUTES
    ranges = routes_for(
        [
            ipaddress.ip_network("10.0.0.0/9"),
            ipaddress.ip_network("10.128.0.0/9"),
            ipaddress.ip_network("2001:db8::/32"),
        ]
    )
    assert [(str(r.start), str(r.end)) for r in ranges] == [
        ("10.0.0.0", "10.255.255.255"),
        ("2001:db8::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"),
    ]
