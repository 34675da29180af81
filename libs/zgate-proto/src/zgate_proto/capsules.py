"""Capsules of the CONNECT-IP data stream (RFC 9297 §3, RFC 9484 §4.7).

A capsule is ``Type (i), Length (i), Value (..)``. This module encodes the four types a
CONNECT-IP endpoint understands and decodes a byte stream of them incrementally with
:class:`CapsuleDecoder`, which skips unknown types without buffering them (RFC 9297 §3.2).
"""

from __future__ import annotations

import ipaddress
import struct
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum

from zgate_proto.errors import CapsuleTooLarge, DecodeError, ProtoError
from zgate_proto.varint import MAX_VARINT, decode_varint, encode_varint

__all__ = [
    "AddressAssign",
    "AddressRequest",
    "AssignedAddress",
    "Capsule",
    "CapsuleDecoder",
    "CapsuleType",
    "DatagramCapsule",
    "IPAddressRange",
    "RequestedAddress",
    "RouteAdvertisement",
    "encode_capsule",
    "encode_datagram_capsule",
    "encode_ip_datagram_capsule",
    "encode_raw_capsule",
    "normalize_ranges",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_ADDRESS_SIZE = {4: 4, 6: 16}


class CapsuleType(IntEnum):
    """Capsule types: DATAGRAM (RFC 9297 §3.5); ADDRESS_ASSIGN, ADDRESS_REQUEST and
    ROUTE_ADVERTISEMENT (RFC 9484 §4.7.1-4.7.3)."""

    DATAGRAM = 0x00
    ADDRESS_ASSIGN = 0x01
    ADDRESS_REQUEST = 0x02
    ROUTE_ADVERTISEMENT = 0x03


def _check_request_id(request_id: int) -> None:
    if not 0 <= request_id <= MAX_VARINT:
        raise ProtoError(f"request ID out of range: {request_id}", reason="bad_request_id")


@dataclass(frozen=True, slots=True)
class AssignedAddress:
    """One Assigned Address of ADDRESS_ASSIGN (RFC 9484 §4.7.1).

    ``request_id`` is the ID of the ADDRESS_REQUEST entry answered, or 0 if unsolicited.
    """

    request_id: int
    prefix: Network

    def __post_init__(self) -> None:
        _check_request_id(self.request_id)


@dataclass(frozen=True, slots=True)
class RequestedAddress:
    """One Requested Address of ADDRESS_REQUEST (RFC 9484 §4.7.2).

    ``request_id`` must be non-zero; an all-zero address means "any address of this family,
    with this prefix length".
    """

    request_id: int
    prefix: Network

    def __post_init__(self) -> None:
        _check_request_id(self.request_id)


@dataclass(frozen=True, slots=True)
class IPAddressRange:
    """One IP Address Range of ROUTE_ADVERTISEMENT (RFC 9484 §4.7.3).

    ``start`` and ``end`` are inclusive and of the same IP version; ``ip_protocol`` 0 means
    all protocols.
    """

    start: Address
    end: Address
    ip_protocol: int = 0

    def __post_init__(self) -> None:
        if self.start.version != self.end.version:
            raise ProtoError("range mixes IPv4 and IPv6", reason="bad_route")
        if int(self.start) > int(self.end):
            raise ProtoError(f"range start {self.start} after end {self.end}", reason="bad_route")
        if not 0 <= self.ip_protocol <= 255:
            raise ProtoError(f"IP protocol out of range: {self.ip_protocol}", reason="bad_route")

    @property
    def version(self) -> int:
        """The IP version (4 or 6)."""
        return self.start.version

    @classmethod
    def from_network(cls, network: Network, ip_protocol: int = 0) -> IPAddressRange:
        """The range covering ``network``."""
        return cls(network.network_address, network.broadcast_address, ip_protocol)

    def networks(self) -> list[Network]:
        """The smallest list of CIDR prefixes covering this range (for a routing table)."""
        return list(ipaddress.summarize_address_range(self.start, self.end))


@dataclass(frozen=True, slots=True)
class Capsule:
    """Base of the capsules this package decodes and encodes."""


@dataclass(frozen=True, slots=True)
class DatagramCapsule(Capsule):
    """DATAGRAM capsule (RFC 9297 §3.5): ``payload`` is an HTTP Datagram payload, i.e.
    context ID followed by the data (see :mod:`zgate_proto.datagram`)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class AddressAssign(Capsule):
    """ADDRESS_ASSIGN capsule (RFC 9484 §4.7.1): the full list of addresses assigned to the
    receiver; empty means all addresses were removed."""

    addresses: tuple[AssignedAddress, ...] = ()


@dataclass(frozen=True, slots=True)
class AddressRequest(Capsule):
    """ADDRESS_REQUEST capsule (RFC 9484 §4.7.2): one or more requested addresses."""

    addresses: tuple[RequestedAddress, ...]


@dataclass(frozen=True, slots=True)
class RouteAdvertisement(Capsule):
    """ROUTE_ADVERTISEMENT capsule (RFC 9484 §4.7.3): the full list of ranges the sender
    routes, ordered as the RFC requires (see :func:`normalize_ranges`)."""

    ranges: tuple[IPAddressRange, ...] = ()


# ---------------------------------------------------------------------------------------
# Validation shared by the encoder (local mistakes -> ProtoError) and the decoder (peer
# mistakes -> DecodeError): each returns a description of the problem, or None.


def _address_problem(request_ids: Iterable[int], *, is_request: bool) -> str | None:
    seen: set[int] = set()
    count = 0
    for request_id in request_ids:
        count += 1
        if request_id == 0:
            if is_request:
                return "ADDRESS_REQUEST entry with request ID 0"
            continue  # unsolicited assignments all carry 0
        if request_id in seen:
            return f"request ID {request_id} appears twice"
        seen.add(request_id)
    if is_request and count == 0:
        return "ADDRESS_REQUEST without any requested address"
    return None


def _route_problem(ranges: Sequence[IPAddressRange]) -> str | None:
    """Check the ordering rules of RFC 9484 §4.7.3, and the optional check that no range
    of a given protocol overlaps a range for all protocols (protocol 0)."""
    previous: tuple[int, int, int] | None = None
    all_protocols: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
    one_protocol: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
    for item in ranges:
        version: int = item.start.version
        protocol = item.ip_protocol
        start, end = int(item.start), int(item.end)
        if previous is not None:
            p_version, p_protocol, p_end = previous
            if version < p_version:
                return "ranges not ordered by IP version"
            if version == p_version and protocol < p_protocol:
                return "ranges not ordered by IP protocol"
            if version == p_version and protocol == p_protocol and start <= p_end:
                return "ranges overlap or are not ordered by address"
        previous = (version, protocol, end)
        (all_protocols if protocol == 0 else one_protocol)[version].append((start, end))
    for family, wildcard in all_protocols.items():
        starts = [start for start, _ in wildcard]
        for start, end in one_protocol[family]:
            index = bisect_right(starts, end) - 1
            if index >= 0 and wildcard[index][1] >= start:
                return "a protocol-specific range overlaps an all-protocols range"
    return None


# ---------------------------------------------------------------------------------------
# Encoding

_DATAGRAM_HEADER_1 = tuple(bytes((0, n)) for n in range(0x40))
_IP_DATAGRAM_HEADER_1 = tuple(bytes((0, n, 0)) for n in range(0x40))
_HEADER_2 = struct.Struct(">BH")
_IP_HEADER_2 = struct.Struct(">BHB")


def encode_datagram_capsule(payload: bytes) -> bytes:
    """DATAGRAM capsule carrying an HTTP Datagram payload (context ID included)."""
    size = len(payload)
    if size < 0x40:
        return _DATAGRAM_HEADER_1[size] + payload
    if size < 0x4000:
        return _HEADER_2.pack(0, 0x4000 | size) + payload
    return b"\x00" + encode_varint(size) + payload


def encode_ip_datagram_capsule(packet: bytes) -> bytes:
    """DATAGRAM capsule carrying ``packet`` under context ID 0, built with one copy."""
    size = len(packet) + 1
    if size < 0x40:
        return _IP_DATAGRAM_HEADER_1[size] + packet
    if size < 0x4000:
        return _IP_HEADER_2.pack(0, 0x4000 | size, 0) + packet
    return b"".join((b"\x00", encode_varint(size), b"\x00", packet))


def encode_raw_capsule(capsule_type: int, value: bytes) -> bytes:
    """Any capsule, given its type and value (e.g. a reserved GREASE type 0x29*N+0x17)."""
    return b"".join((encode_varint(capsule_type), encode_varint(len(value)), value))


def _encode_prefix(request_id: int, prefix: Network) -> bytes:
    return b"".join(
        (
            encode_varint(request_id),
            bytes((prefix.version,)),
            prefix.network_address.packed,
            bytes((prefix.prefixlen,)),
        )
    )


def encode_capsule(capsule: Capsule) -> bytes:
    """Encode a capsule. Raises ProtoError if its contents break RFC 9484's rules."""
    if isinstance(capsule, DatagramCapsule):
        return encode_datagram_capsule(capsule.payload)
    if isinstance(capsule, AddressAssign | AddressRequest):
        is_request = isinstance(capsule, AddressRequest)
        problem = _address_problem((a.request_id for a in capsule.addresses), is_request=is_request)
        if problem:
            raise ProtoError(problem, reason="bad_address")
        value = b"".join(_encode_prefix(a.request_id, a.prefix) for a in capsule.addresses)
        kind = CapsuleType.ADDRESS_REQUEST if is_request else CapsuleType.ADDRESS_ASSIGN
        return encode_raw_capsule(kind, value)
    if isinstance(capsule, RouteAdvertisement):
        problem = _route_problem(capsule.ranges)
        if problem:
            raise ProtoError(problem, reason="bad_route")
        value = b"".join(
            b"".join(
                (
                    bytes((r.start.version,)),
                    r.start.packed,
                    r.end.packed,
                    bytes((r.ip_protocol,)),
                )
            )
            for r in capsule.ranges
        )
        return encode_raw_capsule(CapsuleType.ROUTE_ADVERTISEMENT, value)
    raise ProtoError(f"cannot encode {type(capsule).__name__}")


def normalize_ranges(ranges: Iterable[IPAddressRange]) -> tuple[IPAddressRange, ...]:
    """Ranges in the order RFC 9484 §4.7.3 requires: sorted by (version, protocol, start),
    overlapping or adjacent ranges of one protocol merged, and the parts of protocol-specific
    ranges already covered by an all-protocols range removed."""
    spans: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for item in ranges:
        key: tuple[int, int] = (item.start.version, item.ip_protocol)
        spans.setdefault(key, []).append((int(item.start), int(item.end)))
    merged: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for key, items in spans.items():
        items.sort()
        out: list[tuple[int, int]] = []
        for start, end in items:
            if out and start <= out[-1][1] + 1:
                out[-1] = (out[-1][0], max(out[-1][1], end))
            else:
                out.append((start, end))
        merged[key] = out
    result: list[IPAddressRange] = []
    for version, protocol in sorted(merged):
        items = merged[(version, protocol)]
        if protocol != 0:
            wildcard = merged.get((version, 0), [])
            items = [piece for s, e in items for piece in _subtract(s, e, wildcard)]
        make = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
        result.extend(IPAddressRange(make(s), make(e), protocol) for s, e in items)
    return tuple(result)


def _subtract(start: int, end: int, covered: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Parts of [start, end] outside the sorted, disjoint spans ``covered``."""
    ends = [e for _, e in covered]
    first = bisect_left(ends, start)  # the first span that ends at or after start
    pieces: list[tuple[int, int]] = []
    cursor = start
    for span_start, span_end in covered[first:]:
        if span_start > end:
            break
        if span_start > cursor:
            pieces.append((cursor, span_start - 1))
        cursor = max(cursor, span_end + 1)
        if cursor > end:
            break
    if cursor <= end:
        pieces.append((cursor, end))
    return pieces


# ---------------------------------------------------------------------------------------
# Decoding of capsule values


def _malformed(message: str, reason: str = "malformed_capsule") -> DecodeError:
    return DecodeError(message, reason=reason)


def _read_address(value: bytes, pos: int, version: int) -> tuple[int, int]:
    """Read one address of ``version``; return (address as int, position after it)."""
    size = _ADDRESS_SIZE.get(version)
    if size is None:
        raise _malformed(f"IP version {version} is neither 4 nor 6", "bad_ip_version")
    end = pos + size
    if end > len(value):
        raise _malformed("capsule value ends inside an address", "truncated_capsule")
    return int.from_bytes(value[pos:end], "big"), end


def _decode_prefixes(value: bytes) -> list[tuple[int, Network]]:
    """Decode a sequence of (Request ID, IP Version, IP Address, IP Prefix Length)."""
    entries: list[tuple[int, Network]] = []
    pos, size = 0, len(value)
    while pos < size:
        request_id, pos = decode_varint(value, pos)
        if pos >= size:
            raise _malformed("capsule value ends before the IP version", "truncated_capsule")
        version = value[pos]
        address, pos = _read_address(value, pos + 1, version)
        if pos >= size:
            raise _malformed("capsule value ends before the prefix length", "truncated_capsule")
        prefix_length = value[pos]
        pos += 1
        bits = 32 if version == 4 else 128
        if prefix_length > bits:
            raise _malformed(f"prefix length {prefix_length} exceeds {bits}", "bad_prefix")
        if address & ((1 << (bits - prefix_length)) - 1):
            raise _malformed("prefix has host bits set", "bad_prefix")
        network: Network
        if version == 4:
            network = ipaddress.IPv4Network((address, prefix_length))
        else:
            network = ipaddress.IPv6Network((address, prefix_length))
        entries.append((request_id, network))
    return entries


def _decode_address_assign(value: bytes) -> AddressAssign:
    entries = _decode_prefixes(value)
    problem = _address_problem((rid for rid, _ in entries), is_request=False)
    if problem:
        raise _malformed(problem, "bad_request_id")
    return AddressAssign(tuple(AssignedAddress(rid, net) for rid, net in entries))


def _decode_address_request(value: bytes) -> AddressRequest:
    entries = _decode_prefixes(value)
    problem = _address_problem((rid for rid, _ in entries), is_request=True)
    if problem:
        raise _malformed(problem, "bad_request_id")
    return AddressRequest(tuple(RequestedAddress(rid, net) for rid, net in entries))


def _decode_route_advertisement(value: bytes) -> RouteAdvertisement:
    ranges: list[IPAddressRange] = []
    pos, size = 0, len(value)
    while pos < size:
        version = value[pos]
        start, pos = _read_address(value, pos + 1, version)
        end, pos = _read_address(value, pos, version)
        if pos >= size:
            raise _malformed("capsule value ends before the IP protocol", "truncated_capsule")
        protocol = value[pos]
        pos += 1
        if start > end:
            raise _malformed("range start after range end", "bad_route")
        make = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
        ranges.append(IPAddressRange(make(start), make(end), protocol))
    problem = _route_problem(ranges)
    if problem:
        raise _malformed(problem, "bad_route")
    return RouteAdvertisement(tuple(ranges))


_VALUE_DECODERS: dict[int, Callable[[bytes], Capsule]] = {
    CapsuleType.ADDRESS_ASSIGN: _decode_address_assign,
    CapsuleType.ADDRESS_REQUEST: _decode_address_request,
    CapsuleType.ROUTE_ADVERTISEMENT: _decode_route_advertisement,
}

# ---------------------------------------------------------------------------------------
# The incremental stream decoder

# Once this many consumed bytes sit at the front of the buffer (and they are at least
# half of it), they are dropped; below that, an offset is cheaper than moving memory.
_COMPACT_AT = 16384
_MASK = {2: 0x3FFF, 4: 0x3FFF_FFFF, 8: 0x3FFF_FFFF_FFFF_FFFF}


class CapsuleDecoder:
    """Incremental decoder of a capsule stream (RFC 9297 §3.2).

    :meth:`feed` takes data split at arbitrary points and returns the capsules it
    completes. Known capsules longer than ``max_capsule_size`` raise CapsuleTooLarge;
    unknown types are skipped as their bytes arrive, whatever their length, without being
    buffered. Any error leaves the decoder unusable: the stream must be closed.
    """

    __slots__ = ("_buffer", "_failed", "_max_size", "_pos", "_skip")

    def __init__(self, max_capsule_size: int = 65536 + 64) -> None:
        self._buffer = bytearray()
        self._pos = 0  # start of unconsumed bytes in _buffer
        self._skip = 0  # bytes of an unknown capsule still to be dropped
        self._max_size = max_capsule_size
        self._failed = False

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for the rest of a capsule."""
        return len(self._buffer) - self._pos

    @property
    def at_boundary(self) -> bool:
        """True when no capsule is partly received: the stream may end here."""
        return self._skip == 0 and self.buffered == 0

    def feed(self, data: bytes | bytearray | memoryview) -> list[Capsule]:
        """Consume ``data``; return the capsules completed by it, in order.

        Raises DecodeError (or CapsuleTooLarge) on malformed input.
        """
        if self._failed:
            raise DecodeError("capsule decoder used after an error", reason="decoder_failed")
        capsules: list[Capsule] = []
        if isinstance(data, memoryview) and (data.format != "B" or data.ndim != 1):
            data = data.tobytes()  # the parser indexes single bytes
        try:
            self._feed(data, capsules)
        except DecodeError:
            self._failed = True
            raise
        return capsules

    def eof(self) -> None:
        """Signal the end of the stream; raises DecodeError if it cut a capsule short
        (RFC 9297 §3.3)."""
        if self._failed:
            raise DecodeError("capsule decoder used after an error", reason="decoder_failed")
        if not self.at_boundary:
            self._failed = True
            raise DecodeError("stream ended inside a capsule", reason="truncated_capsule")

    def _feed(self, data: bytes | bytearray | memoryview, out: list[Capsule]) -> None:
        if self._skip:
            size = len(data)
            if self._skip >= size:
                self._skip -= size
                return
            data = memoryview(data)[self._skip :]
            self._skip = 0
        if not data:
            return
        buffer = self._buffer
        if len(buffer) > self._pos:
            buffer += data
            pos = self._parse(buffer, self._pos, out)
            if pos >= len(buffer):
                buffer.clear()
                pos = 0
            elif pos >= _COMPACT_AT and pos * 2 >= len(buffer):
                del buffer[:pos]
                pos = 0
            self._pos = pos
        else:
            # Common case: nothing pending, so parse straight from the caller's data and
            # keep only an incomplete tail.
            buffer.clear()
            self._pos = 0
            pos = self._parse(data, 0, out)
            if pos < len(data):
                buffer += memoryview(data)[pos:]

    def _parse(self, data: bytes | bytearray | memoryview, pos: int, out: list[Capsule]) -> int:
        """Decode complete capsules from ``data`` at ``pos``; return where parsing stopped."""
        with memoryview(data) as view:
            end = len(view)
            max_size = self._max_size
            while pos < end:
                first = view[pos]
                if first < 0x40:
                    capsule_type, cursor = first, pos + 1
                else:
                    size = 1 << (first >> 6)
                    if pos + size > end:
                        break
                    capsule_type = int.from_bytes(view[pos : pos + size], "big") & _MASK[size]
                    cursor = pos + size
                if cursor >= end:
                    break
                first = view[cursor]
                if first < 0x40:
                    length = first
                    cursor += 1
                else:
                    size = 1 << (first >> 6)
                    if cursor + size > end:
                        break
                    length = int.from_bytes(view[cursor : cursor + size], "big") & _MASK[size]
                    cursor += size
                stop = cursor + length
                if capsule_type == 0:  # DATAGRAM; a plain int compares fastest
                    if length > max_size:
                        raise self._too_large(capsule_type, length)
                    if stop > end:
                        break
                    out.append(DatagramCapsule(view[cursor:stop].tobytes()))
                elif capsule_type in _VALUE_DECODERS:
                    if length > max_size:
                        raise self._too_large(capsule_type, length)
                    if stop > end:
                        break
                    decode = _VALUE_DECODERS[capsule_type]
                    out.append(decode(view[cursor:stop].tobytes()))
                elif stop > end:
                    # Unknown type (RFC 9297 §3.2: skip it); drop the rest as it arrives.
                    self._skip = stop - end
                    return end
                pos = stop
            return pos

    def _too_large(self, capsule_type: int, length: int) -> CapsuleTooLarge:
        name = CapsuleType(capsule_type).name
        return CapsuleTooLarge(f"{name} capsule of {length} bytes exceeds {self._max_size}")
