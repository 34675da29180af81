"""TCP segment coalescing for TUN writes (generic receive offload in user space), sans-IO.

Writing an IP packet to a TUN device runs the kernel's whole receive path for it (routing,
NAT, the peer's TCP) inside the write; at tunnel rates that was a quarter of the relay's
CPU time. A TUN device opened with IFF_VNET_HDR takes, after a ``virtio_net_hdr``, one
large TCP packet that the kernel treats as the segments it was made of (GSO): its stack
runs once per large packet instead of once per segment, and it cuts the packet back into
the original segments wherever it has to (a forwarding hop with a smaller MTU, a NIC).

:func:`coalesce` joins, within one batch, consecutive in-sequence segments of one TCP flow
whose headers agree (same addresses, ports, ACK number, window, options, TTL, TOS): the
conditions under which the kernel's own GRO would join them. Everything else passes as it
came, with an empty header. Within a flow the order is kept; packets of different flows
may leave in a different order, as after any GRO. IPv4 segments are joined only while
their ids count up by one, since the kernel gives the segments it cuts exactly those ids.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

__all__ = ["NO_OFFLOAD", "VNET_HDR_SIZE", "coalesce", "vnet_header"]

#: struct virtio_net_hdr: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
#: (the device's byte order: the host's, for a TUN without TUNSETVNETLE/BE).
_VNET = struct.Struct("=BBHHHH")
VNET_HDR_SIZE = _VNET.size
_NEEDS_CSUM = 1  # VIRTIO_NET_HDR_F_NEEDS_CSUM
_GSO_TCPV4 = 1  # VIRTIO_NET_HDR_GSO_TCPV4
_GSO_TCPV6 = 4  # VIRTIO_NET_HDR_GSO_TCPV6
_TCP_CSUM_OFFSET = 16
#: A packet that needs nothing from the kernel.
NO_OFFLOAD = bytes(VNET_HDR_SIZE)

_ACK, _PSH = 0x10, 0x08
_MAX_IP_LENGTH = 65535
_MAX_SEGMENTS = 64
_IP4_HEADER = struct.Struct("!10H")
_IP4_ADDRS = struct.Struct("!4H")
_IP6_ADDRS = struct.Struct("!16H")
_U16 = struct.Struct("!H")


def vnet_header(gso_type: int, header_len: int, gso_size: int, ip_header_len: int) -> bytes:
    """The virtio_net_hdr of a TCP super-packet whose checksum the kernel completes."""
    return _VNET.pack(_NEEDS_CSUM, gso_type, header_len, gso_size, ip_header_len, _TCP_CSUM_OFFSET)


class _Run:
    """Segments of one flow being joined: the first packet, then the later payloads."""

    __slots__ = (
        "closed",
        "first",
        "gso",
        "header_len",
        "match",
        "next_id",
        "next_seq",
        "payloads",
        "push",
        "total",
    )

    def __init__(
        self, first: bytes, header_len: int, match: bytes, seq: int, size: int, ident: int
    ) -> None:
        self.first = first
        self.next_id = (ident + 1) & 0xFFFF
        self.header_len = header_len
        self.match = match
        self.gso = size
        self.next_seq = (seq + size) & 0xFFFFFFFF
        self.total = len(first)
        self.payloads: list[bytes] = []
        self.closed = False
        self.push = False  # the last segment carried PSH


def _tcp_segment(packet: bytes) -> tuple[bytes, bytes, int, int, int, int] | None:
    """(flow, must-match, IPv4 id (0 for IPv6), header length, seq, flags) of a TCP segment
    that may be coalesced, or None."""
    size = len(packet)
    if size < 40:
        return None
    version = packet[0] >> 4
    if version == 4:
        # No IP options, no fragment, TCP, a length that agrees with the packet.
        if packet[0] != 0x45 or packet[9] != 6 or (packet[6] & 0x3F) or packet[7]:
            return None
        if _U16.unpack_from(packet, 2)[0] != size:
            return None
        ip_len = 20
        ident = _U16.unpack_from(packet, 4)[0]
        flow = packet[12:24]
        ip_match = packet[1:2] + packet[6:7] + packet[8:9]  # TOS, DF, TTL
    elif version == 6:
        # No extension header (next header TCP), a length that agrees with the packet.
        if size < 60 or packet[6] != 6 or _U16.unpack_from(packet, 4)[0] != size - 40:
            return None
        ip_len = 40
        ident = 0
        flow = packet[8:44]
        ip_match = packet[0:4] + packet[7:8]  # traffic class, flow label, hop limit
    else:
        return None
    tcp = ip_len
    header_len = ip_len + (packet[tcp + 12] >> 4) * 4
    flags = packet[tcp + 13]
    if header_len > size or header_len < ip_len + 20 or flags & ~(_ACK | _PSH) or not flags & _ACK:
        return None
    seq = int.from_bytes(packet[tcp + 4 : tcp + 8], "big")
    # ACK number, data offset, window and options must be equal for the kernel to join.
    match = ip_match + packet[tcp + 8 : tcp + 13] + packet[tcp + 14 : tcp + 16]
    match += packet[tcp + 20 : header_len]
    return flow, match, ident, header_len, seq, flags


def coalesce(packets: Sequence[bytes]) -> list[tuple[bytes, bytes]]:
    """The packets as (virtio_net_hdr, packet) pairs to write, TCP segments joined."""
    order: list[_Run | bytes] = []
    open_runs: dict[bytes, _Run] = {}
    for packet in packets:
        parsed = _tcp_segment(packet)
        if parsed is None:
            # Not joinable; if it is TCP, what follows in its flow must come after it.
            if (flow_of := _tcp_flow(packet)) is not None:
                open_runs.pop(flow_of, None)
            order.append(packet)
            continue
        flow, match, ident, header_len, seq, flags = parsed
        size = len(packet) - header_len
        if size == 0:  # a pure ACK: nothing to join; later data must not pass it
            open_runs.pop(flow, None)
            order.append(packet)
            continue
        run = open_runs.get(flow)
        if (
            run is not None
            and not run.closed
            and seq == run.next_seq
            and (ident == run.next_id or packet[0] >> 4 == 6)
            and size <= run.gso
            and run.match == match
            and run.total + size <= _MAX_IP_LENGTH
            and len(run.payloads) + 1 < _MAX_SEGMENTS
        ):
            run.payloads.append(packet[header_len:])
            run.next_seq = (seq + size) & 0xFFFFFFFF
            run.next_id = (ident + 1) & 0xFFFF
            run.total += size
            # A shorter segment or a push ends the super-packet (GSO's last segment).
            run.push = bool(flags & _PSH)
            run.closed = size < run.gso or run.push
            continue
        run = _Run(packet, header_len, match, seq, size, ident)
        run.closed = bool(flags & _PSH)
        open_runs[flow] = run
        order.append(run)
    out: list[tuple[bytes, bytes]] = []
    for item in order:
        if isinstance(item, bytes):
            out.append((NO_OFFLOAD, item))
        elif not item.payloads:
            out.append((NO_OFFLOAD, item.first))
        else:
            out.append(_super_packet(item))
    return out


def _tcp_flow(packet: bytes) -> bytes | None:
    """The flow key of a TCP packet without IP options or extension headers, else None."""
    if len(packet) >= 40 and packet[0] == 0x45 and packet[9] == 6:
        return packet[12:24]
    if len(packet) >= 60 and packet[0] >> 4 == 6 and packet[6] == 6:
        return packet[8:44]
    return None


def _super_packet(run: _Run) -> tuple[bytes, bytes]:
    """The header and packet of a run of two or more segments."""
    first, header_len = run.first, run.header_len
    header = bytearray(first[:header_len])
    total = run.total
    ip_len = 20 if header[0] >> 4 == 4 else 40
    tcp = ip_len
    if run.push:
        header[tcp + 13] |= _PSH
    tcp_len = total - ip_len
    if ip_len == 20:
        _U16.pack_into(header, 2, total)
        header[10:12] = b"\0\0"
        _U16.pack_into(header, 10, ~_fold(sum(_IP4_HEADER.unpack_from(header))) & 0xFFFF)
        pseudo = sum(_IP4_ADDRS.unpack_from(header, 12))
        gso_type = _GSO_TCPV4
    else:
        _U16.pack_into(header, 4, tcp_len)
        pseudo = sum(_IP6_ADDRS.unpack_from(header, 8))
        gso_type = _GSO_TCPV6
    # With NEEDS_CSUM the checksum field holds the pseudo-header sum, not complemented;
    # the kernel adds the rest per segment.
    _U16.pack_into(header, tcp + 16, _fold(pseudo + 6 + tcp_len))
    packet = b"".join((header, first[header_len:], *run.payloads))
    return vnet_header(gso_type, header_len, run.gso, ip_len), packet


def _fold(value: int) -> int:
    """Fold a one's-complement sum to 16 bits."""
    while value >> 16:
        value = (value & 0xFFFF) + (value >> 16)
    return value
