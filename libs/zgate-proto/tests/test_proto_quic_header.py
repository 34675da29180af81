"""QUIC invariant headers (RFC 8999) and version 1 packet types, as the relay reads them
before any engine sees a datagram."""

from __future__ import annotations

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from hypothesis import given
from hypothesis import strategies as st

from zgate_proto.errors import DecodeError
from zgate_proto.quic_header import (
    MIN_INITIAL_SIZE,
    QUIC_V1,
    LongPacketType,
    QuicHeader,
    destination_cid,
    parse_header,
    starts_connection,
    version_negotiation,
    wants_version_negotiation,
)

DCID = bytes(range(1, 9))
SCID = bytes(range(0xA0, 0xA5))


def long_header(first: int, version: int, dcid: bytes = DCID, scid: bytes = SCID) -> bytes:
    return (
        bytes((first,))
        + version.to_bytes(4, "big")
        + bytes((len(dcid),))
        + dcid
        + bytes((len(scid),))
        + scid
    )


def real_initial() -> bytes:
    """A client's first datagram as an independent QUIC stack builds it."""
    client = QuicConnection(configuration=QuicConfiguration(is_client=True, alpn_protocols=["h3"]))
    client.connect(("127.0.0.1", 4433), now=0.0)
    datagrams = client.datagrams_to_send(now=0.0)
    return datagrams[0][0]


def test_a_real_initial_starts_a_connection() -> None:
    data = real_initial()
    header = parse_header(data, 8)
    assert header.version == QUIC_V1
    assert header.packet_type is LongPacketType.INITIAL
    assert header.is_long
    assert 8 <= len(header.destination_cid) <= 20
    assert destination_cid(data, 8) == header.destination_cid
    assert len(data) >= MIN_INITIAL_SIZE
    assert starts_connection(header, len(data))
    assert not wants_version_negotiation(header, len(data), (QUIC_V1,))


@pytest.mark.parametrize(
    ("first", "packet_type"),
    [
        (0xC0, LongPacketType.INITIAL),
        (0xD0, LongPacketType.ZERO_RTT),
        (0xE0, LongPacketType.HANDSHAKE),
        (0xF0, LongPacketType.RETRY),
    ],
)
def test_long_header_packet_types_of_version_1(first: int, packet_type: LongPacketType) -> None:
    header = parse_header(long_header(first, QUIC_V1) + bytes(1200), 8)
    assert header == QuicHeader(QUIC_V1, DCID, SCID, packet_type)
    assert starts_connection(header, 1300) is (packet_type is LongPacketType.INITIAL)


def test_without_the_fixed_bit_a_v1_packet_has_no_type_and_starts_nothing() -> None:
    header = parse_header(long_header(0x80, QUIC_V1), 8)
    assert header.packet_type is None
    assert not starts_connection(header, 1500)


def test_an_initial_below_1200_bytes_starts_no_connection() -> None:
    header = parse_header(long_header(0xC0, QUIC_V1), 8)
    assert not starts_connection(header, MIN_INITIAL_SIZE - 1)
    assert starts_connection(header, MIN_INITIAL_SIZE)


def test_short_header_takes_the_relays_cid_length() -> None:
    data = bytes((0x41,)) + DCID + b"\x99" * 30
    assert parse_header(data, 8) == QuicHeader(None, DCID)
    assert parse_header(data, 4).destination_cid == DCID[:4]
    assert destination_cid(data, 8) == DCID
    assert not parse_header(data, 8).is_long


def test_unknown_versions_get_version_negotiation_only_from_1200_bytes() -> None:
    header = parse_header(long_header(0xC0, 0x1A2A3A4A), 8)
    assert header.packet_type is None
    assert not wants_version_negotiation(header, MIN_INITIAL_SIZE - 1, (QUIC_V1,))
    assert wants_version_negotiation(header, MIN_INITIAL_SIZE, (QUIC_V1,))
    assert not starts_connection(header, 1500)


def test_no_version_negotiation_for_version_negotiation_or_short_headers() -> None:
    vn = parse_header(long_header(0x80, 0), 8)
    assert not wants_version_negotiation(vn, 1500, (QUIC_V1,))
    short = parse_header(bytes((0x40,)) + DCID, 8)
    assert not wants_version_negotiation(short, 1500, (QUIC_V1,))


def test_v1_connection_ids_longer_than_20_bytes_are_refused() -> None:
    with pytest.raises(DecodeError):
        parse_header(long_header(0xC0, QUIC_V1, dcid=bytes(21)), 8)
    with pytest.raises(DecodeError):
        parse_header(long_header(0xC0, QUIC_V1, scid=bytes(21)), 8)
    # Other versions may have longer ones (RFC 8999 §5.1): still parsed, for negotiation.
    header = parse_header(long_header(0xC0, 0x0A0A0A0A, dcid=bytes(40)), 8)
    assert header.destination_cid == bytes(40)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc0\x00\x00",
        b"\xc0\x00\x00\x00\x01",
        b"\xc0\x00\x00\x00\x01\x08\x01\x02",
        b"\xc0\x00\x00\x00\x01\x02\x01\x02",
        b"\xc0\x00\x00\x00\x01\x02\x01\x02\x05\x01",
        b"\x40\x01\x02",
    ],
)
def test_cut_headers_raise_our_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        parse_header(data, 8)


def test_version_negotiation_echoes_the_ids_and_lists_the_versions() -> None:
    packet = version_negotiation(
        destination_cid=SCID, source_cid=DCID, versions=(QUIC_V1, 0x6B3343CF)
    )
    assert packet[0] & 0xC0 == 0xC0
    header = parse_header(packet, 8)
    assert header.version == 0
    assert header.destination_cid == SCID
    assert header.source_cid == DCID
    tail = packet[1 + 4 + 1 + len(SCID) + 1 + len(DCID) :]
    assert tail == QUIC_V1.to_bytes(4, "big") + 0x6B3343CF.to_bytes(4, "big")


def test_version_negotiation_is_understood_by_another_stack() -> None:
    client = QuicConnection(configuration=QuicConfiguration(is_client=True, alpn_protocols=["h3"]))
    client.connect(("127.0.0.1", 4433), now=0.0)
    initial = client.datagrams_to_send(now=0.0)[0][0]
    header = parse_header(initial, 8)
    reply = version_negotiation(
        destination_cid=header.source_cid, source_cid=header.destination_cid, versions=(0x0A1A2A3A,)
    )
    client.receive_datagram(reply, ("127.0.0.1", 4433), now=0.1)
    events = []
    while (event := client.next_event()) is not None:
        events.append(type(event).__name__)
    # The client finds no common version and gives up: proof it parsed our packet.
    assert "ConnectionTerminated" in events


@given(st.binary(max_size=80), st.integers(min_value=0, max_value=20))
def test_parsing_never_raises_anything_but_decode_error(data: bytes, cid_length: int) -> None:
    try:
        header = parse_header(data, cid_length)
    except DecodeError:
        return
    assert header.destination_cid == destination_cid(data, cid_length)
