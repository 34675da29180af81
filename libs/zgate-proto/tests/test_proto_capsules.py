"""Capsules (RFC 9297 §3, RFC 9484 §4.7): wire vectors, validation, the stream decoder."""

from __future__ import annotations

import array
import ipaddress
import itertools
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address, ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zgate_proto.capsules import (
    AddressAssign,
    AddressRequest,
    AssignedAddress,
    Capsule,
    CapsuleDecoder,
    CapsuleType,
    DatagramCapsule,
    IPAddressRange,
    RequestedAddress,
    RouteAdvertisement,
    encode_capsule,
    encode_datagram_capsule,
    encode_ip_datagram_capsule,
    encode_raw_capsule,
    normalize_ranges,
)
from zgate_proto.errors import CapsuleTooLarge, DecodeError, H3ErrorCode, ProtoError
from zgate_proto.varint import MAX_VARINT, encode_varint

GREASE = 0x29 * 3 + 0x17  # reserved by RFC 9297 §5.4 to exercise unknown-type skipping


def decode_all(data: bytes, max_capsule_size: int = 65536 + 64) -> list[Capsule]:
    decoder = CapsuleDecoder(max_capsule_size)
    capsules = decoder.feed(data)
    decoder.eof()
    return capsules


def v4range(start: str, end: str, protocol: int = 0) -> IPAddressRange:
    return IPAddressRange(IPv4Address(start), IPv4Address(end), protocol)


def v6range(start: str, end: str, protocol: int = 0) -> IPAddressRange:
    return IPAddressRange(IPv6Address(start), IPv6Address(end), protocol)


# --- wire vectors, built by hand from the figures of RFC 9297 §3.5 and RFC 9484 §4.7


def test_capsule_type_codes() -> None:
    assert [int(t) for t in CapsuleType] == [0, 1, 2, 3]
    assert CapsuleType.ROUTE_ADVERTISEMENT.name == "ROUTE_ADVERTISEMENT"


@pytest.mark.parametrize(
    ("payload", "header"),
    [
        (b"", "0000"),
        (b"\x00\x45", "0002"),
        (bytes(63), "003f"),
        (bytes(64), "004040"),
        (bytes(100), "004064"),
        (bytes(16383), "007fff"),
        (bytes(20000), "0080004e20"),
    ],
)
def test_datagram_capsule_vectors(payload: bytes, header: str) -> None:
    encoded = encode_datagram_capsule(payload)
    assert encoded == bytes.fromhex(header) + payload
    assert encode_capsule(DatagramCapsule(payload)) == encoded
    assert decode_all(encoded) == [DatagramCapsule(payload)]


@pytest.mark.parametrize("size", [0, 1, 62, 63, 64, 1500, 16382, 16383, 16384, 70000])
def test_ip_datagram_capsule_equals_the_two_step_encoding(size: int) -> None:
    packet = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert encode_ip_datagram_capsule(packet) == encode_datagram_capsule(b"\x00" + packet)


def test_address_request_vector() -> None:
    # RFC 9484 §8.1: Request ID 1, IPv4, 0.0.0.0/32.
    capsule = AddressRequest((RequestedAddress(1, ip_network("0.0.0.0/32")),))
    wire = bytes.fromhex("02 07 01 04 00000000 20")
    assert encode_capsule(capsule) == wire
    assert decode_all(wire) == [capsule]


def test_address_assign_vectors() -> None:
    # RFC 9484 §8.1 and §8.4.
    v4 = AddressAssign((AssignedAddress(1, ip_network("192.0.2.11/32")),))
    wire4 = bytes.fromhex("01 07 01 04 c000020b 20")
    assert encode_capsule(v4) == wire4
    both = AddressAssign(
        (
            AssignedAddress(0, ip_network("192.0.2.3/32")),
            AssignedAddress(0, ip_network("2001:db8::1234:1234/128")),
        )
    )
    wire_both = bytes.fromhex("01 1a 00 04 c0000203 20 00 06 20010db8000000000000000012341234 80")
    assert encode_capsule(both) == wire_both
    assert decode_all(wire4 + wire_both) == [v4, both]


