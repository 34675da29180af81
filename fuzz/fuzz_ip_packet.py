"""Fuzz IP header parsing and the ICMP errors built from a packet: zgate_proto.packet,
zgate_proto.ip, zgate_proto.icmp (RFC 791, RFC 8200, RFC 792, RFC 4443).

Contract: ``packet.parse_packet`` never raises (None for a malformed packet);
``parse_or_raise``, ``ip.parse_packet``, ``src_bytes``/``dst_bytes``/``decrement_ttl``
raise PacketError only; the ICMP builders return bytes or None and raise ProtoError only
for a source of the other IP version, which the harness never passes. Properties:

* the fast path of ``parse_packet`` and the full parser ``parse_or_raise`` agree on every
  field, and on whether the packet is malformed;
* a parsed packet's header length <= total length <= the bytes given;
* ``decrement_ttl`` keeps a valid IPv4 header checksum valid (RFC 1624) and lowers the
  TTL/hop limit by one, or changes nothing;
* an ICMP error is itself a well-formed packet addressed to the original's source, no
  longer than the RFC's quote limit plus its headers, with a correct checksum.
"""

from __future__ import annotations

import ipaddress
import sys

from harness import check, instrumented, main

with instrumented(__name__ == "__main__"):
    from zgate_proto.errors import PacketError
    from zgate_proto.icmp import (
        ICMPV4_QUOTE_LIMIT,
        ICMPV6_QUOTE_LIMIT,
        admin_prohibited,
        destination_unreachable,
        packet_too_big,
        time_exceeded,
    )
    from zgate_proto.ip import (
        decrement_ttl,
        dst_bytes,
        internet_checksum,
        ip_version,
        ipv4_checksum,
        ones_complement_sum,
        src_bytes,
    )
    from zgate_proto.ip import parse_packet as parse_info
    from zgate_proto.packet import PacketView, parse_or_raise, parse_packet

TARGETS = ("zgate_proto.packet", "zgate_proto.ip", "zgate_proto.icmp")
FIELDS = tuple(name for name in PacketView.__slots__ if name != "data")
SOURCE_V4 = ipaddress.IPv4Address("10.100.0.1")
SOURCE_V6 = ipaddress.IPv6Address("fd7a:7a67::1")


def _fields(view: PacketView) -> tuple[object, ...]:
    return tuple(getattr(view, name) for name in FIELDS)


def _parse(data: bytes) -> PacketView | None:
    view = parse_packet(data)
    try:
        full = parse_or_raise(data)
    except PacketError:
        check(view is None, "parse_packet accepted what parse_or_raise refuses")
        try:
            parse_info(data)
        except PacketError:
            return None
        raise AssertionError("ip.parse_packet accepted what parse_or_raise refuses") from None
    check(view is not None, "parse_packet refused what parse_or_raise accepts")
    assert view is not None
    check(_fields(view) == _fields(full), f"fast and full parse differ: {view!r} {full!r}")
    check(view.header_len <= view.total_len <= len(data), "lengths out of order")
    check(len(view.src) == len(view.dst) == (4 if view.version == 4 else 16), "address size")
    info = parse_info(data)
    check(
        (info.src, info.dst, info.proto, info.total_len)
        == (view.src, view.dst, view.proto, view.total_len),
        "ip.parse_packet differs from packet.parse_packet",
    )
    return view


def _ttl(data: bytes) -> None:
    packet = bytearray(data)
    try:
        version = ip_version(data)
        check(src_bytes(data) == (data[12:16] if version == 4 else data[8:24]), "src_bytes")
        check(dst_bytes(data) == (data[16:20] if version == 4 else data[24:40]), "dst_bytes")
        valid = version == 4 and _header_checksum_valid(data)
        ttl_at = 8 if version == 4 else 7
        before = data[ttl_at]
        lowered = decrement_ttl(packet)
    except PacketError:
        return
    if not lowered:
        check(packet == data and before <= 1, "a refused decrement changed the packet")
        return
    check(packet[ttl_at] == before - 1, "TTL not lowered by one")
    if valid:
        check(_header_checksum_valid(bytes(packet)), "decrement_ttl broke the checksum")


def _header_checksum_valid(data: bytes) -> bool:
    try:
        return ipv4_checksum(data) == int.from_bytes(data[10:12], "big")
    except PacketError:
        return False


def _icmp(data: bytes, view: PacketView | None) -> None:
    version = data[0] >> 4 if data else 4
    source = SOURCE_V4 if version == 4 else SOURCE_V6
    if view is not None and view.version != source.version:
        return
    limit = ICMPV4_QUOTE_LIMIT if source.version == 4 else ICMPV6_QUOTE_LIMIT
    mtu = 1280 if source.version == 6 else 576
    replies = (
        destination_unreachable(data, source, 3),
        admin_prohibited(data, source),
        time_exceeded(data, source),
        packet_too_big(data, source, mtu),
    )
    for reply in replies:
        if reply is None:
            continue
        check(view is not None, "an ICMP error for a malformed packet")
        assert view is not None
        error = parse_or_raise(reply)
        check(error.dst == view.src and error.src == source.packed, "ICMP error misaddressed")
        header = 20 if source.version == 4 else 40
        check(len(reply) <= header + 8 + limit, "ICMP error longer than the quote limit")
        message = reply[header:]
        if source.version == 4:
            check(internet_checksum(message) == 0, "bad ICMP checksum")
        else:
            pseudo = source.packed + view.src + len(message).to_bytes(4, "big") + b"\0\0\0\x3a"
            check(internet_checksum(message, ones_complement_sum(pseudo)) == 0, "bad checksum")


def test_one_input(data: bytes) -> None:
    view = _parse(data)
    _ttl(data)
    _icmp(data, view)


if __name__ == "__main__":
    main(test_one_input)
    sys.exit(0)
