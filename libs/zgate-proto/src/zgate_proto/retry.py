"""Retry packets and address-validation tokens for a QUIC v1 server (sans-IO).

A server that answers an Initial commits CPU (a TLS handshake) and memory (a connection)
to an address nobody has checked. A Retry (RFC 9000 §8.1.2, §17.2.5) costs it neither: it
hands the client a token and waits for the token to come back, from the same address, in a
new Initial. Only that second Initial makes a connection.

The token carries no secret, only proof: the time it was minted and the client's original
destination connection ID in clear, and a MAC over them, the client's address (IP and port,
RFC 9000 §8.1.4) and the Retry's source connection ID (which the client then uses as its
destination: the new Initial's DCID). So a token is worth nothing from another address,
for another connection attempt, or after its short lifetime. Time is the caller's
monotonic clock: tokens never outlive the process that minted them (its key is random, or
derived from a key the caller keeps).

The Retry Integrity Tag is RFC 9001 §5.8's AES-128-GCM tag over the Retry pseudo-packet,
with the fixed version 1 key and nonce.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from zgate_proto.errors import DecodeError
from zgate_proto.quic_header import MAX_CID_LENGTH, QUIC_V1

__all__ = [
    "RETRY_INTEGRITY_TAG_SIZE",
    "TOKEN_LIFETIME",
    "RetryTokens",
    "TokenRefused",
    "ValidatedToken",
    "encode_retry",
    "retry_integrity_tag",
]

#: RFC 9001 §5.8: the Retry Integrity Tag's fixed AES-128-GCM key and nonce for QUIC v1.
_RETRY_KEY_V1: Final = bytes.fromhex("be0c690b9f66575a1d766b54e368c84e")
_RETRY_NONCE_V1: Final = bytes.fromhex("461599d35d632bf2239825bb")
_RETRY_AEAD: Final = AESGCM(_RETRY_KEY_V1)
#: Length of the Retry Integrity Tag (RFC 9000 §17.2.5).
RETRY_INTEGRITY_TAG_SIZE: Final = 16
#: Seconds a Retry token stays good: long enough for a round trip on any real path.
TOKEN_LIFETIME: Final = 10.0

_TOKEN_FORMAT: Final = 0x5A  # first byte of our tokens: tells ours from a NEW_TOKEN's
_MAC_SIZE: Final = 16
_HEAD: Final = struct.Struct("!BQB")  # format, minted (ms), original DCID length
_RETRY_FIRST_BYTE: Final = 0xF0  # long header, fixed bit, type Retry (RFC 9000 §17.2.5)

Address = tuple[Any, ...]


class TokenRefused(DecodeError):
    """A token that is not ours, altered, expired, or from another address. ``reason`` is
    one of ``malformed_token``, ``bad_token``, ``expired_token`` (metric labels)."""

    default_reason = "bad_token"


@dataclass(frozen=True, slots=True)
class ValidatedToken:
    """What a good token proves: the client's address answered our Retry, and the
    connection IDs the server must now echo in its transport parameters (RFC 9000 §7.3)."""

    original_destination_cid: bytes
    retry_source_cid: bytes


def _address_bytes(addr: Address) -> bytes:
    host = str(addr[0]).split("%", 1)[0]
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # one client, one token, whichever socket family saw it
    return ip.packed + int(addr[1]).to_bytes(2, "big")


class RetryTokens:
    """Mints and checks Retry tokens with one key (32 bytes or more)."""

    __slots__ = ("_key", "lifetime")

    def __init__(self, key: bytes, *, lifetime: float = TOKEN_LIFETIME) -> None:
        if len(key) < 32:
            raise ValueError("a Retry token key has at least 32 bytes")
        if lifetime <= 0:
            raise ValueError("a Retry token lifetime is positive")
        self._key = key
        self.lifetime = lifetime

    def _mac(self, head: bytes, addr: Address, retry_source_cid: bytes) -> bytes:
        message = b"".join((head, bytes((len(retry_source_cid),)), retry_source_cid))
        return hmac.digest(self._key, message + _address_bytes(addr), hashlib.sha256)[:_MAC_SIZE]

    def mint(
        self, addr: Address, original_destination_cid: bytes, retry_source_cid: bytes, now: float
    ) -> bytes:
        """A token for the client at ``addr`` whose first Initial went to
        ``original_destination_cid``, answered by a Retry from ``retry_source_cid``."""
        if len(original_destination_cid) > MAX_CID_LENGTH:
            raise ValueError("connection IDs are at most 20 bytes")
        head = _HEAD.pack(_TOKEN_FORMAT, int(now * 1000), len(original_destination_cid))
        head += original_destination_cid
        return head + self._mac(head, addr, retry_source_cid)

    def validate(
        self, token: bytes, addr: Address, destination_cid: bytes, now: float
    ) -> ValidatedToken:
        """Check the token of an Initial from ``addr`` sent to ``destination_cid`` (the
        Retry's source CID, if the token is good). Raises :class:`TokenRefused`."""
        if len(token) < _HEAD.size + _MAC_SIZE or token[0] != _TOKEN_FORMAT:
            raise TokenRefused("not a Retry token of ours", reason="malformed_token")
        _, minted_ms, odcid_length = _HEAD.unpack_from(token)
        end = _HEAD.size + odcid_length
        if odcid_length > MAX_CID_LENGTH or len(token) != end + _MAC_SIZE:
            raise TokenRefused("Retry token of the wrong length", reason="malformed_token")
        expected = self._mac(token[:end], addr, destination_cid)
        if not hmac.compare_digest(expected, token[end:]):
            raise TokenRefused("Retry token does not match", reason="bad_token")
        age = now - minted_ms / 1000
        if not -1.0 <= age <= self.lifetime:  # a second of slack for the ms rounding
            raise TokenRefused("Retry token expired", reason="expired_token")
        return ValidatedToken(token[_HEAD.size : end], destination_cid)


def retry_integrity_tag(retry_without_tag: bytes, original_destination_cid: bytes) -> bytes:
    """RFC 9001 §5.8: the tag over the Retry pseudo-packet (the client's original DCID,
    length-prefixed, then the Retry packet up to the tag)."""
    pseudo = bytes((len(original_destination_cid),)) + original_destination_cid + retry_without_tag
    return _RETRY_AEAD.encrypt(_RETRY_NONCE_V1, b"", pseudo)


def encode_retry(
    *,
    destination_cid: bytes,
    source_cid: bytes,
    original_destination_cid: bytes,
    token: bytes,
    unused_bits: int = 0,
) -> bytes:
    """A QUIC v1 Retry packet (RFC 9000 §17.2.5).

    ``destination_cid`` is the client's source CID, ``source_cid`` the CID the client must
    use next (and must differ from ``original_destination_cid``, RFC 9000 §17.2.5.1).
    ``unused_bits`` fills the four low bits of the first byte (random, in practice).
    """
    if len(destination_cid) > MAX_CID_LENGTH or len(source_cid) > MAX_CID_LENGTH:
        raise ValueError("connection IDs are at most 20 bytes")
    if source_cid == original_destination_cid:
        raise ValueError("the Retry's source CID must differ from the original DCID")
    if not token:
        raise ValueError("a Retry carries a token")
    packet = b"".join(
        (
            bytes((_RETRY_FIRST_BYTE | (unused_bits & 0x0F),)),
            QUIC_V1.to_bytes(4, "big"),
            bytes((len(destination_cid),)),
            destination_cid,
            bytes((len(source_cid),)),
            source_cid,
            token,
        )
    )
    return packet + retry_integrity_tag(packet, original_destination_cid)
