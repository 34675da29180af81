"""IP header parsing, TTL decrement and checksums (RFC 791, RFC 8200, RFC 1071, RFC 1624)."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zgate_proto.errors import PacketError
from zgate_proto.ip import (
    IPProto,
    PacketInfo,
    decrement_ttl,
    dst_bytes,
    internet_checksum,
    ip_version,
    ipv4_checksum,
    ones_complement_sum,
    parse_packet,
    src_bytes,
)

SRC4 = IPv4Address("198.51.100.7").packed
DST4 = IPv4Address("203.0.113.9").packed
SRC6 = IPv6Address("2001:db8::7").packed
DST6 = IPv6Address("2001:db8:1::9").packed


def naive_checksum(data: bytes) -> int:
    """RFC 1071 the slow, obvious way: add 16-bit words, fold carries, complement."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(
    payload: bytes,
    proto: int,
    *,
    ttl: int = 64,
    options: bytes = b"",
    flags_offset: int = 0x4000,
    padding: bytes = b"",
) -> bytes:
    header_len = 20 + len(options)
    header = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x40 | (header_len // 4),
            0,
            header_len + len(payload),
            0x1234,
            flags_offset,
            ttl,
            proto,
            0,
            SRC4,
            DST4,
        )
        + options
    )
    header[10:12] = naive_checksum(bytes(header)).to_bytes(2, "big")
    return bytes(header) + payload + padding


def ipv6(payload: bytes, next_header: int, *, hop_limit: int = 64) -> bytes:
    header = struct.pack("!IHBB16s16s", 6 << 28, len(payload), next_header, hop_limit, SRC6, DST6)
    return header + payload


def tcp(sport: int = 40000, dport: int = 443, flags: int = 0x02) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0)


def udp(sport: int = 5353, dport: int = 53, data: bytes = b"hello") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


def ext(next_header: int, length_units: int = 0) -> bytes:
    """A hop-by-hop / routing / destination options header of (length_units + 1) * 8 bytes."""
    return bytes([next_header, length_units]) + bytes(6 + 8 * length_units)


# --- checksums


def test_rfc1071_numerical_example() -> None:
    # RFC 1071 §3: the one's complement sum of these bytes is ddf2.
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert ones_complement_sum(data) == 0xDDF2
    assert internet_checksum(data) == 0x220D


def test_known_ipv4_header_checksum() -> None:
    header = bytes.fromhex("45000073000040004011b861c0a80001c0a800c7")
    assert ipv4_checksum(header) == 0xB861
    assert internet_checksum(header) == 0  # a header with its checksum verifies to 0
    zeroed = header[:10] + b"\x00\x00" + header[10 + 2 :]
    assert ipv4_checksum(zeroed) == 0xB861


def test_checksum_edge_values() -> None:
    assert ones_complement_sum(b"") == 0
    assert internet_checksum(b"") == 0xFFFF
    assert ones_complement_sum(b"\xff\xff") == 0xFFFF
    assert ones_complement_sum(b"\x80\x00\x80\x00") == 0x0001  # end-around carry
    assert ones_complement_sum(b"\x01") == 0x0100  # odd length: padded on the right
    assert internet_checksum(b"\x12\x34", 0xEDCB) == 0  # with a partial sum


def test_ipv4_checksum_rejects_short_headers() -> None:
    with pytest.raises(PacketError):
        ipv4_checksum(bytes(19))
    with pytest.raises(PacketError):
        ipv4_checksum(b"\x46" + bytes(19))  # IHL says 24 bytes


@given(st.binary(max_size=200))
def test_checksum_matches_naive_implementation(data: bytes) -> None:
    assert internet_checksum(data) == naive_checksum(data)
    assert internet_checksum(bytearray(data)) == naive_checksum(data)


# --- parsing IPv4


def test_ipv4_tcp() -> None:
    packet = ipv4(tcp(40000, 443, 0x12), IPProto.TCP)
    assert parse_packet(packet) == PacketInfo(
        version=4,
        src=SRC4,
        dst=DST4,
        proto=6,
        sport=40000,
        dport=443,
        icmp_type=None,
        icmp_code=None,
        header_len=20,
        total_len=40,
        is_fragment=False,
        tcp_flags=0x12,
    )


def test_ipv4_options_udp_and_padding() -> None:
    packet = ipv4(udp(1234, 53), IPProto.UDP, options=b"\x01\x01\x01\x00", padding=bytes(6))
    info = parse_packet(packet)
    assert (info.header_len, info.total_len, info.sport, info.dport) == (24, 37, 1234, 53)
    assert info.tcp_flags is None
    assert info.src_address == IPv4Address("198.51.100.7")
    assert info.dst_address == IPv4Address("203.0.113.9")


def test_ipv4_sctp_and_icmp() -> None:
    sctp = struct.pack("!HHII", 5000, 6000, 0, 0)
    info = parse_packet(ipv4(sctp, IPProto.SCTP))
    assert (info.proto, info.sport, info.dport) == (132, 5000, 6000)
    echo = struct.pack("!BBHHH", 8, 0, 0, 1, 1)
    info = parse_packet(ipv4(echo, IPProto.ICMP))
    assert (info.icmp_type, info.icmp_code, info.sport) == (8, 0, None)


