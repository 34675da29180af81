"""Router edges, written to kill the mutants `make mutants` found alive: IPv6 packets from
a session (source check and destination lookup on the 16-byte addresses), a bare 40-byte
IPv6 header, a 20-byte IPv4 header, and the multicast ranges toward the egress side."""

from __future__ import annotations

import ipaddress

from zgate_lab.harness import delivered, udp4
from zgate_lab.harness import relay_session as session
from zgate_relay.router import EGRESS, Drop, Router


def ipv6(src: str, dst: str, payload: bytes = b"") -> bytes:
    """An IPv6 header (next header: no next header, 59) and ``payload``."""
    header = bytes([0x60, 0, 0, 0]) + len(payload).to_bytes(2, "big") + bytes([59, 64])
    return header + ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed + payload


def reason(result: object) -> str:
    assert isinstance(result, Drop), result
    return result.reason


def test_ipv6_from_a_session_is_checked_and_routed_on_its_full_addresses() -> None:
    router = Router()
    a, b = session("10.100.0.2", "fd7a:7a67::2"), session("10.100.0.3", "fd7a:7a67::3")
    router.attach(a)
    router.attach(b)
    # A bare 40-byte header is a whole packet.
    assert router.from_session(a, ipv6("fd7a:7a67::2", "2001:db8::1")) is EGRESS
    bare = ipv6("fd7a:7a67::2", "fd7a:7a67::3")
    assert delivered(router.from_session(a, bare), b) == bare[:7] + b"\x3f" + bare[8:]
    with_payload = ipv6("fd7a:7a67::2", "fd7a:7a67::3", b"payload")
    assert delivered(router.from_session(a, with_payload), b)[40:] == b"payload"
    # Sources and destinations that differ from a session's only in their first or last
    # byte must not pass for it.
    assert reason(router.from_session(a, ipv6("fe7a:7a67::2", "2001:db8::1"))) == ("spoofed_source")
    assert reason(router.from_session(a, ipv6("fd7a:7a67::102", "2001:db8::1"))) == (
        "spoofed_source"
    )
    assert router.from_session(a, ipv6("fd7a:7a67::2", "fe7a:7a67::3")) is EGRESS
    assert router.from_session(a, ipv6("fd7a:7a67::2", "fd7a:7a67::103")) is EGRESS
    assert reason(router.from_session(a, ipv6("fd7a:7a67::2", "2001:db8::1")[:39])) == (
        "malformed_packet"
    )


def ipv4_header(src: str, dst: str, proto: int = 253) -> bytes:
    """A bare 20-byte IPv4 header (protocol 253: experimentation, RFC 3692) that is the
    whole packet."""
    header = udp4(src, dst, b"")[:20]
    return header[:2] + b"\x00\x14" + header[4:9] + bytes([proto]) + header[10:]


def test_header_only_packets_are_routed() -> None:
    router = Router()
    a = session("10.100.0.2", "fd7a:7a67::2")
    router.attach(a)
    assert router.from_session(a, ipv4_header("10.100.0.2", "203.0.113.10")) is EGRESS
    assert router.from_egress(ipv4_header("203.0.113.10", "10.100.0.2")) is a
    # A header that announces more than the packet holds is cut short: malformed.
    cut = udp4("10.100.0.2", "203.0.113.10", b"")[:20]
    assert reason(router.from_session(a, cut)) == "malformed_packet"
    assert reason(router.from_egress(udp4("203.0.113.10", "10.100.0.2", b"")[:20])) == (
        "malformed_packet"
    )
    assert router.from_egress(ipv6("2001:db8::1", "fd7a:7a67::2")) is a
    assert reason(router.from_egress(ipv6("2001:db8::1", "fd7a:7a67::2")[:39])) == (
        "malformed_packet"
    )


def test_multicast_toward_the_pool_is_told_apart_from_unknown_sessions() -> None:
    router = Router()
    for dst in ("224.0.0.1", "239.255.255.250"):
        assert reason(router.from_egress(udp4("10.100.0.1", dst, b"x"))) == "multicast"
    assert reason(router.from_egress(udp4("10.100.0.1", "240.0.0.1", b"x"))) == "no_session"
    assert reason(router.from_egress(ipv6("fe80::1", "ff02::1"))) == "multicast"
    assert reason(router.from_egress(ipv6("fe80::1", "fdff::1"))) == "no_session"