def test_empty_address_assign_removes_everything() -> None:
    assert encode_capsule(AddressAssign()) == b"\x01\x00"
    assert decode_all(b"\x01\x00") == [AddressAssign(())]


def test_route_advertisement_vectors() -> None:
    # RFC 9484 §8.1 full tunnel, then §8.4 one IPv4 and one IPv6 host scoped to UDP.
    full = RouteAdvertisement((v4range("0.0.0.0", "255.255.255.255"),))
    wire_full = bytes.fromhex("03 0a 04 00000000 ffffffff 00")
    scoped = RouteAdvertisement(
        (
            v4range("198.51.100.2", "198.51.100.2", 17),
            v6range("2001:db8:3456::b", "2001:db8:3456::b", 17),
        )
    )
    host6 = "20010db83456000000000000 0000000b"
    wire_scoped = bytes.fromhex(f"03 2c 04 c6336402 c6336402 11 06 {host6} {host6} 11")
    assert encode_capsule(full) == wire_full
    assert encode_capsule(scoped) == wire_scoped
    assert decode_all(wire_full + wire_scoped) == [full, scoped]


def test_split_tunnel_example_is_valid() -> None:
    # RFC 9484 Figure 16: the assigned address carved out of 192.0.2.0/24.
    capsule = RouteAdvertisement(
        (v4range("192.0.2.0", "192.0.2.41"), v4range("192.0.2.43", "192.0.2.255"))
    )
    assert decode_all(encode_capsule(capsule)) == [capsule]


def test_empty_route_advertisement_withdraws_everything() -> None:
    assert decode_all(b"\x03\x00") == [RouteAdvertisement(())]


def test_raw_capsule() -> None:
    assert encode_raw_capsule(GREASE, b"ab") == encode_varint(GREASE) + b"\x02ab"


# --- validation of decoded capsules


def assign_entry(request_id: int, version: int, address: bytes, length: int) -> bytes:
    return encode_varint(request_id) + bytes([version]) + address + bytes([length])


def route_entry(version: int, start: bytes, end: bytes, protocol: int) -> bytes:
    return bytes([version]) + start + end + bytes([protocol])


V4_ZERO = bytes(4)
V4_A = bytes([10, 0, 0, 1])


