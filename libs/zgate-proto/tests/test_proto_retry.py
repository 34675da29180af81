"""Retry packets and address-validation tokens (zgate_proto.retry)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zgate_proto.quic_header import QUIC_V1, LongPacketType, initial_token, parse_header
from zgate_proto.retry import (
    RETRY_INTEGRITY_TAG_SIZE,
    RetryTokens,
    TokenRefused,
    encode_retry,
    retry_integrity_tag,
)
from zgate_proto.varint import encode_varint

KEY = bytes(range(32))
CLIENT = ("198.51.100.7", 40000)
ODCID = bytes.fromhex("8394c8f03e515708")  # RFC 9001 Appendix A's client DCID
RSCID = bytes.fromhex("f067a5502a4262b5")


def test_the_rfc_9001_appendix_a4_retry_is_reproduced_byte_for_byte() -> None:
    expected = bytes.fromhex(
        "ff000000010008f067a5502a4262b5746f6b656e04a265ba2eff4d829058fb3f0f2496ba"
    )
    packet = encode_retry(
        destination_cid=b"",
        source_cid=RSCID,
        original_destination_cid=ODCID,
        token=b"token",
        unused_bits=0x0F,
    )
    assert packet == expected


def test_the_tag_depends_on_the_original_destination_cid() -> None:
    body = bytes.fromhex("ff000000010008f067a5502a4262b5746f6b656e")
    assert len(retry_integrity_tag(body, ODCID)) == RETRY_INTEGRITY_TAG_SIZE
    assert retry_integrity_tag(body, ODCID) != retry_integrity_tag(body, bytes(8))


def test_a_retry_parses_as_a_version_1_retry_with_our_source_cid() -> None:
    packet = encode_retry(
        destination_cid=b"\x01\x02\x03\x04",
        source_cid=RSCID,
        original_destination_cid=ODCID,
        token=b"t" * 30,
    )
    header = parse_header(packet, 8)
    assert header.version == QUIC_V1
    assert header.packet_type is LongPacketType.RETRY
    assert header.destination_cid == b"\x01\x02\x03\x04"
    assert header.source_cid == RSCID


def test_a_retry_is_refused_with_the_original_cid_as_source() -> None:
    with pytest.raises(ValueError):
        encode_retry(
            destination_cid=b"", source_cid=ODCID, original_destination_cid=ODCID, token=b"x"
        )


def test_a_token_comes_back_good_from_the_same_address_in_time() -> None:
    tokens = RetryTokens(KEY)
    token = tokens.mint(CLIENT, ODCID, RSCID, now=100.0)
    valid = tokens.validate(token, CLIENT, RSCID, now=109.0)
    assert valid.original_destination_cid == ODCID
    assert valid.retry_source_cid == RSCID


@pytest.mark.parametrize(
    ("addr", "dcid", "now", "reason"),
    [
        (("198.51.100.8", 40000), RSCID, 101.0, "bad_token"),  # another IP
        (("198.51.100.7", 40001), RSCID, 101.0, "bad_token"),  # another port
        (CLIENT, bytes(8), 101.0, "bad_token"),  # not sent to the Retry's CID
        (CLIENT, RSCID, 110.5, "expired_token"),  # past the lifetime
    ],
)
def test_a_token_is_refused_elsewhere_or_later(
    addr: tuple[str, int], dcid: bytes, now: float, reason: str
) -> None:
    tokens = RetryTokens(KEY)
    token = tokens.mint(CLIENT, ODCID, RSCID, now=100.0)
    with pytest.raises(TokenRefused) as info:
        tokens.validate(token, addr, dcid, now)
    assert info.value.reason == reason


def test_a_token_of_another_key_or_altered_is_refused() -> None:
    token = RetryTokens(KEY).mint(CLIENT, ODCID, RSCID, now=100.0)
    with pytest.raises(TokenRefused):
        RetryTokens(bytes(32)).validate(token, CLIENT, RSCID, 100.0)
    altered = token[:9] + bytes([token[9] ^ 1]) + token[10:]  # the original DCID
    with pytest.raises(TokenRefused):
        RetryTokens(KEY).validate(altered, CLIENT, RSCID, 100.0)


def test_an_ipv4_mapped_address_is_the_same_client() -> None:
    tokens = RetryTokens(KEY)
    token = tokens.mint(("::ffff:198.51.100.7", 40000, 0, 0), ODCID, RSCID, 1.0)
    assert tokens.validate(token, CLIENT, RSCID, 1.0).original_destination_cid == ODCID


@given(st.binary(max_size=80))
def test_any_bytes_as_a_token_raise_only_token_refused(token: bytes) -> None:
    with pytest.raises(TokenRefused):
        RetryTokens(KEY).validate(token, CLIENT, RSCID, 1.0)


def test_an_initials_token_field_is_read() -> None:
    head = bytes((0xC0,)) + QUIC_V1.to_bytes(4, "big") + b"\x08" + ODCID + b"\x00"
    data = head + encode_varint(5) + b"token" + bytes(1200)
    assert initial_token(data, parse_header(data, 8)) == b"token"
    cut = head + encode_varint(500) + b"token"
    with pytest.raises(Exception) as info:
        initial_token(cut, parse_header(cut, 8))
    assert type(info.value).__name__ == "DecodeError"
