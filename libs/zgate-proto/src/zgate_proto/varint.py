"""QUIC variable-length integers (RFC 9000 §16).

The two most significant bits of the first byte give the length (1, 2, 4 or 8 bytes); the
rest is the value in network byte order. Decoders must accept non-minimal encodings
(RFC 9297 §1.1, RFC 9484 §2); encoders here always use the shortest form.
"""

from __future__ import annotations

from zgate_proto.errors import DecodeError, ProtoError

__all__ = ["MAX_VARINT", "decode_varint", "encode_varint", "varint_size"]

MAX_VARINT = 2**62 - 1
"""The largest value a variable-length integer can carry."""

_Buffer = bytes | bytearray | memoryview

# Single-byte encodings are by far the most common (capsule types, context ID 0, short
# lengths); building them once avoids an allocation per call.
_ONE_BYTE = tuple(bytes((i,)) for i in range(0x40))


def varint_size(value: int) -> int:
    """Number of bytes the shortest encoding of ``value`` takes.

    Raises ProtoError if the value is outside 0..2**62-1.
    """
    if value < 0:
        raise ProtoError(f"varint out of range: {value}", reason="varint_range")
    if value < 0x40:
        return 1
    if value < 0x4000:
        return 2
    if value < 0x4000_0000:
        return 4
    if value <= MAX_VARINT:
        return 8
    raise ProtoError(f"varint out of range: {value}", reason="varint_range")


def encode_varint(value: int) -> bytes:
    """Shortest encoding of ``value``. Raises ProtoError if outside 0..2**62-1."""
    if 0 <= value < 0x40:
        return _ONE_BYTE[value]
    size = varint_size(value)
    prefix = {2: 0x4000, 4: 0x8000_0000, 8: 0xC000_0000_0000_0000}[size]
    return (prefix | value).to_bytes(size, "big")


def decode_varint(data: _Buffer, offset: int = 0) -> tuple[int, int]:
    """Decode the varint at ``offset``; return (value, offset just after it).

    Raises DecodeError if the data ends before the varint does.
    """
    if offset < 0 or offset >= len(data):
        raise DecodeError("truncated varint", reason="bad_varint")
    first = data[offset]
    size = 1 << (first >> 6)
    end = offset + size
    if size == 1:
        return first, end
    if end > len(data):
        raise DecodeError("truncated varint", reason="bad_varint")
    value = first & 0x3F
    for i in range(offset + 1, end):
        value = (value << 8) | data[i]
    return value, end
