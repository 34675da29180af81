"""ICMP and ICMPv6 error messages a tunnel endpoint sends when it cannot forward a packet
(RFC 9484 §7.2.1; RFC 792, RFC 1191, RFC 1812 §4.3 for IPv4; RFC 4443 for IPv6).

Each builder returns the complete IP packet of the error, addressed from ``source`` to the
original packet's source, or None when the rules forbid an error about that packet: it is
itself an ICMP error, it went to a multicast or broadcast address, its source does not
name a single host, it is not the first fragment, or it is malformed (RFC 1122 §3.2.2,
RFC 1812 §4.3.2.7, RFC 4443 §2.4 (e)). Rate limiting (RFC 4443 §2.4 (f)) needs a clock and
is left to the caller.
"""

from __future__ import annotations

import ipaddress
import struct
from enum import IntEnum

from zgate_proto.errors import PacketError, ProtoError
from zgate_proto.ip import PacketInfo, internet_checksum, ones_complement_sum, parse_packet

__all__ = [
    "ICMPV4_QUOTE_LIMIT",
    "ICMPV6_QUOTE_LIMIT",
    "ICMPv4Type",
    "ICMPv4UnreachableCode",
    "ICMPv6Type",
    "ICMPv6UnreachableCode",
    "admin_prohibited",
    "destination_unreachable",
    "packet_too_big",
    "time_exceeded",
]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class ICMPv4Type(IntEnum):
    """ICMP message types (RFC 792)."""

    ECHO_REPLY = 0
    DESTINATION_UNREACHABLE = 3
    SOURCE_QUENCH = 4
    REDIRECT = 5
    ECHO_REQUEST = 8
    TIME_EXCEEDED = 11
    PARAMETER_PROBLEM = 12


class ICMPv4UnreachableCode(IntEnum):
    """Destination Unreachable codes (RFC 792; RFC 1812 §5.2.7.1 for 6-15)."""

    NET_UNREACHABLE = 0
    HOST_UNREACHABLE = 1
    PROTOCOL_UNREACHABLE = 2
    PORT_UNREACHABLE = 3
    FRAGMENTATION_NEEDED = 4
    SOURCE_ROUTE_FAILED = 5
    DESTINATION_NETWORK_UNKNOWN = 6
    DESTINATION_HOST_UNKNOWN = 7
    SOURCE_HOST_ISOLATED = 8
    NETWORK_PROHIBITED = 9
    HOST_PROHIBITED = 10
    NETWORK_UNREACHABLE_FOR_TOS = 11
    HOST_UNREACHABLE_FOR_TOS = 12
    COMMUNICATION_PROHIBITED = 13
    HOST_PRECEDENCE_VIOLATION = 14
    PRECEDENCE_CUTOFF = 15


class ICMPv6Type(IntEnum):
    """ICMPv6 message types (RFC 4443 §2.1; Redirect from RFC 4861)."""

    DESTINATION_UNREACHABLE = 1
    PACKET_TOO_BIG = 2
    TIME_EXCEEDED = 3
    PARAMETER_PROBLEM = 4
    ECHO_REQUEST = 128
    ECHO_REPLY = 129
    REDIRECT = 137


class ICMPv6UnreachableCode(IntEnum):
    """Destination Unreachable codes (RFC 4443 §3.1)."""

    NO_ROUTE = 0
    ADMINISTRATIVELY_PROHIBITED = 1
    BEYOND_SCOPE = 2
    ADDRESS_UNREACHABLE = 3
    PORT_UNREACHABLE = 4
    SOURCE_POLICY_FAILED = 5
    REJECT_ROUTE = 6


ICMPV4_QUOTE_LIMIT = 576 - 20 - 8
"""Most bytes of the original quoted in an ICMP error, keeping it within 576 bytes
(RFC 1812 §4.3.2.3)."""
ICMPV6_QUOTE_LIMIT = 1280 - 40 - 8
"""Most bytes of the original quoted in an ICMPv6 error, keeping it within the IPv6
minimum MTU (RFC 4443 §2.4 (c))."""

_ICMPV4_ERRORS = frozenset((3, 4, 5, 11, 12))
_IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
_IPV6_HEADER = struct.Struct("!IHBB16s16s")
_ICMP_HEADER = struct.Struct("!BBH4s")
_TTL = 64
# RFC 1812 §4.3.2.5: ICMP errors other than Source Quench SHOULD use precedence 6 or 7.
_IPV4_TOS = 0xC0


def destination_unreachable(original: bytes, source: Address, code: int) -> bytes | None:
    """ICMP Destination Unreachable (IPv4 type 3 / ICMPv6 type 1) with ``code``.

    Raises ProtoError if ``source`` is not of the original's IP version or ``code`` is not
    an 8-bit value.
    """
    if not 0 <= code <= 255:
        raise ProtoError(f"ICMP code out of range: {code}")
    info = _eligible(original, source, too_big=False)
    if info is None:
        return None
    if info.version == 4:
        return _icmpv4_error(original, info, source, ICMPv4Type.DESTINATION_UNREACHABLE, code)
    return _icmpv6_error(original, info, source, ICMPv6Type.DESTINATION_UNREACHABLE, code)


def admin_prohibited(original: bytes, source: Address) -> bytes | None:
    """Communication administratively prohibited: IPv4 type 3 code 13 (RFC 1812
    §5.2.7.1), ICMPv6 type 1 code 1 (RFC 4443 §3.1)."""
    code = (
        ICMPv4UnreachableCode.COMMUNICATION_PROHIBITED
        if source.version == 4
        else ICMPv6UnreachableCode.ADMINISTRATIVELY_PROHIBITED
    )
    return destination_unreachable(original, source, code)


