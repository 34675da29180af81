"""The one parse per packet (zgate_proto.packet): views of IPv4/IPv6 TCP, UDP and ICMP,
fragments, extension headers, flow keys, and malformed input that gives None, never an
exception."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zgate_proto.errors import PacketError
from zgate_proto.packet import FlowKey, PacketView, parse_or_raise, parse_packet

SRC4, DST4 = IPv4Address("198.51.100.7").packed, IPv4Address("203.0.113.9").packed
SRC6, DST6 = IPv6Address("2001:db8::7").packed, IPv6Address("2001:db8:1::9").packed
TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58


def tcp(sport: int = 40000, dport: int = 443, flags: int = 0x18, payload: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 2, 5 << 4, flags, 65535, 0, 0) + payload


def udp(sport: int = 40000, dport: int = 53, payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmp(kind: int, code: int = 0, rest: bytes = b"\x00\x07\x00\x01") -> bytes:
    return struct.pack("!BBH", kind, code, 0) + rest


def ipv4(
    payload: bytes,
    proto: int,
    *,
    ttl: int = 64,
    flags_offset: int = 0x4000,
    src: bytes = SRC4,
    dst: bytes = DST4,
    options: bytes = b"",
) -> bytes:
    header_len = 20 + len(options)
    total = header_len + len(payload)
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x40 | header_len // 4,
        0,
        total,
        1,
        flags_offset,
        ttl,
        proto,
        0,
        src,
        dst,
    )
    return header + options + payload


def ipv6(
    payload: bytes, next_header: int, *, hop_limit: int = 64, src: bytes = SRC6, dst: bytes = DST6
) -> bytes:
    header = struct.pack("!IHBB", 6 << 28, len(payload), next_header, hop_limit)
    return header + src + dst + payload


def view_of(data: bytes) -> PacketView:
    view = parse_packet(data)
    assert view is not None, data.hex()
    return view


def test_ipv4_tcp() -> None:
    data = ipv4(tcp(40000, 443, 0x12, b"hello"), TCP, ttl=17)
    view = view_of(data)
    assert view.data is data
    assert (view.version, view.src, view.dst, view.proto) == (4, SRC4, DST4, TCP)
    assert (view.sport, view.dport, view.tcp_flags) == (40000, 443, 0x12)
    assert (view.icmp_type, view.icmp_code) == (None, None)
    assert (view.header_len, view.total_len, view.ttl) == (20, len(data), 17)
    assert (view.is_fragment, view.fragment_offset) == (False, 0)
    assert view.key() == FlowKey(TCP, SRC4, 40000, DST4, 443)
    assert view.reply_key() == FlowKey(TCP, DST4, 443, SRC4, 40000)


def test_ipv4_udp_with_options_and_trailing_bytes() -> None:
    data = ipv4(udp(5353, 53), UDP, options=b"\x01\x01\x01\x00") + b"pad"
    view = view_of(data)
    assert (view.header_len, view.total_len) == (24, len(data) - 3)
    assert (view.sport, view.dport, view.tcp_flags) == (5353, 53, None)


def test_ipv4_icmp_has_type_and_code_and_no_ports() -> None:
    view = view_of(ipv4(icmp(8), ICMP))
    assert (view.icmp_type, view.icmp_code, view.sport, view.dport) == (8, 0, None, None)
    assert view.key() == FlowKey(ICMP, SRC4, 0, DST4, 0)


def test_ipv4_fragments() -> None:
    first = view_of(ipv4(udp(), UDP, flags_offset=0x2000))  # MF, offset 0
    assert first.is_fragment and first.fragment_offset == 0 and first.dport == 53
    later = view_of(ipv4(b"\xff" * 16, UDP, flags_offset=0x2000 | 185))
    assert later.is_fragment and later.fragment_offset == 185 * 8
    assert (later.sport, later.dport) == (None, None), "later fragments carry no ports"
    last = view_of(ipv4(b"\xff" * 3, UDP, flags_offset=2))  # too short for UDP: not read
    assert last.is_fragment and last.fragment_offset == 16 and last.sport is None


def test_ipv6_tcp_udp_and_icmpv6() -> None:
    view = view_of(ipv6(tcp(1, 2, 0x02), TCP, hop_limit=3))
    assert (view.version, view.src, view.dst, view.ttl) == (6, SRC6, DST6, 3)
    assert (view.sport, view.dport, view.tcp_flags, view.header_len) == (1, 2, 0x02, 40)
    assert view_of(ipv6(udp(9, 10), UDP)).key() == FlowKey(UDP, SRC6, 9, DST6, 10)
    echo = view_of(ipv6(icmp(128), ICMPV6))
    assert (echo.proto, echo.icmp_type, echo.icmp_code) == (ICMPV6, 128, 0)


def test_ipv6_extension_headers_are_skipped() -> None:
    hop_by_hop = bytes([60, 0]) + bytes(6)  # next: destination options
    destination = bytes([TCP, 1]) + bytes(14)  # 16 bytes
    view = view_of(ipv6(hop_by_hop + destination + tcp(7, 8), 0))
    assert (view.proto, view.header_len, view.sport, view.dport) == (TCP, 64, 7, 8)
    assert not view.is_fragment


def test_ipv6_fragments() -> None:
    first = view_of(ipv6(bytes([UDP, 0, 0, 1]) + bytes(4) + udp(1, 2), 44))
    assert first.is_fragment and first.fragment_offset == 0 and first.dport == 2
    later = view_of(ipv6(bytes([UDP, 0, 0x05, 0x00]) + bytes(4) + b"data", 44))
    assert later.is_fragment and later.fragment_offset == 0x500
    assert later.proto == UDP and later.sport is None
    atomic = view_of(ipv6(bytes([UDP, 0, 0, 0]) + bytes(4) + udp(1, 2), 44))
    assert not atomic.is_fragment, "an atomic fragment (RFC 6946) is a whole packet"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "too_short"),
        (b"\x45" + bytes(18), "too_short"),
        (b"\x75" + bytes(40), "bad_version"),
        (b"\x44" + bytes(39), "bad_header_length"),
        (ipv4(b"", 253)[:2] + b"\x00\x13" + ipv4(b"", 253)[4:], "bad_total_length"),
        (ipv4(udp(), UDP)[:-1], "bad_total_length"),
        (ipv4(udp()[:7], UDP), "truncated_transport"),
        (ipv4(tcp()[:19], TCP), "truncated_transport"),
        (ipv4(icmp(8)[:3], ICMP), "truncated_transport"),
        (ipv6(b"", 59)[:39], "too_short"),
        (ipv6(udp(), UDP)[:-1], "bad_total_length"),
        (ipv6(tcp()[:19], TCP), "truncated_transport"),
        (ipv6(bytes([TCP, 0]), 0), "bad_extension_header"),
        (ipv6(bytes([0, 0]) + bytes(6) + bytes([TCP, 0]) + bytes(6), 60), "bad_extension_header"),
        (ipv6(bytes([TCP, 5]) + bytes(6), 0), "bad_extension_header"),
    ],
)
def test_malformed_is_none_and_the_raising_form_says_why(data: bytes, reason: str) -> None:
    assert parse_packet(data) is None
    with pytest.raises(PacketError) as caught:
        parse_or_raise(data)
    assert caught.value.reason == reason


def test_flow_keys_of_both_directions_meet() -> None:
    out = view_of(ipv4(tcp(40000, 443), TCP))
    back = view_of(ipv4(tcp(443, 40000), TCP, src=DST4, dst=SRC4))
    assert out.key() == back.reply_key() and hash(out.key()) == hash(back.reply_key())
    assert out.key() != back.key()
    other_port = view_of(ipv4(tcp(40001, 443), TCP))
    assert other_port.key() != out.key()
    assert len({out.key(), back.reply_key(), other_port.key()}) == 2
    assert view_of(ipv4(udp(40000, 443), UDP)).key() != out.key(), "the protocol counts"


@given(st.binary(max_size=120))
def test_arbitrary_bytes_give_a_view_or_none(data: bytes) -> None:
    view = parse_packet(data)
    if view is not None:
        assert view.version in (4, 6)
        assert view.header_len <= view.total_len <= len(data)


@given(
    st.sampled_from([4, 6]),
    st.sampled_from([0, 1, 6, 17, 43, 44, 51, 58, 59, 60, 132]),
    st.integers(0, 0xFFFF),
    st.binary(max_size=80),
)
def test_ip_like_bytes_give_a_view_or_none(
    version: int, proto: int, length: int, body: bytes
) -> None:
    if version == 4:
        data = bytes([0x45, 0]) + length.to_bytes(2, "big") + bytes(5) + bytes([proto]) + body
    else:
        data = bytes([0x60, 0, 0, 0]) + length.to_bytes(2, "big") + bytes([proto, 1]) + body
    view = parse_packet(data)
    if view is not None:
        assert view.total_len <= len(data)
        assert (view.sport is None) == (view.dport is None)


@given(
    st.sampled_from([(4, SRC4, DST4), (6, SRC6, DST6)]),
    st.sampled_from([TCP, UDP]),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.integers(0, 255),
    st.binary(max_size=40),
)
def test_built_packets_read_back(
    family: tuple[int, bytes, bytes], proto: int, sport: int, dport: int, ttl: int, body: bytes
) -> None:
    version, src, dst = family
    transport = tcp(sport, dport, ttl, body) if proto == TCP else udp(sport, dport, body)
    if version == 4:
        data = ipv4(transport, proto, ttl=ttl, src=src, dst=dst)
    else:
        data = ipv6(transport, proto, hop_limit=ttl, src=src, dst=dst)
    view = view_of(data)
    assert (view.version, view.src, view.dst, view.ttl) == (version, src, dst, ttl)
    assert view.key() == FlowKey(proto, src, sport, dst, dport)
    assert view.tcp_flags == (ttl if proto == TCP else None)


_FIELDS = PacketView.__slots__


@given(
    st.sampled_from([4, 6]),
    st.sampled_from([TCP, UDP, ICMP, 253]),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.binary(min_size=0, max_size=60),
    st.integers(-3, 3),
)
def test_the_straight_path_agrees_with_the_full_parse(
    version: int, proto: int, flags_offset: int, ports: int, body: bytes, skew: int
) -> None:
    """Whole TCP/UDP packets take a shortcut in parse_packet; parse_or_raise never does.
    Both must see the same packet, or both refuse it (lengths skewed by a few bytes)."""
    transport = ports.to_bytes(2, "big") * 2 + body
    if version == 4:
        data = bytearray(ipv4(transport, proto, flags_offset=flags_offset))
        data[2:4] = max(0, len(data) + skew).to_bytes(2, "big")
    else:
        data = bytearray(ipv6(transport, proto))
        data[4:6] = max(0, len(transport) + skew).to_bytes(2, "big")
    packet = bytes(data)
    view = parse_packet(packet)
    try:
        full = parse_or_raise(packet)
    except PacketError:
        assert view is None
        return
    assert view is not None
    assert [getattr(view, f) for f in _FIELDS] == [getattr(full, f) for f in _FIELDS]
