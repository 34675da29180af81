"""The sans-IO router and session bookkeeping."""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zgate_lab.harness import ENG_WEB_POLICY, compile_policy, delivered, make_enforcer, udp4
from zgate_lab.harness import relay_session as session
from zgate_proto.capsules import AddressAssign, AddressRequest, RequestedAddress
from zgate_proto.icmp import time_exceeded
from zgate_proto.ip import internet_checksum, ipv4_checksum, parse_packet
from zgate_relay.enforce import IcmpBudget
from zgate_relay.pool import AddressPool
from zgate_relay.router import EGRESS, Deliver, Drop, Egress, Reject, Router
from zgate_relay.session import FULL_ROUTES, RelaySession, routes_for


def test_from_session_routes_to_egress_other_session_or_drops() -> None:
    router = Router()
    a, b = session("10.100.0.2"), session("10.100.0.3")
    router.attach(a)
    router.attach(b)
    assert router.from_session(a, udp4("10.100.0.2", "203.0.113.10", b"x")) is EGRESS
    packet = udp4("10.100.0.2", "10.100.0.3", b"x")
    forwarded = delivered(router.from_session(a, packet), b)
    # Forwarded as a router does: one hop less, the header checksum still right.
    assert forwarded[8] == packet[8] - 1
    assert forwarded[:8] == packet[:8] and forwarded[12:] == packet[12:]
    assert internet_checksum(forwarded[:20]) == 0
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
    assert isinstance(reply, AddressAssign)
    assert ipaddress.IPv4Address("10.100.5.5") in s.addresses
    assert {(a.request_id, a.prefix) for a in reply.addresses} >= {(7, wanted)}
    # A taken address is answered with the one held, under the request's ID.
    other = session()
    other.assign(pool)
    reply = other.answer_address_request(AddressRequest((RequestedAddress(9, wanted),)), pool)
    assert isinstance(reply, AddressAssign)
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


# ------------------------------------------------------------- TTL and time exceeded

GATEWAY4, GATEWAY6 = ipaddress.ip_address("10.100.0.1"), ipaddress.ip_address("fd7a:7a67::1")
A4, A6 = ipaddress.ip_address("10.100.0.2").packed, ipaddress.ip_address("fd7a:7a67::2").packed


def with_ttl(packet: bytes, ttl: int) -> bytes:
    """``packet`` with another IPv4 TTL / IPv6 hop limit (IPv4 header checksum redone)."""
    if packet[0] >> 4 == 6:
        return packet[:7] + bytes([ttl]) + packet[8:]
    header = bytearray(packet[:20])
    header[8] = ttl
    header[10:12] = ipv4_checksum(header).to_bytes(2, "big")
    return bytes(header) + packet[20:]


def udp6(src: str, dst: str, payload: bytes) -> bytes:
    """An IPv6/UDP packet (hop limit 64; the router reads no UDP checksum)."""
    udp = struct.pack("!HHHH", 40000, 7, 8 + len(payload), 0) + payload
    header = struct.pack("!IHBB", 6 << 28, len(udp), 17, 64)
    return header + ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed + udp


def two_sessions(**kw: Any) -> tuple[Router, RelaySession, RelaySession]:
    gateways = frozenset({GATEWAY4.packed, GATEWAY6.packed})
    router = Router(own_addresses=gateways, **kw)
    a, b = session("10.100.0.2", "fd7a:7a67::2"), session("10.100.0.3", "fd7a:7a67::3")
    router.attach(a)
    router.attach(b)
    return router, a, b


def rejected(result: object, reason: str) -> bytes:
    assert isinstance(result, Reject), result
    assert result.reason == reason
    return result.icmp


@pytest.mark.parametrize("ttl", [0, 1])
def test_ipv4_ttl_running_out_is_answered_with_time_exceeded(ttl: int) -> None:
    router, a, _ = two_sessions()
    original = with_ttl(udp4("10.100.0.2", "10.100.0.3", b"traceroute"), ttl)
    icmp = rejected(router.from_session(a, original), "ttl_expired")
    info = parse_packet(icmp)
    assert (info.proto, info.icmp_type, info.icmp_code) == (1, 11, 0)
    assert (info.src, info.dst) == (GATEWAY4.packed, A4)
    assert internet_checksum(icmp[:20]) == 0, "IPv4 header checksum"
    assert internet_checksum(icmp[20:]) == 0, "ICMP checksum"
    assert icmp[28:] == original  # the whole (short) original is quoted


