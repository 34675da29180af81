"""IP header parsing and in-place edits for the packet hot path (RFC 791, RFC 8200).

:func:`parse_packet` reads what routing and policy need (addresses, upper-layer protocol
after IPv6 extension headers, ports, ICMP type, TCP flags) without copying the payload.
The cheaper helpers (:func:`ip_version`, :func:`src_bytes`, :func:`dst_bytes`) read one
field. Every failure is a :class:`~zgate_proto.errors.PacketError` whose ``reason`` is one
of ``too_short``, ``bad_version``, ``bad_header_length``, ``bad_total_length``,
``bad_extension_header`` or ``truncated_transport``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import IntEnum

from zgate_proto.errors import PacketError
from zgate_proto.packet import parse_or_raise

__all__ = [
    "IPProto",
    "PacketInfo",
    "decrement_ttl",
    "dst_bytes",
    "internet_checksum",
    "ip_version",
    "ipv4_checksum",
    "ones_complement_sum",
    "parse_packet",
    "src_bytes",
]

_Buffer = bytes | bytearray | memoryview


class IPProto(IntEnum):
    """Assigned Internet Protocol Numbers used here (IANA registry; RFC 8200 §4 for the
    IPv6 extension headers)."""

    HOPOPT = 0
    ICMP = 1
    TCP = 6
    UDP = 17
    IPV6_ROUTE = 43
    IPV6_FRAG = 44
    ESP = 50
    AH = 51
    ICMPV6 = 58
    IPV6_NONXT = 59
    IPV6_OPTS = 60
    SCTP = 132


@dataclass(frozen=True, slots=True)
class PacketInfo:
    """What :func:`parse_packet` found in an IP packet.

    ``src``/``dst`` are the raw 4 or 16 address bytes. ``proto`` is the upper-layer
    protocol (for IPv6, after the extension header chain; ESP and No Next Header end the
    chain). Ports are set for TCP, UDP and SCTP, ICMP type/code for ICMP (IPv4) and ICMPv6
    (IPv6), and ``tcp_flags`` for TCP, all only in the first fragment. ``header_len`` is
    the offset of the upper-layer header, ``total_len`` the length the IP header declares
    (the buffer may be longer), and ``fragment_offset`` the fragment offset in bytes.
    """

    version: int
    src: bytes
    dst: bytes
    proto: int
    sport: int | None
    dport: int | None
    icmp_type: int | None
    icmp_code: int | None
    header_len: int
    total_len: int
    is_fragment: bool
    tcp_flags: int | None
    fragment_offset: int = 0

    @property
    def src_address(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """The source address as an ipaddress object."""
        return ipaddress.ip_address(self.src)

    @property
    def dst_address(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """The destination address as an ipaddress object."""
        return ipaddress.ip_address(self.dst)


def parse_packet(packet: _Buffer) -> PacketInfo:
    """Parse the IP (and transport) headers of ``packet``. Raises PacketError.

    The parser is :func:`zgate_proto.packet.parse_or_raise` (the relay's one parse per
    packet); this form copies what it found into a frozen :class:`PacketInfo`."""
    view = parse_or_raise(packet if type(packet) is bytes else bytes(packet))
    return PacketInfo(
        view.version,
        view.src,
        view.dst,
        view.proto,
        view.sport,
        view.dport,
        view.icmp_type,
        view.icmp_code,
        view.header_len,
        view.total_len,
        view.is_fragment,
        view.tcp_flags,
        view.fragment_offset,
    )


def ip_version(packet: _Buffer) -> int:
    """The IP version of ``packet`` (4 or 6); PacketError for anything else."""
    if not packet:
        raise PacketError("empty packet", reason="too_short")
    version = packet[0] >> 4
    if version != 4 and version != 6:
        raise PacketError(f"IP version {version}", reason="bad_version")
    return version


def src_bytes(packet: _Buffer) -> bytes:
    """The raw source address (4 or 16 bytes). Raises PacketError if the header is short."""
    if ip_version(packet) == 4:
        if len(packet) < 20:
            raise PacketError("IPv4 packet shorter than its header", reason="too_short")
        return bytes(packet[12:16])
    if len(packet) < 40:
        raise PacketError("IPv6 packet shorter than its header", reason="too_short")
    return bytes(packet[8:24])


def dst_bytes(packet: _Buffer) -> bytes:
    """The raw destination address (4 or 16 bytes). Raises PacketError if the header is
    short."""
    if ip_version(packet) == 4:
        if len(packet) < 20:
            raise PacketError("IPv4 packet shorter than its header", reason="too_short")
        return bytes(packet[16:20])
    if len(packet) < 40:
        raise PacketError("IPv6 packet shorter than its header", reason="too_short")
    return bytes(packet[24:40])


def decrement_ttl(packet: bytearray) -> bool:
    """Decrement the IPv4 TTL (updating the header checksum incrementally, RFC 1624 eqn. 3)
    or the IPv6 hop limit, in place.

    Returns False, leaving the packet untouched, when the TTL/hop limit is 1 or 0: the
    packet must not be forwarded (a router answers ICMP Time Exceeded). Raises PacketError
    if the header is short.
    """
    if ip_version(packet) == 4:
        if len(packet) < 20:
            raise PacketError("IPv4 packet shorter than its header", reason="too_short")
        ttl = packet[8]
        if ttl <= 1:
            return False
        old = (ttl << 8) | packet[9]  # the 16-bit word holding TTL and protocol
        new = old - 0x100
        total = (~((packet[10] << 8) | packet[11]) & 0xFFFF) + (~old & 0xFFFF) + new
        total = (total & 0xFFFF) + (total >> 16)
        total = (total & 0xFFFF) + (total >> 16)
        checksum = ~total & 0xFFFF
        packet[8] = ttl - 1
        packet[10] = checksum >> 8
        packet[11] = checksum & 0xFF
        return True
    if len(packet) < 40:
        raise PacketError("IPv6 packet shorter than its header", reason="too_short")
    if packet[7] <= 1:
        return False
    packet[7] -= 1
    return True


def ones_complement_sum(data: _Buffer) -> int:
    """The 16-bit one's complement sum of ``data`` (RFC 1071), odd length padded with 0.

    Uses 65536 = 1 (mod 65535): the big-endian integer of the data is congruent to the sum
    of its 16-bit words, so one big-integer remainder replaces a Python loop.
    """
    if len(data) & 1:
        data = bytes(data) + b"\x00"
    value = int.from_bytes(data, "big")
    total = value % 0xFFFF
    # A non-zero sum congruent to 0 is 0xFFFF ("negative zero") in one's complement.
    return 0xFFFF if total == 0 and value else total


def internet_checksum(data: _Buffer, initial: int = 0) -> int:
    """The Internet checksum (RFC 1071) of ``data``; ``initial`` adds a partial one's
    complement sum (e.g. of a pseudo-header). A buffer that includes a correct checksum
    yields 0."""
    total = ones_complement_sum(data) + initial
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_checksum(header: _Buffer) -> int:
    """The checksum an IPv4 header should carry: computed over the header (IHL words) with
    its checksum field taken as zero. Raises PacketError if the header is short."""
    if len(header) < 20:
        raise PacketError("IPv4 header shorter than 20 bytes", reason="too_short")
    header_len = (header[0] & 0x0F) << 2
    if header_len < 20 or header_len > len(header):
        raise PacketError(f"bad IPv4 header length {header_len}", reason="bad_header_length")
    data = bytes(header[:header_len])
    return internet_checksum(data[:10] + b"\x00\x00" + data[12:])