def test_ipv4_other_protocol_has_no_ports() -> None:
    info = parse_packet(ipv4(b"\x00" * 8, 47))  # GRE
    assert (info.proto, info.sport, info.dport, info.icmp_type) == (47, None, None, None)


def test_ipv4_fragments() -> None:
    first = parse_packet(ipv4(udp(), IPProto.UDP, flags_offset=0x2000))
    assert first.is_fragment and first.fragment_offset == 0
    assert (first.sport, first.dport) == (5353, 53)
    later = parse_packet(ipv4(b"\x00" * 16, IPProto.UDP, flags_offset=0x0002))
    assert later.is_fragment and later.fragment_offset == 16
    assert (later.sport, later.dport, later.tcp_flags) == (None, None, None)
    last = parse_packet(ipv4(b"\x00", IPProto.ICMP, flags_offset=0x0003))
    assert last.is_fragment and last.icmp_type is None


# --- parsing IPv6


def test_ipv6_udp() -> None:
    info = parse_packet(ipv6(udp(1111, 2222), IPProto.UDP))
    assert info == PacketInfo(6, SRC6, DST6, 17, 1111, 2222, None, None, 40, 53, False, None)
    assert info.src_address == IPv6Address("2001:db8::7")


def test_ipv6_extension_chain() -> None:
    # hop-by-hop(0) -> routing(43) -> destination options(60, 16 bytes) -> fragment(44) -> TCP
    chain = ext(IPProto.IPV6_ROUTE)
    chain += ext(IPProto.IPV6_OPTS)
    chain += ext(IPProto.IPV6_FRAG, 1)
    chain += struct.pack("!BBHI", IPProto.TCP, 0, 0x0001, 99)  # offset 0, M=1: first fragment
    info = parse_packet(ipv6(chain + tcp(1, 2, 0x10), IPProto.HOPOPT))
    assert (info.proto, info.header_len, info.is_fragment) == (6, 40 + 8 + 8 + 16 + 8, True)
    assert (info.sport, info.dport, info.tcp_flags, info.fragment_offset) == (1, 2, 0x10, 0)


def test_ipv6_non_first_fragment() -> None:
    fragment = struct.pack("!BBHI", IPProto.UDP, 0, (185 << 3) | 1, 7)
    info = parse_packet(ipv6(fragment + bytes(24), IPProto.IPV6_FRAG))
    assert (info.proto, info.header_len, info.fragment_offset) == (17, 48, 1480)
    assert info.is_fragment and info.sport is None


def test_ipv6_atomic_fragment_is_not_a_fragment() -> None:
    fragment = struct.pack("!BBHI", IPProto.UDP, 0, 0, 7)  # offset 0, M=0 (RFC 6946)
    info = parse_packet(ipv6(fragment + udp(), IPProto.IPV6_FRAG))
    assert not info.is_fragment and info.dport == 53


def test_ipv6_ah_esp_and_no_next_header() -> None:
    ah = bytes([IPProto.ICMPV6, 4]) + bytes(22)  # (4 + 2) * 4 = 24 bytes
    echo = struct.pack("!BBHHH", 128, 0, 0, 1, 1)
    info = parse_packet(ipv6(ah + echo, IPProto.AH))
    assert (info.proto, info.header_len, info.icmp_type, info.icmp_code) == (58, 64, 128, 0)
    info = parse_packet(ipv6(ext(IPProto.ESP) + bytes(32), IPProto.HOPOPT))
    assert (info.proto, info.header_len, info.sport) == (50, 48, None)
    info = parse_packet(ipv6(b"", IPProto.IPV6_NONXT))
    assert (info.proto, info.header_len, info.total_len) == (59, 40, 40)


# --- malformed packets


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (b"", "too_short"),
        (b"\x50" + bytes(40), "bad_version"),
        (b"\x00" + bytes(40), "bad_version"),
        (ipv4(b"", 6)[:19], "too_short"),
        (b"\x44" + ipv4(udp(), 17)[1:], "bad_header_length"),
        (ipv4(udp(), 17)[:-1], "bad_total_length"),
        (ipv4(udp(), 17)[:2] + b"\x00\x10" + ipv4(udp(), 17)[4:], "bad_total_length"),
        (b"\x4f" + ipv4(udp(), 17)[1:], "bad_total_length"),  # 60-byte header > total
        (ipv4(tcp()[:19], 6), "truncated_transport"),
        (ipv4(udp()[:7], 17), "truncated_transport"),
        (ipv4(bytes(11), 132), "truncated_transport"),
        (ipv4(b"\x08\x00\x00", 1), "truncated_transport"),
        (ipv4(tcp()[:10], 6, flags_offset=0x2000), "truncated_transport"),  # tiny fragment
        (ipv6(b"", 17)[:39], "too_short"),
        (ipv6(udp(), 17)[:-1], "bad_total_length"),
        (ipv6(bytes(4), 0), "bad_extension_header"),
        (ipv6(bytes([0, 1]) + bytes(6), 0), "bad_extension_header"),  # claims 16 bytes
        (ipv6(ext(0) + ext(17), 60), "bad_extension_header"),  # hop-by-hop not first
        (ipv6(bytes(4), 44), "bad_extension_header"),
        (ipv6(bytes([6, 1]) + bytes(6), 51), "bad_extension_header"),
        (ipv6(ext(6), 0), "truncated_transport"),
        (ipv6(b"\x80\x00", 58), "truncated_transport"),
    ],
)
def test_malformed(packet: bytes, reason: str) -> None:
    with pytest.raises(PacketError) as info:
        parse_packet(packet)
    assert info.value.reason == reason
    assert info.value.code is None  # a forwarding error, not a protocol violation


