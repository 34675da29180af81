"""Capsule rules at their edges, written to kill the mutants `make mutants` found alive:
error reasons (metrics labels) and messages, off-by-one boundaries of range merging and
subtraction, and the RFC 9484 §4.7 ordering and request-ID rules."""

from __future__ import annotations

from ipaddress import IPv4Address, ip_network

import pytest

from zgate_proto.capsules import (
    AddressAssign,
    AddressRequest,
    AssignedAddress,
    CapsuleDecoder,
    CapsuleType,
    IPAddressRange,
    RequestedAddress,
    RouteAdvertisement,
    encode_capsule,
    encode_raw_capsule,
    normalize_ranges,
)
from zgate_proto.errors import CapsuleTooLarge, DecodeError, ProtoError

A = IPv4Address


def span(start: str, end: str, protocol: int = 0) -> IPAddressRange:
    return IPAddressRange(A(start), A(end), protocol)


def decode_error(capsule_type: int, value: bytes) -> DecodeError:
    with pytest.raises(DecodeError) as caught:
        CapsuleDecoder().feed(encode_raw_capsule(capsule_type, value))
    return caught.value


# ------------------------------------------------------------------ ranges: merging


def test_ranges_one_address_apart_stay_apart_adjacent_ones_merge() -> None:
    apart = normalize_ranges([span("10.0.0.0", "10.0.0.9"), span("10.0.0.11", "10.0.0.20")])
    assert apart == (span("10.0.0.0", "10.0.0.9"), span("10.0.0.11", "10.0.0.20"))
    adjacent = normalize_ranges([span("10.0.0.0", "10.0.0.9"), span("10.0.0.10", "10.0.0.20")])
    assert adjacent == (span("10.0.0.0", "10.0.0.20"),)


def test_protocol_range_keeps_its_last_address_when_the_wildcard_stops_one_short() -> None:
    ranges = normalize_ranges([span("10.0.0.0", "10.0.0.9"), span("10.0.0.5", "10.0.0.10", 6)])
    assert ranges == (span("10.0.0.0", "10.0.0.9"), span("10.0.0.10", "10.0.0.10", 6))


def test_protocol_range_loses_its_last_address_to_a_wildcard_starting_there() -> None:
    ranges = normalize_ranges([span("10.0.0.10", "10.0.0.20"), span("10.0.0.0", "10.0.0.10", 6)])
    assert ranges == (span("10.0.0.10", "10.0.0.20"), span("10.0.0.0", "10.0.0.9", 6))


# ---------------------------------------------------------------- ranges: the rules


def test_protocol_range_touching_a_wildcard_at_one_address_is_refused() -> None:
    overlapping = RouteAdvertisement(
        (span("10.0.0.0", "10.0.0.10"), span("10.0.0.10", "10.0.0.20", 6))
    )
    with pytest.raises(ProtoError, match="overlaps an all-protocols range") as caught:
        encode_capsule(overlapping)
    assert caught.value.reason == "bad_route"
    fine = RouteAdvertisement((span("10.0.0.0", "10.0.0.10"), span("10.0.0.11", "10.0.0.20", 6)))
    assert CapsuleDecoder().feed(encode_capsule(fine)) == [fine]


def test_overlap_with_a_wildcard_is_found_among_several_protocols() -> None:
    # Protocol-specific ranges are sorted by address only within a protocol, so only the
    # wildcard ranges may be searched by bisection: here the last specific range starting
    # before the wildcard's end (udp) misses it, an earlier one (tcp) overlaps it.
    ranges = (
        span("10.0.1.0", "10.0.1.255"),
        span("10.0.0.0", "10.0.1.10", 6),
        span("10.0.0.5", "10.0.0.6", 17),
    )
    with pytest.raises(ProtoError, match="overlaps an all-protocols range"):
        encode_capsule(RouteAdvertisement(ranges))


@pytest.mark.parametrize(
    ("ranges", "problem"),
    [
        ((span("10.0.0.5", "10.0.0.6", 6), span("10.0.0.1", "10.0.0.2", 6)), "not ordered"),
        ((span("10.0.0.1", "10.0.0.2", 17), span("10.0.1.1", "10.0.1.2", 6)), "IP protocol"),
    ],
    ids=["address", "protocol"],
)
def test_route_order_is_checked_when_decoding(
    ranges: tuple[IPAddressRange, ...], problem: str
) -> None:
    value = b"".join(
        bytes((4,)) + r.start.packed + r.end.packed + bytes((r.ip_protocol,)) for r in ranges
    )
    error = decode_error(CapsuleType.ROUTE_ADVERTISEMENT, value)
    assert error.reason == "bad_route" and problem in str(error)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((A("10.0.0.1"), ip_network("::1/128").network_address), "mixes IPv4 and IPv6"),
        ((A("10.0.0.2"), A("10.0.0.1")), "range start 10.0.0.2 after end 10.0.0.1"),
        ((A("10.0.0.1"), A("10.0.0.2"), 256), "IP protocol out of range: 256"),
    ],
    ids=["families", "reversed", "protocol"],
)
def test_bad_ranges_say_why(args: tuple[object, ...], message: str) -> None:
    with pytest.raises(ProtoError) as caught:
        IPAddressRange(*args)  # type: ignore[arg-type]
    assert caught.value.reason == "bad_route"
    assert message in str(caught.value)


