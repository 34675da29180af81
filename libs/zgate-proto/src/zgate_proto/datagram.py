"""HTTP Datagram payloads of CONNECT-IP (RFC 9297 §2, RFC 9484 §5-6).

An IP proxying HTTP Datagram payload is ``Context ID (i)`` followed by the payload; context
ID 0 carries one full IP packet. These functions handle the payload only: the Quarter
Stream ID of a QUIC DATAGRAM frame belongs to the HTTP/3 layer.
"""

from __future__ import annotations

from zgate_proto.errors import DecodeError, H3ErrorCode
from zgate_proto.varint import decode_varint, encode_varint

__all__ = [
    "CONTEXT_ID_IP",
    "decode_http_datagram",
    "decode_ip_datagram",
    "encode_http_datagram",
    "encode_ip_datagram",
]

CONTEXT_ID_IP = 0
"""Context ID reserved for full IP packets (RFC 9484 §5)."""

_IP_PREFIX = b"\x00"


def encode_ip_datagram(packet: bytes) -> bytes:
    """HTTP Datagram payload carrying ``packet`` under context ID 0."""
    return _IP_PREFIX + packet


def encode_http_datagram(context_id: int, payload: bytes) -> bytes:
    """HTTP Datagram payload for any context ID. Raises ProtoError if it is out of range."""
    if context_id == CONTEXT_ID_IP:
        return _IP_PREFIX + payload
    return encode_varint(context_id) + payload


def decode_http_datagram(payload: bytes) -> tuple[int, bytes]:
    """Split an HTTP Datagram payload into (context ID, rest).

    Raises DecodeError (H3_DATAGRAM_ERROR) when the context ID is missing or truncated.
    """
    if payload and payload[0] == CONTEXT_ID_IP:
        return CONTEXT_ID_IP, payload[1:]
    try:
        context_id, offset = decode_varint(payload)
    except DecodeError:
        raise DecodeError(
            "HTTP datagram without a complete context ID",
            code=H3ErrorCode.H3_DATAGRAM_ERROR,
            reason="bad_context_id",
        ) from None
    return context_id, payload[offset:]


def decode_ip_datagram(payload: bytes) -> bytes | None:
    """The IP packet in an HTTP Datagram payload, or None for any other context ID.

    RFC 9484 §6 says datagrams with an unknown context ID are dropped silently (or
    buffered), so None is not an error. Raises DecodeError if the context ID is malformed.
    """
    if payload and payload[0] == CONTEXT_ID_IP:
        return payload[1:]
    context_id, packet = decode_http_datagram(payload)
    # A non-minimal encoding of 0 (e.g. 0x40 0x00) is still context ID 0.
    return packet if context_id == CONTEXT_ID_IP else None