def time_exceeded(original: bytes, source: Address) -> bytes | None:
    """Time (hop limit) exceeded in transit: IPv4 type 11 code 0 (RFC 792), ICMPv6 type 3
    code 0 (RFC 4443 §3.3). For a packet :func:`~zgate_proto.ip.decrement_ttl` refused."""
    info = _eligible(original, source, too_big=False)
    if info is None:
        return None
    if info.version == 4:
        return _icmpv4_error(original, info, source, ICMPv4Type.TIME_EXCEEDED, 0)
    return _icmpv6_error(original, info, source, ICMPv6Type.TIME_EXCEEDED, 0)


def packet_too_big(original: bytes, source: Address, mtu: int) -> bytes | None:
    """Tell the sender the next-hop MTU.

    IPv4: type 3 code 4 "fragmentation needed and DF set" with the MTU in the low 16 bits
    of the unused word (RFC 1191 §4); only for packets with DF set, since a router
    fragments the others (RFC 792), so None otherwise. IPv6: Packet Too Big, type 2, with a
    32-bit MTU (RFC 4443 §3.2); unlike the other errors it is also sent for non-first
    fragments and multicast destinations (RFC 4443 §2.4 (e.3)), since path MTU discovery
    needs it. Raises ProtoError for an MTU below the version's minimum (68 / 1280) or above
    its field.
    """
    if source.version == 4 and not 68 <= mtu <= 0xFFFF:
        raise ProtoError(f"IPv4 MTU out of range: {mtu}")
    if source.version == 6 and not 1280 <= mtu <= 0xFFFF_FFFF:
        raise ProtoError(f"IPv6 MTU out of range: {mtu}")
    info = _eligible(original, source, too_big=True)
    if info is None:
        return None
    if info.version == 4:
        if not original[6] & 0x40:
            return None
        rest = struct.pack("!HH", 0, mtu)
        return _icmpv4_error(
            original, info, source, ICMPv4Type.DESTINATION_UNREACHABLE, 4, rest=rest
        )
    rest = struct.pack("!I", mtu)
    return _icmpv6_error(original, info, source, ICMPv6Type.PACKET_TOO_BIG, 0, rest=rest)


def _eligible(original: bytes, source: Address, *, too_big: bool) -> PacketInfo | None:
    """Parse ``original`` and apply the rules on when not to send an ICMP error."""
    try:
        info = parse_packet(original)
    except PacketError:
        return None
    if source.version != info.version:
        raise ProtoError(f"IPv{source.version} source for an IPv{info.version} packet")
    if info.version == 4:
        return _eligible_v4(info)
    return _eligible_v6(info, too_big=too_big)


def _eligible_v4(info: PacketInfo) -> PacketInfo | None:
    if info.fragment_offset:
        return None
    if info.proto == 1 and info.icmp_type in _ICMPV4_ERRORS:
        return None
    # Source not a single host: 0/8, loopback, multicast, class E, limited broadcast.
    first_src = info.src[0]
    if first_src == 0 or first_src == 127 or first_src >= 224:
        return None
    # Destination multicast, class E or limited broadcast.
    if info.dst[0] >= 224:
        return None
    return info


def _eligible_v6(info: PacketInfo, *, too_big: bool) -> PacketInfo | None:
    if info.fragment_offset and not too_big:
        return None
    icmp_type = info.icmp_type
    if info.proto == 58 and icmp_type is not None and (icmp_type < 128 or icmp_type == 137):
        return None  # an ICMPv6 error or a Redirect
    if info.src == bytes(16) or info.src[0] == 0xFF:
        return None
    if info.dst[0] == 0xFF and not too_big:
        return None
    return info


def _icmp_message(kind: int, code: int, rest: bytes, quote: bytes) -> bytearray:
    message = bytearray(_ICMP_HEADER.pack(kind, code, 0, rest))
    message += quote
    return message


def _icmpv4_error(
    original: bytes,
    info: PacketInfo,
    source: Address,
    kind: int,
    code: int,
    *,
    rest: bytes = bytes(4),
) -> bytes:
    quote = original[: min(info.total_len, ICMPV4_QUOTE_LIMIT)]
    message = _icmp_message(kind, code, rest, quote)
    message[2:4] = internet_checksum(message).to_bytes(2, "big")
    header = bytearray(
        _IPV4_HEADER.pack(
            0x45,
            _IPV4_TOS,
            20 + len(message),
            0,  # identification: the datagram is atomic (DF set, not a fragment), RFC 6864
            0x4000,
            _TTL,
            1,
            0,
            source.packed,
            info.src,
        )
    )
    header[10:12] = internet_checksum(header).to_bytes(2, "big")
    return bytes(header + message)


def _icmpv6_error(
    original: bytes,
    info: PacketInfo,
    source: Address,
    kind: int,
    code: int,
    *,
    rest: bytes = bytes(4),
) -> bytes:
    quote = original[: min(info.total_len, ICMPV6_QUOTE_LIMIT)]
    message = _icmp_message(kind, code, rest, quote)
    # RFC 4443 §2.3: the checksum covers the RFC 8200 §8.1 pseudo-header.
    pseudo = source.packed + info.src + struct.pack("!I3xB", len(message), 58)
    checksum = internet_checksum(message, ones_complement_sum(pseudo))
    message[2:4] = checksum.to_bytes(2, "big")
    header = _IPV6_HEADER.pack(6 << 28, len(message), 58, _TTL, source.packed, info.src)
    return header + bytes(message)
