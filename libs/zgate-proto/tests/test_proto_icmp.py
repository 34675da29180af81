"""ICMP / ICMPv6 errors (RFC 792, RFC 1191, RFC 1812 §4.3, RFC 4443)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from functools import partial
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zgate_proto.errors import ProtoError
from zgate_proto.icmp import (
    ICMPV4_QUOTE_LIMIT,
    ICMPV6_QUOTE_LIMIT,
    ICMPv4Type,
    ICMPv4UnreachableCode,
    ICMPv6Type,
    ICMPv6UnreachableCode,
    admin_prohibited,
    destination_unreachable,
    packet_too_big,
    time_exceeded,
)
from zgate_proto.ip import internet_checksum, ones_complement_sum, parse_packet

RELAY4 = IPv4Address("10.100.0.1")
RELAY6 = IPv6Address("fd7a:7a67::1")
CLIENT4 = IPv4Address("10.100.0.7")
CLIENT6 = IPv6Address("fd7a:7a67::7")
SERVER4 = IPv4Address("203.0.113.9")
SERVER6 = IPv6Address("2001:db8::9")


def udp(data: bytes = b"payload", sport: int = 40000, dport: int = 53) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


def ipv4(
    payload: bytes,
    proto: int = 17,
    src: IPv4Address = CLIENT4,
    dst: IPv4Address = SERVER4,
    flags_offset: int = 0x4000,
) -> bytes:
    header = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            20 + len(payload),
            7,
            flags_offset,
            63,
            proto,
            0,
            src.packed,
            dst.packed,
        )
    )
    header[10:12] = internet_checksum(header).to_bytes(2, "big")
    return bytes(header) + payload


def ipv6(
    payload: bytes, next_header: int = 17, src: IPv6Address = CLIENT6, dst: IPv6Address = SERVER6
) -> bytes:
    return (
        struct.pack("!IHBB16s16s", 6 << 28, len(payload), next_header, 63, src.packed, dst.packed)
        + payload
    )


def icmp(kind: int, code: int = 0, rest: bytes = bytes(4), body: bytes = b"") -> bytes:
    return struct.pack("!BBH", kind, code, 0) + rest + body


def check_ipv4_error(packet: bytes, original: bytes, kind: int, code: int) -> bytes:
    """Verify an ICMP error independently; return its 4-byte rest-of-header."""
    assert packet[0] == 0x45
    assert int.from_bytes(packet[2:4], "big") == len(packet) <= 576
    assert packet[8] == 64 and packet[9] == 1
    assert ones_complement_sum(packet[:20]) == 0xFFFF  # header checksum
    assert packet[12:16] == RELAY4.packed
    assert packet[16:20] == original[12:16]  # back to the original sender
    message = packet[20:]
    assert ones_complement_sum(message) == 0xFFFF  # ICMP checksum
    assert (message[0], message[1]) == (kind, code)
    assert message[8:] == original[: min(len(original), ICMPV4_QUOTE_LIMIT)]
    return message[4:8]


def check_ipv6_error(packet: bytes, original: bytes, kind: int, code: int) -> bytes:
    """Verify an ICMPv6 error independently, pseudo-header included; return rest-of-header."""
    assert packet[0] >> 4 == 6
    assert int.from_bytes(packet[4:6], "big") == len(packet) - 40
    assert len(packet) <= 1280
    assert packet[6] == 58 and packet[7] == 64
    assert packet[8:24] == RELAY6.packed
    assert packet[24:40] == original[8:24]
    message = packet[40:]
    pseudo = packet[8:40] + struct.pack("!I", len(message)) + b"\x00\x00\x00\x3a"
    assert ones_complement_sum(pseudo + message) == 0xFFFF
    assert (message[0], message[1]) == (kind, code)
    assert message[8:] == original[: min(len(original), ICMPV6_QUOTE_LIMIT)]
    return message[4:8]


# --- constants


def test_constants() -> None:
    assert int(ICMPv4Type.DESTINATION_UNREACHABLE) == 3
    assert int(ICMPv4UnreachableCode.FRAGMENTATION_NEEDED) == 4
    assert int(ICMPv4UnreachableCode.COMMUNICATION_PROHIBITED) == 13
    assert int(ICMPv6Type.PACKET_TOO_BIG) == 2
    assert int(ICMPv6UnreachableCode.SOURCE_POLICY_FAILED) == 5
    assert ICMPV4_QUOTE_LIMIT == 548
    assert ICMPV6_QUOTE_LIMIT == 1232


# --- known answer


def test_icmpv6_known_answer() -> None:
    """A fully fixed message whose checksum was worked out by hand from RFC 4443 §2.3:
    sum of pseudo-header and message words, folded and complemented."""
    original = ipv6(udp(b""))
    packet = destination_unreachable(original, RELAY6, ICMPv6UnreachableCode.NO_ROUTE)
    assert packet is not None
    message = packet[40:]
    assert len(message) == 8 + 48
    words = ones_complement_sum(RELAY6.packed) + ones_complement_sum(CLIENT6.packed) + 56 + 58
    words += 0x0100  # type 1, code 0
    words += ones_complement_sum(original)
    while words > 0xFFFF:
        words = (words & 0xFFFF) + (words >> 16)
    assert int.from_bytes(message[2:4], "big") == ~words & 0xFFFF


# --- the messages


def test_ipv4_destination_unreachable() -> None:
    original = ipv4(udp())
    packet = destination_unreachable(original, RELAY4, ICMPv4UnreachableCode.HOST_UNREACHABLE)
    assert packet is not None
    assert check_ipv4_error(packet, original, 3, 1) == bytes(4)
    info = parse_packet(packet)
    assert (info.proto, info.icmp_type, info.icmp_code) == (1, 3, 1)


def test_ipv4_quote_is_capped_at_576_bytes() -> None:
    original = ipv4(udp(bytes(1400)))
    packet = destination_unreachable(original, RELAY4, 0)
    assert packet is not None
    assert len(packet) == 576
    check_ipv4_error(packet, original, 3, 0)


def test_quote_ignores_bytes_beyond_total_length() -> None:
    original = ipv4(udp())
    packet = destination_unreachable(original + b"trailer", RELAY4, 0)
    assert packet is not None
    check_ipv4_error(packet, original, 3, 0)


def test_ipv6_destination_unreachable() -> None:
    original = ipv6(udp())
    packet = destination_unreachable(original, RELAY6, ICMPv6UnreachableCode.SOURCE_POLICY_FAILED)
    assert packet is not None
    assert check_ipv6_error(packet, original, 1, 5) == bytes(4)
    info = parse_packet(packet)
    assert (info.proto, info.icmp_type, info.icmp_code) == (58, 1, 5)


def test_ipv6_quote_is_capped_at_1280_bytes() -> None:
    original = ipv6(udp(bytes(3000)))
    packet = destination_unreachable(original, RELAY6, 0)
    assert packet is not None
    assert len(packet) == 1280
    check_ipv6_error(packet, original, 1, 0)


def test_admin_prohibited() -> None:
    original4, original6 = ipv4(udp()), ipv6(udp())
    packet = admin_prohibited(original4, RELAY4)
    assert packet is not None
    check_ipv4_error(packet, original4, 3, 13)
    packet = admin_prohibited(original6, RELAY6)
    assert packet is not None
    check_ipv6_error(packet, original6, 1, 1)


def test_time_exceeded() -> None:
    original4, original6 = ipv4(udp()), ipv6(udp())
    packet = time_exceeded(original4, RELAY4)
    assert packet is not None
    check_ipv4_error(packet, original4, 11, 0)
    packet = time_exceeded(original6, RELAY6)
    assert packet is not None
    check_ipv6_error(packet, original6, 3, 0)


def test_ipv4_fragmentation_needed() -> None:
    original = ipv4(udp(bytes(1400)))
    packet = packet_too_big(original, RELAY4, 1280)
    assert packet is not None
    assert check_ipv4_error(packet, original, 3, 4) == b"\x00\x00\x05\x00"  # RFC 1191 §4


def test_ipv4_without_df_gets_no_fragmentation_needed() -> None:
    assert packet_too_big(ipv4(udp(bytes(1400)), flags_offset=0), RELAY4, 1280) is None


def test_ipv6_packet_too_big() -> None:
    original = ipv6(udp(bytes(1400)))
    packet = packet_too_big(original, RELAY6, 1350)
    assert packet is not None
    assert check_ipv6_error(packet, original, 2, 0) == struct.pack("!I", 1350)


@pytest.mark.parametrize(("source", "mtu"), [(RELAY4, 67), (RELAY4, 65536), (RELAY6, 1279)])
def test_bad_mtu(source: IPv4Address | IPv6Address, mtu: int) -> None:
    original = ipv4(udp()) if source.version == 4 else ipv6(udp())
    with pytest.raises(ProtoError):
        packet_too_big(original, source, mtu)


def test_mismatched_source_family_and_bad_code() -> None:
    with pytest.raises(ProtoError):
        destination_unreachable(ipv4(udp()), RELAY6, 0)
    with pytest.raises(ProtoError):
        admin_prohibited(ipv6(udp()), RELAY4)
    with pytest.raises(ProtoError):
        destination_unreachable(ipv4(udp()), RELAY4, 256)


# --- when no error may be sent

NO_ERROR_ABOUT = [
    # ICMP errors themselves (RFC 1122 §3.2.2, RFC 4443 §2.4 (e.1)).
    ipv4(icmp(3, 1, body=ipv4(udp())), proto=1),
    ipv4(icmp(11), proto=1),
    ipv4(icmp(12), proto=1),
    ipv4(icmp(5), proto=1),
    ipv4(icmp(4), proto=1),
    ipv6(icmp(1, 4), next_header=58),
    ipv6(icmp(3), next_header=58),
    ipv6(icmp(100), next_header=58),  # private experimentation range of the error types
    ipv6(icmp(137), next_header=58),  # Redirect (e.2)
    # Multicast or broadcast destinations.
    ipv4(udp(), dst=IPv4Address("224.0.0.251")),
    ipv4(udp(), dst=IPv4Address("255.255.255.255")),
    ipv6(udp(), dst=IPv6Address("ff02::fb")),
    # Sources that do not name one host.
    ipv4(udp(), src=IPv4Address("0.0.0.0")),
    ipv4(udp(), src=IPv4Address("127.0.0.1")),
    ipv4(udp(), src=IPv4Address("239.1.1.1")),
    ipv4(udp(), src=IPv4Address("240.0.0.1")),
    ipv6(udp(), src=IPv6Address("::")),
    ipv6(udp(), src=IPv6Address("ff05::2")),
    # Non-first fragments.
    ipv4(bytes(16), flags_offset=0x0002),
    ipv6(struct.pack("!BBHI", 17, 0, (2 << 3) | 1, 1) + bytes(16), next_header=44),
    # Malformed originals.
    b"",
    b"\x45\x00",
    ipv4(udp())[:-1],
]


@pytest.mark.parametrize("original", NO_ERROR_ABOUT)
def test_no_error_about(original: bytes) -> None:
    source = RELAY6 if original[:1] == b"\x60" else RELAY4
    assert destination_unreachable(original, source, 0) is None
    assert admin_prohibited(original, source) is None
    assert time_exceeded(original, source) is None


def test_packet_too_big_exceptions_for_ipv6() -> None:
    # RFC 4443 §2.4 (e.3): Packet Too Big may answer a multicast destination; path MTU
    # discovery also needs it for non-first fragments.
    multicast = ipv6(udp(bytes(1400)), dst=IPv6Address("ff0e::1"))
    assert packet_too_big(multicast, RELAY6, 1280) is not None
    later = ipv6(struct.pack("!BBHI", 17, 0, (2 << 3) | 1, 1) + bytes(1400), next_header=44)
    assert packet_too_big(later, RELAY6, 1280) is not None
    # ...but never about an ICMPv6 error.
    assert packet_too_big(ipv6(icmp(1, body=bytes(1400)), 58), RELAY6, 1280) is None


def test_errors_about_echo_are_allowed() -> None:
    assert destination_unreachable(ipv4(icmp(8), proto=1), RELAY4, 1) is not None
    assert destination_unreachable(ipv6(icmp(128), next_header=58), RELAY6, 0) is not None


def test_never_an_error_about_an_error() -> None:
    for original, source in ((ipv4(udp()), RELAY4), (ipv6(udp()), RELAY6)):
        first = destination_unreachable(original, source, 0)
        assert first is not None
        assert destination_unreachable(first, source, 0) is None
        assert packet_too_big(first, source, 1280) is None


# --- properties


@given(
    st.binary(max_size=1600),
    st.integers(1, 65535),
    st.integers(1, 65535),
    st.booleans(),
    st.integers(0, 255),
)
def test_generated_errors_verify(
    data: bytes, sport: int, dport: int, use_v6: bool, code: int
) -> None:
    if use_v6:
        original = ipv6(udp(data, sport, dport))
        packet = destination_unreachable(original, RELAY6, code)
        assert packet is not None
        check_ipv6_error(packet, original, 1, code)
    else:
        original = ipv4(udp(data, sport, dport))
        packet = destination_unreachable(original, RELAY4, code)
        assert packet is not None
        check_ipv4_error(packet, original, 3, code)
    info = parse_packet(packet)
    assert info.total_len == len(packet)


@given(st.binary(max_size=200), st.booleans())
def test_arbitrary_originals_never_crash(data: bytes, use_v6: bool) -> None:
    source = RELAY6 if use_v6 else RELAY4
    builders: list[Callable[[], bytes | None]] = [
        partial(destination_unreachable, data, source, 0),
        partial(packet_too_big, data, source, 1280),
        partial(time_exceeded, data, source),
    ]
    for build in builders:
        try:
            packet = build()
        except ProtoError:
            continue  # the original's family differs from the source's
        if packet is not None:
            assert parse_packet(packet).proto in (1, 58)