@pytest.mark.parametrize(
    ("capsule_type", "value", "reason"),
    [
        # ADDRESS_REQUEST: IDs non-zero and unique, at least one entry.
        (2, b"", "bad_request_id"),
        (2, assign_entry(0, 4, V4_ZERO, 32), "bad_request_id"),
        (2, assign_entry(7, 4, V4_ZERO, 32) + assign_entry(7, 6, bytes(16), 128), "bad_request_id"),
        # ADDRESS_ASSIGN: non-zero IDs unique.
        (1, assign_entry(3, 4, V4_A, 32) + assign_entry(3, 4, V4_ZERO, 32), "bad_request_id"),
        # Prefixes: version, length bounds, host bits.
        (1, assign_entry(0, 5, V4_A, 32), "bad_ip_version"),
        (1, assign_entry(0, 0, V4_A, 32), "bad_ip_version"),
        (1, assign_entry(0, 4, V4_A, 33), "bad_prefix"),
        (1, assign_entry(0, 6, bytes(16), 129), "bad_prefix"),
        (1, assign_entry(0, 4, V4_A, 24), "bad_prefix"),
        (2, assign_entry(1, 6, b"\x20\x01\x0d\xb8" + bytes(11) + b"\x01", 64), "bad_prefix"),
        # Truncation and trailing bytes inside the capsule value.
        (1, assign_entry(0, 4, V4_A, 32)[:-1], "truncated_capsule"),
        (1, assign_entry(0, 4, V4_A, 32) + b"\x00", "truncated_capsule"),
        (1, assign_entry(0, 4, V4_A, 32) + b"\x00\x04", "truncated_capsule"),
        (1, b"\x40", "bad_varint"),
        (2, assign_entry(1, 6, bytes(15), 128)[:-1], "truncated_capsule"),
        # ROUTE_ADVERTISEMENT.
        (3, route_entry(4, V4_A, V4_ZERO, 0), "bad_route"),
        (3, route_entry(7, V4_ZERO, V4_A, 0), "bad_ip_version"),
        (3, route_entry(4, V4_ZERO, V4_A, 0)[:-1], "truncated_capsule"),
        (3, route_entry(4, V4_ZERO, V4_A, 0) + b"\x04", "truncated_capsule"),
        (3, route_entry(4, V4_ZERO, V4_A, 0) + b"\x05", "bad_ip_version"),
    ],
)
def test_malformed_capsule_values(capsule_type: int, value: bytes, reason: str) -> None:
    decoder = CapsuleDecoder()
    with pytest.raises(DecodeError) as info:
        decoder.feed(encode_raw_capsule(capsule_type, value))
    assert info.value.reason == reason
    assert info.value.code == H3ErrorCode.H3_MESSAGE_ERROR
    # After an error the decoder refuses everything: the stream is to be closed.
    with pytest.raises(DecodeError):
        decoder.feed(encode_datagram_capsule(b"\x00"))
    with pytest.raises(DecodeError):
        decoder.eof()


def test_unsolicited_assignments_may_share_request_id_zero() -> None:
    value = assign_entry(0, 4, V4_A, 32) + assign_entry(0, 4, bytes([10, 0, 0, 2]), 32)
    (capsule,) = decode_all(encode_raw_capsule(1, value))
    assert isinstance(capsule, AddressAssign)
    assert [a.request_id for a in capsule.addresses] == [0, 0]


def test_rejection_form_of_assignment_is_valid() -> None:
    # RFC 9484 §4.7.2: a refused request is answered with 0.0.0.0/32 or ::/128.
    value = assign_entry(5, 4, V4_ZERO, 32) + assign_entry(6, 6, bytes(16), 128)
    (capsule,) = decode_all(encode_raw_capsule(1, value))
    assert capsule == AddressAssign(
        (AssignedAddress(5, ip_network("0.0.0.0/32")), AssignedAddress(6, ip_network("::/128")))
    )


def test_non_minimal_request_id_is_accepted() -> None:
    value = b"\x80\x00\x00\x09" + bytes([4]) + V4_ZERO + bytes([32])
    (capsule,) = decode_all(encode_raw_capsule(2, value))
    assert capsule == AddressRequest((RequestedAddress(9, ip_network("0.0.0.0/32")),))


ORDERING_VIOLATIONS = [
    # IPv6 before IPv4.
    [v6range("::", "::1"), v4range("10.0.0.0", "10.0.0.1")],
    # Within a version, protocol 17 before protocol 6.
    [v4range("10.0.0.0", "10.0.0.1", 17), v4range("10.0.1.0", "10.0.1.1", 6)],
    # Same version and protocol: not ascending.
    [v4range("10.0.1.0", "10.0.1.1"), v4range("10.0.0.0", "10.0.0.1")],
    # Same version and protocol: overlapping, or touching (end must be < next start).
    [v4range("10.0.0.0", "10.0.0.9"), v4range("10.0.0.5", "10.0.0.20")],
    [v4range("10.0.0.0", "10.0.0.9"), v4range("10.0.0.9", "10.0.0.20")],
    [v6range("2001:db8::", "2001:db8::ff", 6), v6range("2001:db8::ff", "2001:db8::1ff", 6)],
    # A protocol-specific range inside an all-protocols range (optional check, done).
    [v4range("10.0.0.0", "10.255.255.255"), v4range("10.1.0.0", "10.1.0.255", 6)],
    [v6range("2001:db8::10", "2001:db8::20"), v6range("2001:db8::", "2001:db8::10", 17)],
]


