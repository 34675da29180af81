"""HTTP Datagram payloads with context IDs (RFC 9297 §2, RFC 9484 §5-6)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zgate_proto.datagram import (
    CONTEXT_ID_IP,
    decode_http_datagram,
    decode_ip_datagram,
    encode_http_datagram,
    encode_ip_datagram,
)
from zgate_proto.errors import DecodeError, H3ErrorCode, ProtoError
from zgate_proto.varint import MAX_VARINT

PACKET = bytes.fromhex("4500001c000040004001f7cdc0000201c6336401") + bytes(8)


def test_ip_datagram_is_context_zero_then_packet() -> None:
    assert CONTEXT_ID_IP == 0
    assert encode_ip_datagram(PACKET) == b"\x00" + PACKET
    assert decode_http_datagram(b"\x00" + PACKET) == (0, PACKET)
    assert decode_ip_datagram(b"\x00" + PACKET) == PACKET


def test_empty_ip_payload_is_allowed() -> None:
    assert decode_http_datagram(b"\x00") == (0, b"")


def test_other_context_ids() -> None:
    assert decode_http_datagram(b"\x02abc") == (2, b"abc")
    assert decode_http_datagram(b"\x40\x41xyz") == (0x41, b"xyz")
    assert decode_ip_datagram(b"\x02abc") is None


def test_non_minimal_zero_is_still_ip() -> None:
    assert decode_http_datagram(b"\x40\x00" + PACKET) == (0, PACKET)
    assert decode_ip_datagram(b"\x80\x00\x00\x00" + PACKET) == PACKET


@pytest.mark.parametrize("payload", [b"", b"\x40", b"\x80\x00", b"\xc0\x00\x00"])
def test_missing_context_id_is_a_datagram_error(payload: bytes) -> None:
    for decode in (decode_http_datagram, decode_ip_datagram):
        with pytest.raises(DecodeError) as info:
            decode(payload)
        assert info.value.code == H3ErrorCode.H3_DATAGRAM_ERROR
        assert info.value.reason == "bad_context_id"


def test_encode_http_datagram() -> None:
    assert encode_http_datagram(0, b"p") == b"\x00p"
    assert encode_http_datagram(5, b"p") == b"\x05p"
    assert encode_http_datagram(0x41, b"p") == b"\x40\x41p"
    with pytest.raises(ProtoError):
        encode_http_datagram(MAX_VARINT + 1, b"p")


@given(st.integers(min_value=0, max_value=MAX_VARINT), st.binary(max_size=64))
def test_round_trip(context_id: int, payload: bytes) -> None:
    assert decode_http_datagram(encode_http_datagram(context_id, payload)) == (
        context_id,
        payload,
    )


@given(st.binary(max_size=32))
def test_arbitrary_bytes_only_raise_decode_error(payload: bytes) -> None:
    try:
        context_id, rest = decode_http_datagram(payload)
    except DecodeError:
        return
    assert 0 <= context_id <= MAX_VARINT
    assert payload.endswith(rest)
    packet = decode_ip_datagram(payload)
    assert packet == (rest if context_id == 0 else None)
