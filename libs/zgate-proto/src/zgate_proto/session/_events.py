"""The session layer's vocabulary: packet modes, drop reasons, the local error and the
frozen, past-tense events both sides return (see :mod:`zgate_proto.session`)."""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import Final

from zgate_proto.capsules import AddressRequest, IPAddressRange
from zgate_proto.errors import ProtoError
from zgate_proto.http3 import Headers

__all__ = [
    "DATAGRAM_OVERHEAD",
    "MODE_HEADER",
    "AddressRequested",
    "AddressesAssigned",
    "ClientEvent",
    "ConnectionClosed",
    "DropReason",
    "Network",
    "PacketDropped",
    "PacketMode",
    "PacketReceived",
    "RequestFailed",
    "RequestReceived",
    "RequestRejected",
    "ResponseReceived",
    "RoutesAdvertised",
    "ServerEvent",
    "SessionAccepted",
    "SessionClosed",
    "SessionError",
    "SessionEvent",
    "SessionRefused",
    "SessionRequested",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Bytes a QUIC 1-RTT packet carrying one DATAGRAM frame adds around the frame's data, at
#: worst: short header (1) + connection ID (up to 20) + packet number (up to 4) + AEAD tag
#: (16) + frame type (1) + length varint (2). Engines account for it in
#: ``QuicConn.max_datagram_payload``; kept for callers that size packets ahead of a path.
DATAGRAM_OVERHEAD: Final = 44

#: Request header by which a zgate agent tells the relay how it wants packets sent back,
#: echoed in the response with the mode chosen. Peers that do not send it get datagrams
#: when they support them (RFC 9484's default).
MODE_HEADER: Final = b"zgate-packet-mode"


class PacketMode(enum.StrEnum):
    """How IP packets travel on a CONNECT-IP stream (both are RFC 9484 / RFC 9297)."""

    DATAGRAM = "datagram"
    """QUIC DATAGRAM frames, context ID 0: unreliable, no head-of-line blocking."""
    STREAM = "stream"
    """DATAGRAM capsules (type 0x00) on the CONNECT stream: reliable and ordered."""


class DropReason(enum.StrEnum):
    """Why an arriving packet was dropped (fixed values, fit for a metrics label)."""

    UNKNOWN_CONTEXT = "unknown_context"
    """An HTTP datagram with a context ID other than 0 (RFC 9484 §6: drop silently)."""
    UNKNOWN_STREAM = "unknown_stream"
    """A DATAGRAM frame for a stream that carries no session (any more)."""
    MALFORMED_DATAGRAM = "malformed_datagram"
    """A DATAGRAM frame or capsule without a complete quarter stream ID or context ID.
    RFC 9297 §2.1 makes a short frame a connection error; one garbled frame is dropped
    here instead, so that it cannot end every other session on the connection."""


class SessionError(ProtoError):
    """The caller used a session in a way its state does not allow (a local error: what
    the peer does never raises, it becomes an event)."""

    default_reason = "session_state"


# ---------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """Base of the session events, either side's."""


@dataclass(frozen=True, slots=True)
class SessionRequested(SessionEvent):
    """Server: a valid CONNECT-IP request arrived; answer it with accept() or reject().

    ``mode`` is what the client asked for with :data:`MODE_HEADER`, STREAM when the client
    cannot receive HTTP datagrams, else DATAGRAM.
    """

    stream_id: int
    headers: Headers
    mode: PacketMode


@dataclass(frozen=True, slots=True)
class RequestRejected(SessionEvent):
    """Server: a malformed or unsupported request, already answered with ``status``.

    ``reason`` is a fixed identifier (``RequestError.reason``, e.g. "malformed_request",
    "bad_method", "not_found"); ``detail`` says what was wrong.
    """

    stream_id: int
    status: int
    reason: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class RequestReceived(SessionEvent):
    """Server (made with ``requests=True``): a complete request other than CONNECT arrived
    (its stream ended); answer it with ``respond()``. ``method`` and ``path`` are the
    pseudo-header fields as sent (the path with its query); ``body`` is what DATA carried."""

    stream_id: int
    method: str
    path: str
    headers: Headers
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class ResponseReceived(SessionEvent):
    """Client: the complete final response to a ``request()`` arrived (its stream ended)."""

    stream_id: int
    status: int
    headers: Headers
    body: bytes


@dataclass(frozen=True, slots=True)
class RequestFailed(SessionEvent):
    """Client: a ``request()`` ends without a response: the relay reset or refused its
    stream, sent a malformed or oversized response, or the connection ended."""

    stream_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class SessionAccepted(SessionEvent):
    """Client: the relay answered 2xx; ``mode`` is the one packets now travel in."""

    mode: PacketMode
    headers: Headers


@dataclass(frozen=True, slots=True)
class SessionRefused(SessionEvent):
    """Client: no session: no extended CONNECT, no datagrams while fallback is off, or a
    response that refuses (``status`` is the status received, 0 when there was none)."""

    reason: str
    status: int = 0


@dataclass(frozen=True, slots=True)
class AddressesAssigned(SessionEvent):
    """Client: ADDRESS_ASSIGN arrived; ``addresses`` is the full current list."""

    addresses: tuple[Network, ...]


@dataclass(frozen=True, slots=True)
class AddressRequested(SessionEvent):
    """Server: the client sent ADDRESS_REQUEST."""

    stream_id: int
    request: AddressRequest


@dataclass(frozen=True, slots=True)
class RoutesAdvertised(SessionEvent):
    """The peer sent ROUTE_ADVERTISEMENT (server side: a connector's prefixes; client side:
    what the relay lets us reach). ``ranges`` is the full current list."""

    stream_id: int
    ranges: tuple[IPAddressRange, ...]


@dataclass(frozen=True, slots=True)
class PacketReceived(SessionEvent):
    """An IP packet arrived on the session of ``stream_id`` (client side: its one
    CONNECT stream), as an HTTP datagram or a DATAGRAM capsule."""

    stream_id: int
    packet: bytes


@dataclass(frozen=True, slots=True)
class PacketDropped(SessionEvent):
    """An arriving packet was dropped (``reason``: a :class:`DropReason`). ``stream_id``
    is -1 when the frame was too short to name one."""

    stream_id: int
    reason: DropReason


@dataclass(frozen=True, slots=True)
class SessionClosed(SessionEvent):
    """A session ended by the peer's doing: it ended or reset the stream, stopped reading
    it, sent a malformed capsule (then we reset the stream with H3_MESSAGE_ERROR), or the
    connection ended. ``error``: the end was abnormal (a protocol error, an error code
    other than H3_NO_ERROR)."""

    stream_id: int
    reason: str
    error: bool


@dataclass(frozen=True, slots=True)
class ConnectionClosed(SessionEvent):
    """The QUIC connection terminated; a :class:`SessionClosed` for each open session came
    first and nothing follows."""

    error_code: int
    reason: str
    by_peer: bool
    handshake_done: bool = False


ServerEvent = (
    SessionRequested
    | RequestReceived
    | RequestRejected
    | PacketReceived
    | PacketDropped
    | AddressRequested
    | RoutesAdvertised
    | SessionClosed
    | ConnectionClosed
)
ClientEvent = (
    SessionAccepted
    | SessionRefused
    | AddressesAssigned
    | RoutesAdvertised
    | PacketReceived
    | PacketDropped
    | SessionClosed
    | ResponseReceived
    | RequestFailed
    | ConnectionClosed
)