@pytest.mark.parametrize("ranges", ORDERING_VIOLATIONS)
def test_route_ordering_violations(ranges: list[IPAddressRange]) -> None:
    value = b"".join(
        route_entry(r.start.version, r.start.packed, r.end.packed, r.ip_protocol) for r in ranges
    )
    with pytest.raises(DecodeError) as info:
        decode_all(encode_raw_capsule(3, value))
    assert info.value.reason == "bad_route"
    with pytest.raises(ProtoError):
        encode_capsule(RouteAdvertisement(tuple(ranges)))


def test_route_ordering_accepts_what_the_rules_allow() -> None:
    capsule = RouteAdvertisement(
        (
            v4range("10.0.0.0", "10.0.0.9"),
            v4range("10.0.0.10", "10.0.0.20"),  # adjacent is fine: 9 < 10
            v4range("10.0.1.0", "10.0.1.9", 6),
            v4range("10.0.1.0", "10.0.1.9", 17),  # same addresses, other protocol: fine
            v6range("::", "ffff::"),
            v6range("ffff::1", "ffff::1", 1),
        )
    )
    assert decode_all(encode_capsule(capsule)) == [capsule]


# --- local construction and encoding errors


def test_range_construction_is_checked() -> None:
    with pytest.raises(ProtoError):
        IPAddressRange(IPv4Address("10.0.0.2"), IPv4Address("10.0.0.1"))
    with pytest.raises(ProtoError):
        IPAddressRange(IPv4Address("10.0.0.1"), IPv6Address("::1"))
    with pytest.raises(ProtoError):
        v4range("10.0.0.1", "10.0.0.1", 256)
    with pytest.raises(ProtoError):
        AssignedAddress(-1, ip_network("10.0.0.1/32"))
    with pytest.raises(ProtoError):
        RequestedAddress(MAX_VARINT + 1, ip_network("10.0.0.1/32"))


@pytest.mark.parametrize(
    "capsule",
    [
        AddressRequest(()),
        AddressRequest((RequestedAddress(0, ip_network("0.0.0.0/32")),)),
        AddressRequest(
            (
                RequestedAddress(2, ip_network("0.0.0.0/32")),
                RequestedAddress(2, ip_network("::/128")),
            )
        ),
        AddressAssign(
            (
                AssignedAddress(2, ip_network("10.0.0.1/32")),
                AssignedAddress(2, ip_network("10.0.0.2/32")),
            )
        ),
        Capsule(),
    ],
)
def test_encoding_refuses_invalid_capsules(capsule: Capsule) -> None:
    with pytest.raises(ProtoError):
        encode_capsule(capsule)


def test_range_helpers() -> None:
    network = ip_network("192.0.2.0/24")
    item = IPAddressRange.from_network(network, 6)
    assert (item.start, item.end, item.ip_protocol, item.version) == (
        IPv4Address("192.0.2.0"),
        IPv4Address("192.0.2.255"),
        6,
        4,
    )
    assert item.networks() == [network]
    assert v4range("10.0.0.1", "10.0.0.4").networks() == [
        ip_network("10.0.0.1/32"),
        ip_network("10.0.0.2/31"),
        ip_network("10.0.0.4/32"),
    ]


def test_normalize_ranges() -> None:
    ranges = [
        v6range("2001:db8::", "2001:db8::ff"),
        v4range("10.0.0.128", "10.0.0.255"),
        v4range("10.0.0.0", "10.0.0.127"),  # adjacent: merged
        v4range("10.0.0.100", "10.0.1.10", 6),  # part covered by protocol 0: trimmed
        v4range("10.0.1.5", "10.0.1.20", 6),  # overlaps the previous: merged
        v4range("192.0.2.0", "192.0.2.255", 17),
    ]
    assert normalize_ranges(ranges) == (
        v4range("10.0.0.0", "10.0.0.255"),
        v4range("10.0.1.0", "10.0.1.20", 6),
        v4range("192.0.2.0", "192.0.2.255", 17),
        v6range("2001:db8::", "2001:db8::ff"),
    )