# ------------------------------------------------------------------- request IDs


def test_assignment_ids_repeat_only_as_zero() -> None:
    net = ip_network("10.100.0.2/32")
    unsolicited = AddressAssign((AssignedAddress(0, net), AssignedAddress(0, net)))
    assert CapsuleDecoder().feed(encode_capsule(unsolicited)) == [unsolicited]
    # A zero entry first must not end the check of the others.
    twice = AddressAssign(
        (AssignedAddress(0, net), AssignedAddress(3, net), AssignedAddress(3, net))
    )
    with pytest.raises(ProtoError, match="request ID 3 appears twice") as caught:
        encode_capsule(twice)
    assert caught.value.reason == "bad_address"
    value = (
        encode_capsule(twice.__class__(twice.addresses[:2]))[2:]
        + encode_capsule(AddressAssign((AssignedAddress(3, net),)))[2:]
    )
    error = decode_error(CapsuleType.ADDRESS_ASSIGN, value)
    assert error.reason == "bad_request_id" and "appears twice" in str(error)


def test_address_request_rules_say_why() -> None:
    with pytest.raises(ProtoError, match="without any requested address") as caught:
        encode_capsule(AddressRequest(()))
    assert caught.value.reason == "bad_address"
    error = decode_error(CapsuleType.ADDRESS_REQUEST, b"")
    assert error.reason == "bad_request_id" and "without any requested address" in str(error)
    with pytest.raises(ProtoError, match="request ID out of range") as caught:
        RequestedAddress(-1, ip_network("10.0.0.0/8"))
    assert caught.value.reason == "bad_request_id"
    zero = b"\x00\x04" + bytes(4) + b"\x20"
    error = decode_error(CapsuleType.ADDRESS_REQUEST, zero)
    assert error.reason == "bad_request_id" and "request ID 0" in str(error)


# ------------------------------------------------------------- malformed values


PREFIX = b"\x01\x04" + bytes((10, 0, 0, 0)) + b"\x08"  # request 1, 10.0.0.0/8


@pytest.mark.parametrize(
    ("capsule_type", "value", "reason", "message"),
    [
        (CapsuleType.ADDRESS_ASSIGN, PREFIX[:1], "truncated_capsule", "before the IP version"),
        (CapsuleType.ADDRESS_ASSIGN, PREFIX[:4], "truncated_capsule", "inside an address"),
        (CapsuleType.ADDRESS_ASSIGN, PREFIX[:6], "truncated_capsule", "before the prefix len"),
        (CapsuleType.ADDRESS_ASSIGN, b"\x01\x05" + PREFIX[2:], "bad_ip_version", "neither"),
        (CapsuleType.ADDRESS_ASSIGN, PREFIX[:6] + b"\x21", "bad_prefix", "exceeds 32"),
        (CapsuleType.ADDRESS_ASSIGN, PREFIX[:6] + b"\x04", "bad_prefix", "host bits"),
        (
            CapsuleType.ROUTE_ADVERTISEMENT,
            b"\x04" + bytes(4) + bytes(4),
            "truncated_capsule",
            "before the IP protocol",
        ),
        (
            CapsuleType.ROUTE_ADVERTISEMENT,
            b"\x04" + bytes((0, 0, 0, 2)) + bytes((0, 0, 0, 1)) + b"\x00",
            "bad_route",
            "range start after range end",
        ),
    ],
    ids=[
        "no-version",
        "short-address",
        "no-length",
        "version",
        "length",
        "host-bits",
        "no-protocol",
        "reversed",
    ],
)
def test_malformed_values_carry_their_reason(
    capsule_type: int, value: bytes, reason: str, message: str
) -> None:
    error = decode_error(capsule_type, value)
    assert error.reason == reason
    assert message in str(error)


def test_a_failed_decoder_says_so_and_too_large_names_the_type() -> None:
    decoder = CapsuleDecoder(max_capsule_size=4096)
    with pytest.raises(CapsuleTooLarge) as caught:
        decoder.feed(encode_raw_capsule(CapsuleType.ROUTE_ADVERTISEMENT, bytes(5000)))
    assert "ROUTE_ADVERTISEMENT capsule of 5000 bytes exceeds 4096" in str(caught.value)
    with pytest.raises(DecodeError) as again:
        decoder.eof()
    assert again.value.reason == "decoder_failed"
    assert "used after an error" in str(again.value)


def test_a_range_from_a_network_covers_all_protocols_by_default() -> None:
    assert IPAddressRange.from_network(ip_network("10.0.0.0/30")) == span("10.0.0.0", "10.0.0.3")


def test_a_capsule_of_exactly_the_maximum_size_is_accepted() -> None:
    ranges = RouteAdvertisement(tuple(span(f"10.0.{i}.0", f"10.0.{i}.255") for i in range(6)))
    wire = encode_capsule(ranges)
    value_size = len(wire) - 2  # 60 bytes: one byte each for type and length
    assert CapsuleDecoder(max_capsule_size=value_size).feed(wire) == [ranges]
    with pytest.raises(CapsuleTooLarge):
        CapsuleDecoder(max_capsule_size=value_size - 1).feed(wire)
