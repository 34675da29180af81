"""The one exception hierarchy of zgate-proto, and the HTTP/3 error codes it carries.

Every parser in this package raises only these. Each error has a ``code`` (the HTTP/3
error code to reset the stream or close the connection with, where the wire has one) and a
``reason``: a short, fixed identifier that is safe to use as a metrics label.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "CapsuleTooLarge",
    "DecodeError",
    "H3ErrorCode",
    "PacketError",
    "ProtoError",
    "RequestError",
]


class H3ErrorCode(IntEnum):
    """HTTP/3 error codes used by this package (RFC 9114 §8.1, RFC 9297 §5.2)."""

    H3_DATAGRAM_ERROR = 0x33
    """Datagram or capsule protocol parse error (RFC 9297 §2.1, §5.2)."""
    H3_NO_ERROR = 0x100
    H3_GENERAL_PROTOCOL_ERROR = 0x101
    H3_INTERNAL_ERROR = 0x102
    H3_EXCESSIVE_LOAD = 0x107
    H3_REQUEST_REJECTED = 0x10B
    H3_REQUEST_CANCELLED = 0x10C
    H3_MESSAGE_ERROR = 0x10E
    """Malformed request or response (RFC 9114 §4.1.2); RFC 9297 §3.3 maps capsule
    protocol errors to this handling."""
    H3_CONNECT_ERROR = 0x10F


class ProtoError(Exception):
    """Base of every error raised by zgate-proto.

    ``code`` is the HTTP/3 error code to use on the wire, or None where there is none.
    ``reason`` is a short fixed identifier (bounded set, fit for a metrics label).
    """

    default_code: int | None = None
    default_reason: str = "protocol_error"

    def __init__(self, message: str = "", *, code: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.code: int | None = self.default_code if code is None else code
        self.reason: str = reason or self.default_reason


class DecodeError(ProtoError):
    """Malformed bytes from the peer (varint, capsule, HTTP datagram, packet).

    Capsule errors are malformed-message errors (RFC 9297 §3.3 -> RFC 9114 §4.1.2), so the
    default code is H3_MESSAGE_ERROR; HTTP datagram errors use H3_DATAGRAM_ERROR.
    """

    default_code: int | None = H3ErrorCode.H3_MESSAGE_ERROR
    default_reason = "malformed"


class CapsuleTooLarge(DecodeError):
    """A known capsule declared a length above the decoder's limit."""

    default_reason = "capsule_too_large"


class PacketError(DecodeError):
    """A malformed IP packet.

    Not a protocol violation (RFC 9484 §7.2): drop the packet and count it by ``reason``,
    so there is no HTTP/3 code.
    """

    default_code = None
    default_reason = "bad_packet"


class RequestError(ProtoError):
    """A CONNECT-IP request or response that cannot be accepted.

    ``status`` is the HTTP status to answer with (server side) or the status the peer sent
    (client side; 0 when the response carried no valid status).
    """

    default_reason = "bad_request"

    def __init__(
        self, message: str, *, status: int, code: int | None = None, reason: str = ""
    ) -> None:
        super().__init__(message, code=code, reason=reason)
        self.status: int = status