def test_normalize_splits_around_wildcard_ranges() -> None:
    ranges = [
        v4range("10.0.0.10", "10.0.0.19"),
        v4range("10.0.0.30", "10.0.0.39"),
        v4range("10.0.0.0", "10.0.0.50", 6),
        v4range("10.0.0.12", "10.0.0.13", 17),  # fully covered: dropped
    ]
    assert normalize_ranges(ranges) == (
        v4range("10.0.0.10", "10.0.0.19"),
        v4range("10.0.0.30", "10.0.0.39"),
        v4range("10.0.0.0", "10.0.0.9", 6),
        v4range("10.0.0.20", "10.0.0.29", 6),
        v4range("10.0.0.40", "10.0.0.50", 6),
    )


# --- the stream decoder


def test_unknown_capsules_are_skipped() -> None:
    stream = (
        encode_datagram_capsule(b"\x00one")
        + encode_raw_capsule(GREASE, b"x" * 300)
        + encode_raw_capsule(0x3F, b"")
        + encode_raw_capsule(MAX_VARINT, b"abc")
        + encode_datagram_capsule(b"\x00two")
    )
    assert decode_all(stream) == [DatagramCapsule(b"\x00one"), DatagramCapsule(b"\x00two")]


def test_huge_unknown_capsule_is_streamed_not_buffered() -> None:
    decoder = CapsuleDecoder(max_capsule_size=1000)
    length = 10_000_000
    assert decoder.feed(encode_varint(GREASE) + encode_varint(length) + b"z" * 100) == []
    remaining = length - 100
    chunk = b"z" * 65536
    while remaining > len(chunk):
        assert decoder.feed(chunk) == []
        assert decoder.buffered == 0
        assert not decoder.at_boundary
        remaining -= len(chunk)
    tail = encode_datagram_capsule(b"\x00after")
    assert decoder.feed(b"z" * remaining + tail) == [DatagramCapsule(b"\x00after")]
    assert decoder.at_boundary
    decoder.eof()


def test_known_capsule_above_limit_is_refused_from_its_header() -> None:
    decoder = CapsuleDecoder(max_capsule_size=100)
    with pytest.raises(CapsuleTooLarge) as info:
        decoder.feed(b"\x00" + encode_varint(101))
    assert info.value.reason == "capsule_too_large"
    for capsule_type in (1, 2, 3):
        with pytest.raises(CapsuleTooLarge):
            CapsuleDecoder(max_capsule_size=100).feed(bytes([capsule_type]) + encode_varint(5000))


def test_capsule_at_limit_is_accepted() -> None:
    payload = b"\x00" + bytes(99)
    assert decode_all(encode_datagram_capsule(payload), max_capsule_size=100) == [
        DatagramCapsule(payload)
    ]


def test_default_limit_fits_the_largest_ip_packet() -> None:
    packet = bytes(65535)
    assert decode_all(encode_ip_datagram_capsule(packet)) == [DatagramCapsule(b"\x00" + packet)]


def test_non_minimal_type_and_length_are_accepted() -> None:
    stream = b"\x40\x00" + b"\x80\x00\x00\x03" + b"\x00ab" + b"\xc0" + bytes(6) + b"\x03\x00"
    assert decode_all(stream) == [DatagramCapsule(b"\x00ab"), RouteAdvertisement(())]


def test_eof_inside_a_capsule_is_an_error() -> None:
    decoder = CapsuleDecoder()
    assert decoder.feed(encode_datagram_capsule(b"\x00abc")[:-1]) == []
    assert decoder.buffered == 5
    assert not decoder.at_boundary
    with pytest.raises(DecodeError) as info:
        decoder.eof()
    assert info.value.reason == "truncated_capsule"