@pytest.mark.parametrize("hop_limit", [0, 1])
def test_ipv6_hop_limit_running_out_is_answered_with_time_exceeded(hop_limit: int) -> None:
    router, a, _ = two_sessions()
    original = with_ttl(udp6("fd7a:7a67::2", "fd7a:7a67::3", b"traceroute"), hop_limit)
    icmp = rejected(router.from_session(a, original), "ttl_expired")
    info = parse_packet(icmp)
    assert (info.proto, info.icmp_type, info.icmp_code) == (58, 3, 0)
    assert (info.src, info.dst) == (GATEWAY6.packed, A6)
    # RFC 4443 §2.3: the checksum covers a pseudo-header of addresses, length and 58.
    message = icmp[40:]
    pseudo = info.src + info.dst + struct.pack("!I3xB", len(message), 58)
    assert internet_checksum(pseudo + message) == 0
    assert message[8:] == original


def test_two_hops_left_is_delivered_with_one() -> None:
    router, a, b = two_sessions()
    v4 = with_ttl(udp4("10.100.0.2", "10.100.0.3", b"x"), 2)
    assert delivered(router.from_session(a, v4), b)[8] == 1
    v6 = with_ttl(udp6("fd7a:7a67::2", "fd7a:7a67::3", b"x"), 2)
    assert delivered(router.from_session(a, v6), b)[7] == 1


def test_the_egress_device_decrements_for_itself() -> None:
    router, a, _ = two_sessions()
    assert router.from_session(a, with_ttl(udp4("10.100.0.2", "203.0.113.10", b"x"), 1)) is EGRESS


def test_time_exceeded_needs_a_relay_address_of_the_family_and_a_budget() -> None:
    router = Router(own_addresses=frozenset({GATEWAY4.packed}), enforcer=None)
    router.icmp_budget = IcmpBudget(rate=0.5, burst=1.0)
    a, b = session("10.100.0.2", "fd7a:7a67::2"), session("10.100.0.3", "fd7a:7a67::3")
    router.attach(a)
    router.attach(b)
    v6 = with_ttl(udp6("fd7a:7a67::2", "fd7a:7a67::3", b"x"), 1)
    silent = router.from_session(a, v6, 1.0)
    assert isinstance(silent, Drop) and not isinstance(silent, Reject)
    assert silent.reason == "ttl_expired"
    v4 = with_ttl(udp4("10.100.0.2", "10.100.0.3", b"x"), 1)
    rejected(router.from_session(a, v4, 1.0), "ttl_expired")
    over = router.from_session(a, v4, 1.5)  # the bucket is empty until t = 3
    assert isinstance(over, Drop) and not isinstance(over, Reject)
    rejected(router.from_session(a, v4, 3.0), "ttl_expired")


def test_an_icmp_error_is_never_answered_with_one() -> None:
    router, a, _ = two_sessions()
    # An error a sends to b (about a packet b sent it), with its last hop.
    error = time_exceeded(udp4("10.100.0.3", "10.100.0.2", b"x"), ipaddress.ip_address(A4))
    assert error is not None
    dropped = router.from_session(a, with_ttl(error, 1))
    assert isinstance(dropped, Drop) and not isinstance(dropped, Reject)
    assert dropped.reason == "ttl_expired"


def test_an_expiring_packet_makes_no_flow_and_the_answer_shares_the_policy_budget() -> None:
    p2p = ENG_WEB_POLICY + "  - {id: p2p, action: allow, from: ['*'], to: [10.100.0.0/16]}\n"
    enforcer = make_enforcer(compile_policy(p2p), icmp_budget=IcmpBudget(rate=1.0, burst=1.0))
    router, a, b = two_sessions(enforcer=enforcer)
    assert router.icmp_budget is enforcer.icmp_budget
    expiring = with_ttl(udp4("10.100.0.2", "10.100.0.3", b"x"), 1)
    rejected(router.from_session(a, expiring, 1.0), "ttl_expired")
    assert len(enforcer.flows) == 0
    assert not isinstance(router.from_session(a, expiring, 1.1), Reject)  # budget spent
    assert delivered(router.from_session(a, udp4("10.100.0.2", "10.100.0.3", b"x"), 1.2), b)
    assert len(enforcer.flows) == 1


@given(st.binary(max_size=80), st.integers(0, 255))
def test_arbitrary_bytes_are_routed_or_dropped_never_raised(data: bytes, first: int) -> None:
    router, a, _ = two_sessions()
    for packet in (data, bytes([first]) + data):
        assert isinstance(router.from_session(a, packet, 1.0), Egress | Drop | Deliver)
        assert isinstance(router.from_egress(packet, 1.0), RelaySession | Drop)
