"""QUIC variable-length integers (RFC 9000 §16, Appendix A.1)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zgate_proto.errors import DecodeError, ProtoError
from zgate_proto.varint import MAX_VARINT, decode_varint, encode_varint, varint_size

# RFC 9000 Appendix A.1 sample decodings.
RFC9000_SAMPLES = [
    ("c2197c5eff14e88c", 151288809941952652),
    ("9d7f3e7d", 494878333),
    ("7bbd", 15293),
    ("25", 37),
    ("4025", 37),  # non-minimal: decoders must accept it
]


@pytest.mark.parametrize(("hexdata", "value"), RFC9000_SAMPLES)
def test_rfc9000_samples_decode(hexdata: str, value: int) -> None:
    data = bytes.fromhex(hexdata)
    assert decode_varint(data) == (value, len(data))


@pytest.mark.parametrize(("hexdata", "value"), RFC9000_SAMPLES[:4])
def test_rfc9000_samples_encode_minimally(hexdata: str, value: int) -> None:
    assert encode_varint(value).hex() == hexdata


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 1),
        (63, 1),
        (64, 2),
        (16383, 2),
        (16384, 4),
        (2**30 - 1, 4),
        (2**30, 8),
        (MAX_VARINT, 8),
    ],
)
def test_boundaries(value: int, size: int) -> None:
    assert varint_size(value) == size
    encoded = encode_varint(value)
    assert len(encoded) == size
    assert decode_varint(encoded) == (value, size)


@pytest.mark.parametrize("value", [-1, MAX_VARINT + 1, 2**64])
def test_out_of_range(value: int) -> None:
    with pytest.raises(ProtoError):
        encode_varint(value)
    with pytest.raises(ProtoError):
        varint_size(value)


def test_max_value() -> None:
    assert MAX_VARINT == 2**62 - 1
    assert encode_varint(MAX_VARINT) == b"\xff" * 8


def test_decode_at_offset() -> None:
    data = b"\xaa\xbb" + bytes.fromhex("7bbd") + b"\x25"
    assert decode_varint(data, 2) == (15293, 4)
    assert decode_varint(data, 4) == (37, 5)


@pytest.mark.parametrize(
    ("data", "offset"),
    [
        (b"", 0),
        (b"\x40", 0),
        (b"\x80\x00\x00", 0),
        (b"\xc0" + bytes(6), 0),
        (b"\x25", 1),
        (b"\x25", -1),
    ],
)
def test_truncated(data: bytes, offset: int) -> None:
    with pytest.raises(DecodeError) as info:
        decode_varint(data, offset)
    assert info.value.reason == "bad_varint"


def test_accepts_bytearray_and_memoryview() -> None:
    data = bytes.fromhex("9d7f3e7d")
    assert decode_varint(bytearray(data)) == (494878333, 4)
    assert decode_varint(memoryview(data)) == (494878333, 4)


@given(st.integers(min_value=0, max_value=MAX_VARINT), st.binary(max_size=8))
def test_round_trip(value: int, tail: bytes) -> None:
    encoded = encode_varint(value)
    assert len(encoded) == varint_size(value)
    assert decode_varint(encoded + tail) == (value, len(encoded))


@given(st.integers(min_value=0, max_value=MAX_VARINT), st.sampled_from([1, 2, 4, 8]))
def test_non_minimal_encodings_decode(value: int, size: int) -> None:
    if value >= 1 << (8 * size - 2):
        return  # does not fit in this size
    prefix = {1: 0, 2: 0x40, 4: 0x80, 8: 0xC0}[size]
    data = bytes([prefix | (value >> (8 * (size - 1)))]) + (
        value & ((1 << (8 * (size - 1))) - 1)
    ).to_bytes(size - 1, "big")
    assert decode_varint(data) == (value, size)


@given(st.binary(max_size=12), st.integers(min_value=-2, max_value=14))
def test_arbitrary_bytes_only_raise_decode_error(data: bytes, offset: int) -> None:
    try:
        value, end = decode_varint(data, offset)
    except DecodeError:
        return
    assert 0 <= value <= MAX_VARINT
    assert offset < end <= len(data)
