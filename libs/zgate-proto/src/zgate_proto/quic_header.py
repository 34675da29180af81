"""QUIC packet headers as far as a server needs them before any engine is involved (sans-IO).

A relay has to decide what to do with a UDP datagram whose destination connection ID it
does not know yet: make a connection (a QUIC v1 Initial), answer with Version Negotiation
(an unknown version), or drop it. Those decisions rest only on the version-independent
invariants of RFC 8999 (header form, version, connection IDs) and, for version 1, the long
header packet type of RFC 9000 §17.2. This module parses exactly that, for any engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from zgate_proto.errors import DecodeError
from zgate_proto.varint import decode_varint

__all__ = [
    "MAX_CID_LENGTH",
    "MIN_INITIAL_SIZE",
    "QUIC_V1",
    "LongPacketType",
    "QuicHeader",
    "destination_cid",
    "initial_token",
    "parse_header",
    "starts_connection",
    "version_negotiation",
    "wants_version_negotiation",
]

#: QUIC version 1 (RFC 9000 §15).
QUIC_V1: Final = 0x00000001
#: A client's first datagram is at least this long (RFC 9000 §14.1); smaller ones that would
#: start a connection (or earn a Version Negotiation) are dropped, which limits amplification.
MIN_INITIAL_SIZE: Final = 1200
#: Longest connection ID QUIC version 1 allows (RFC 9000 §17.2).
MAX_CID_LENGTH: Final = 20

_LONG_FORM: Final = 0x80  # RFC 8999 §5.1: the header form bit
_FIXED_BIT: Final = 0x40  # RFC 9000 §17.2: must be 1 in version 1 packets
_VERSION_NEGOTIATION: Final = 0x00000000  # RFC 8999 §6


class LongPacketType(IntEnum):
    """QUIC version 1 long header packet types (RFC 9000 §17.2, Table 5)."""

    INITIAL = 0x0
    ZERO_RTT = 0x1
    HANDSHAKE = 0x2
    RETRY = 0x3


@dataclass(frozen=True, slots=True)
class QuicHeader:
    """The version-independent part of a QUIC packet header (RFC 8999 §5).

    ``version`` is None for a short header, 0 for a Version Negotiation packet.
    ``packet_type`` is set only for version 1 long headers with the fixed bit set.
    """

    version: int | None
    destination_cid: bytes
    source_cid: bytes = b""
    packet_type: LongPacketType | None = None

    @property
    def is_long(self) -> bool:
        """A long header (handshake packets, Version Negotiation)."""
        return self.version is not None


def destination_cid(data: bytes, cid_length: int) -> bytes:
    """The destination connection ID of the first packet in ``data`` — the one field a
    server reads from every datagram; short headers carry ``cid_length`` bytes of it."""
    if not data:
        raise DecodeError("empty datagram", reason="malformed_quic_header")
    if data[0] & _LONG_FORM:
        if len(data) < 6:
            raise DecodeError("long header cut short", reason="malformed_quic_header")
        end = 6 + data[5]
        if len(data) < end:
            raise DecodeError("destination CID cut short", reason="malformed_quic_header")
        return data[6:end]
    if len(data) < 1 + cid_length:
        raise DecodeError("short header cut short", reason="malformed_quic_header")
    return data[1 : 1 + cid_length]


def parse_header(data: bytes, cid_length: int) -> QuicHeader:
    """The invariant header of the first packet in ``data`` (RFC 8999 §5).

    Raises :class:`~zgate_proto.errors.DecodeError` for bytes that are no QUIC header, or
    a version 1 long header whose connection IDs are longer than 20 bytes.
    """
    dcid = destination_cid(data, cid_length)
    first = data[0]
    if not first & _LONG_FORM:
        return QuicHeader(None, dcid)
    version = int.from_bytes(data[1:5], "big")
    pos = 6 + len(dcid)
    if len(data) <= pos:
        raise DecodeError("source CID length missing", reason="malformed_quic_header")
    scid = data[pos + 1 : pos + 1 + data[pos]]
    if len(scid) != data[pos]:
        raise DecodeError("source CID cut short", reason="malformed_quic_header")
    packet_type = None
    if version == QUIC_V1:
        if len(dcid) > MAX_CID_LENGTH or len(scid) > MAX_CID_LENGTH:
            raise DecodeError("connection ID longer than 20 bytes", reason="malformed_quic_header")
        if first & _FIXED_BIT:
            packet_type = LongPacketType((first & 0x30) >> 4)
    return QuicHeader(version, dcid, scid, packet_type)


def starts_connection(header: QuicHeader, size: int) -> bool:
    """Whether a datagram of ``size`` bytes with an unknown destination CID may open a
    connection: a QUIC v1 Initial of at least 1200 bytes (RFC 9000 §14.1)."""
    return (
        header.version == QUIC_V1
        and header.packet_type is LongPacketType.INITIAL
        and size >= MIN_INITIAL_SIZE
    )


def initial_token(data: bytes, header: QuicHeader) -> bytes:
    """The Token field of a QUIC v1 Initial (RFC 9000 §17.2.2): empty on a first
    Initial, a Retry or NEW_TOKEN token on a later one. Raises DecodeError when cut short."""
    pos = 7 + len(header.destination_cid) + len(header.source_cid)
    length, start = decode_varint(data, pos)
    if start + length > len(data):
        raise DecodeError("Initial token cut short", reason="malformed_quic_header")
    return data[start : start + length]


def wants_version_negotiation(header: QuicHeader, size: int, supported: tuple[int, ...]) -> bool:
    """Whether to answer with Version Negotiation: a long header of a version we do not
    speak, in a datagram of at least 1200 bytes (RFC 9000 §5.2.2, §6.1), and never a
    Version Negotiation packet itself (RFC 9000 §6.1)."""
    return (
        header.version is not None
        and header.version != _VERSION_NEGOTIATION
        and header.version not in supported
        and size >= MIN_INITIAL_SIZE
    )


def version_negotiation(
    *, destination_cid: bytes, source_cid: bytes, versions: tuple[int, ...]
) -> bytes:
    """A Version Negotiation packet (RFC 8999 §6, RFC 9000 §17.2.1).

    ``destination_cid`` is the client's source CID and ``source_cid`` the client's
    destination CID, echoed. The unused bits are not random: 0x40 is set, as RFC 9000
    §17.2.1 recommends where QUIC shares a port with other protocols.
    """
    if len(destination_cid) > 255 or len(source_cid) > 255:
        raise ValueError("connection IDs are at most 255 bytes")
    return b"".join(
        (
            bytes((_LONG_FORM | _FIXED_BIT,)),
            _VERSION_NEGOTIATION.to_bytes(4, "big"),
            bytes((len(destination_cid),)),
            destination_cid,
            bytes((len(source_cid),)),
            source_cid,
            *(v.to_bytes(4, "big") for v in versions),
        )
    )