# --- fast helpers


def test_fast_helpers() -> None:
    v4, v6 = ipv4(udp(), 17), ipv6(udp(), 17)
    assert (ip_version(v4), src_bytes(v4), dst_bytes(v4)) == (4, SRC4, DST4)
    assert (ip_version(v6), src_bytes(v6), dst_bytes(v6)) == (6, SRC6, DST6)
    assert src_bytes(bytearray(v4)) == SRC4 and isinstance(src_bytes(bytearray(v4)), bytes)
    assert dst_bytes(memoryview(v6)) == DST6


@pytest.mark.parametrize("packet", [b"", b"\x45" + bytes(18), b"\x60" + bytes(38), b"\x70" * 40])
def test_fast_helpers_refuse_short_or_unknown(packet: bytes) -> None:
    for helper in (src_bytes, dst_bytes):
        with pytest.raises(PacketError):
            helper(packet)
    with pytest.raises(PacketError):
        decrement_ttl(bytearray(packet))


# --- TTL / hop limit


def test_decrement_ipv4_ttl() -> None:
    packet = bytearray(ipv4(udp(), 17, ttl=64))
    assert decrement_ttl(packet)
    assert packet[8] == 63
    assert naive_checksum(bytes(packet[:20])) == 0
    assert int.from_bytes(packet[10:12], "big") == ipv4_checksum(packet)
    assert packet[20:] == udp()


@pytest.mark.parametrize("ttl", [0, 1])
def test_expired_ttl_is_not_forwarded(ttl: int) -> None:
    packet = bytearray(ipv4(udp(), 17, ttl=ttl))
    before = bytes(packet)
    assert not decrement_ttl(packet)
    assert packet == before


def test_decrement_ipv6_hop_limit() -> None:
    packet = bytearray(ipv6(udp(), 17, hop_limit=2))
    assert decrement_ttl(packet)
    assert packet[7] == 1
    assert not decrement_ttl(packet)
    assert packet[7] == 1


@given(
    st.integers(2, 255),
    st.integers(0, 255),
    st.binary(min_size=14, max_size=14),
    st.binary(max_size=40).map(lambda b: b[: len(b) - len(b) % 4]),
)
def test_incremental_checksum_matches_recomputation(
    ttl: int, proto: int, middle: bytes, options: bytes
) -> None:
    # Random header contents (RFC 1624's equation 3 must hold for all of them).
    header_len = 20 + len(options)
    header = bytearray(bytes([0x40 | header_len // 4]) + middle[:7] + bytes([ttl, proto]))
    header += b"\x00\x00" + middle[7:] + b"\x00" + options
    header[10:12] = ipv4_checksum(header).to_bytes(2, "big")
    packet = bytearray(header)
    assert decrement_ttl(packet)
    assert packet[8] == ttl - 1
    assert int.from_bytes(packet[10:12], "big") == ipv4_checksum(packet)
    assert naive_checksum(bytes(packet)) == 0


# --- properties


@given(st.binary(max_size=120))
def test_arbitrary_bytes_only_raise_packet_error(data: bytes) -> None:
    try:
        info = parse_packet(data)
    except PacketError:
        return
    assert info.version in (4, 6)
    assert info.header_len <= info.total_len <= len(data)


@given(st.sampled_from([0x45, 0x46, 0x4F, 0x60]), st.binary(max_size=120), st.data())
def test_arbitrary_ip_like_packets_only_raise_packet_error(
    first: int, rest: bytes, data: st.DataObject
) -> None:
    packet = bytearray([first]) + rest
    # Often make the length field agree with the buffer so the parser goes deeper.
    if len(packet) >= 6 and data.draw(st.booleans()):
        if first == 0x60:
            packet[4:6] = max(0, len(packet) - 40).to_bytes(2, "big")
        else:
            packet[2:4] = len(packet).to_bytes(2, "big")
    try:
        info = parse_packet(bytes(packet))
    except PacketError:
        pass
    else:
        assert info.header_len <= info.total_len <= len(packet)
        if info.sport is not None:
            assert info.proto in (6, 17, 132)
    before = bytes(packet)
    try:
        forwarded = decrement_ttl(packet)
    except PacketError:
        assert packet == before
        return
    assert forwarded == (packet != before)