def test_eof_inside_a_skipped_capsule_is_an_error() -> None:
    decoder = CapsuleDecoder()
    decoder.feed(encode_raw_capsule(GREASE, b"abcdef")[:-2])
    with pytest.raises(DecodeError):
        decoder.eof()


def test_eof_inside_a_header_is_an_error() -> None:
    decoder = CapsuleDecoder()
    decoder.feed(b"\x40")
    with pytest.raises(DecodeError):
        decoder.eof()


def test_feed_accepts_any_bytes_like() -> None:
    stream = encode_datagram_capsule(b"\x00abc") + encode_capsule(AddressAssign())
    expected = [DatagramCapsule(b"\x00abc"), AddressAssign()]
    assert CapsuleDecoder().feed(bytearray(stream)) == expected
    assert CapsuleDecoder().feed(memoryview(stream)) == expected
    assert CapsuleDecoder().feed(b"") == []
    words = array.array("H", stream)  # a memoryview whose items are not bytes
    assert CapsuleDecoder().feed(memoryview(words)) == expected


def test_caller_buffer_may_be_reused_after_feed() -> None:
    decoder = CapsuleDecoder()
    buffer = bytearray(encode_datagram_capsule(b"\x00abcdef"))
    assert decoder.feed(buffer[:4]) == []
    buffer[:] = b"\xff" * len(buffer)  # the decoder kept its own copy
    assert decoder.feed(encode_datagram_capsule(b"\x00abcdef")[4:]) == [
        DatagramCapsule(b"\x00abcdef")
    ]


def test_many_small_datagrams_in_odd_chunks() -> None:
    packets = [bytes([i % 256]) * (20 + i % 50) for i in range(20000)]
    stream = b"".join(encode_ip_datagram_capsule(p) for p in packets)
    decoder = CapsuleDecoder()
    out: list[Capsule] = []
    for start in range(0, len(stream), 1337):
        out += decoder.feed(stream[start : start + 1337])
        assert decoder.buffered < 1337 + 80  # never more than one partial capsule kept
    decoder.eof()
    assert out == [DatagramCapsule(b"\x00" + p) for p in packets]


# --- property tests

ipv4_networks = st.builds(
    lambda address, length: ipaddress.IPv4Network(
        (address >> (32 - length) << (32 - length), length)
    ),
    st.integers(0, 2**32 - 1),
    st.integers(0, 32),
)
ipv6_networks = st.builds(
    lambda address, length: ipaddress.IPv6Network(
        (address >> (128 - length) << (128 - length), length)
    ),
    st.integers(0, 2**128 - 1),
    st.integers(0, 128),
)
networks = ipv4_networks | ipv6_networks
request_ids = st.integers(1, MAX_VARINT)


@st.composite
def address_requests(draw: st.DrawFn) -> AddressRequest:
    ids = draw(st.lists(request_ids, min_size=1, max_size=6, unique=True))
    return AddressRequest(tuple(RequestedAddress(i, draw(networks)) for i in ids))


@st.composite
def address_assigns(draw: st.DrawFn) -> AddressAssign:
    ids = draw(st.lists(request_ids, max_size=6, unique=True))
    ids += [0] * draw(st.integers(0, 3))
    ids = draw(st.permutations(ids))
    return AddressAssign(tuple(AssignedAddress(i, draw(networks)) for i in ids))


@st.composite
def route_advertisements(draw: st.DrawFn) -> RouteAdvertisement:
    """Disjoint ranges (so both ordering rules hold whatever the protocols), then sorted."""
    ranges: list[IPAddressRange] = []
    for version, bits in ((4, 32), (6, 128)):
        points = sorted(draw(st.sets(st.integers(0, 2**bits - 1), max_size=8)))
        make = IPv4Address if version == 4 else IPv6Address
        for index in range(0, len(points) - 1, 2):
            start, end = points[index], points[index + 1]
            if draw(st.booleans()):
                end = start  # single-address range
            protocol = draw(st.sampled_from([0, 0, 1, 6, 17, 58, 132, 255]))
            ranges.append(IPAddressRange(make(start), make(end), protocol))
    ranges.sort(key=lambda r: (r.version, r.ip_protocol, int(r.start)))
    return RouteAdvertisement(tuple(ranges))


capsules = st.one_of(
    st.builds(DatagramCapsule, st.binary(max_size=300)),
    address_requests(),
    address_assigns(),
    route_advertisements(),
)
unknown_capsules = st.builds(
    encode_raw_capsule,
    st.integers(4, MAX_VARINT),
    st.binary(max_size=200),
)


@given(capsules)
def test_round_trip_every_capsule_type(capsule: Capsule) -> None:
    assert decode_all(encode_capsule(capsule)) == [capsule]


@given(
    st.lists(st.tuples(capsules, st.lists(unknown_capsules, max_size=2)), max_size=12),
    st.lists(st.integers(0, 10_000), max_size=20),
)
@settings(deadline=None)
def test_split_stream_yields_the_same_capsules(
    items: list[tuple[Capsule, list[bytes]]], cuts: list[int]
) -> None:
    stream = b"".join(encode_capsule(c) + b"".join(unknown) for c, unknown in items)
    points = sorted({min(cut, len(stream)) for cut in cuts} | {0, len(stream)})
    decoder = CapsuleDecoder()
    out: list[Capsule] = []
    for start, end in itertools.pairwise(points):
        out += decoder.feed(stream[start:end])
    decoder.eof()
    assert out == [capsule for capsule, _ in items]


@given(st.lists(st.binary(max_size=64), max_size=8))
def test_arbitrary_bytes_only_raise_decode_error(chunks: list[bytes]) -> None:
    decoder = CapsuleDecoder(max_capsule_size=128)
    try:
        for chunk in chunks:
            for capsule in decoder.feed(chunk):
                assert isinstance(capsule, Capsule)
        decoder.eof()
    except DecodeError:
        pass


@given(st.sampled_from([0, 1, 2, 3]), st.binary(max_size=80))
def test_arbitrary_values_of_known_types_only_raise_decode_error(
    capsule_type: int, value: bytes
) -> None:
    try:
        (capsule,) = decode_all(encode_raw_capsule(capsule_type, value))
    except DecodeError:
        return
    # Whatever was accepted can be encoded again (it satisfies the RFC's rules).
    assert decode_all(encode_capsule(capsule)) == [capsule]


@given(st.lists(st.tuples(networks, st.sampled_from([0, 0, 6, 17])), max_size=10), st.data())
def test_normalize_keeps_what_is_reachable(
    items: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int]], data: st.DataObject
) -> None:
    ranges = [IPAddressRange.from_network(network, protocol) for network, protocol in items]
    normalized = normalize_ranges(ranges)
    encode_capsule(RouteAdvertisement(normalized))  # valid by construction: does not raise

    def reachable(rs: Sequence[IPAddressRange], address: int, version: int, proto: int) -> bool:
        return any(
            r.version == version
            and int(r.start) <= address <= int(r.end)
            and r.ip_protocol in (0, proto)
            for r in rs
        )

    probes = [int(r.start) for r in ranges] + [int(r.end) + 1 for r in ranges]
    probes += [int(r.start) - 1 for r in ranges]
    for probe in probes:
        for version in (4, 6):
            for protocol in (6, 17, 1):
                assert reachable(ranges, probe, version, protocol) == reachable(
                    normalized, probe, version, protocol
                )
    extra = data.draw(st.integers(0, 2**32 - 1))
    assert reachable(ranges, extra, 4, 6) == reachable(normalized, extra, 4, 6)
