"""What both sides of a CONNECT-IP session do alike, as functions: HTTP datagram framing,
reading the mode header and capsules, the events that end a session, and writing to streams
the engine may already have ended (the methods both share are in ``_endpoint``)."""

from __future__ import annotations

import contextlib
from typing import Final

from zgate_proto.capsules import Capsule, CapsuleDecoder, DatagramCapsule
from zgate_proto.datagram import CONTEXT_ID_IP, decode_ip_datagram
from zgate_proto.engines.base import ConnectionTerminated
from zgate_proto.errors import DecodeError
from zgate_proto.http3 import ErrorCode, Headers
from zgate_proto.session._events import (
    MODE_HEADER,
    ConnectionClosed,
    DropReason,
    PacketDropped,
    PacketMode,
    PacketReceived,
    SessionClosed,
)
from zgate_proto.varint import decode_varint, encode_varint

__all__ = [
    "MAX_IP_PACKET",
    "NO_ERRORS",
    "STREAM_GONE",
    "capsule_packet",
    "connection_closed",
    "datagram_prefix",
    "decode_capsules",
    "mode_header",
    "quietly",
    "reset_closed",
    "split_datagram",
    "stop_closed",
]

#: The largest IP packet a DATAGRAM capsule carries here (IPv4's and plain IPv6's limit).
MAX_IP_PACKET: Final = 65535

#: Codes that end a stream or connection normally (QUIC's and HTTP/3's NO_ERROR).
NO_ERRORS: Final = frozenset((0, ErrorCode.H3_NO_ERROR))

#: What engines raise for a stream that can no longer take a write, reset or stop: the
#: peer's STOP_SENDING resets our side inside the engine before its event reaches us, so a
#: session may meet such a stream through no fault of its own (the qh3 adapter raises
#: ValueError, aioquic's own RuntimeError passes through its adapter).
STREAM_GONE: Final = (ValueError, RuntimeError)


def quietly() -> contextlib.suppress:
    """For writes that end or answer a stream: one the engine already ended needs none."""
    return contextlib.suppress(*STREAM_GONE)


def datagram_prefix(stream_id: int) -> bytes:
    """Quarter stream ID and context ID 0: the fixed head of each of a session's datagrams."""
    return encode_varint(stream_id >> 2) + encode_varint(CONTEXT_ID_IP)


def split_datagram(data: bytes) -> tuple[int, bytes | DropReason]:
    """(stream ID, packet) of a DATAGRAM frame; the packet is a DropReason instead when the
    frame cannot be read or carries another context. The stream ID is -1 when unreadable."""
    try:
        quarter, pos = decode_varint(data)
    except DecodeError:
        return -1, DropReason.MALFORMED_DATAGRAM
    try:
        packet = decode_ip_datagram(data[pos:])
    except DecodeError:
        return quarter << 2, DropReason.MALFORMED_DATAGRAM
    return quarter << 2, DropReason.UNKNOWN_CONTEXT if packet is None else packet


def capsule_packet(stream_id: int, capsule: DatagramCapsule) -> PacketReceived | PacketDropped:
    """The event for one DATAGRAM capsule: its IP packet, or why it was dropped."""
    try:
        packet = decode_ip_datagram(capsule.payload)
    except DecodeError:
        return PacketDropped(stream_id, DropReason.MALFORMED_DATAGRAM)
    if packet is None:
        return PacketDropped(stream_id, DropReason.UNKNOWN_CONTEXT)
    return PacketReceived(stream_id, packet)


def mode_header(headers: Headers) -> PacketMode | None:
    """The mode named by MODE_HEADER; None when absent or not one we know."""
    for name, value in headers:
        if name == MODE_HEADER:
            try:
                return PacketMode(value.decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                return None
    return None


def decode_capsules(decoder: CapsuleDecoder, data: bytes, ended: bool) -> list[Capsule]:
    """The capsules ``data`` completes; DecodeError for a malformed one, or for a capsule
    cut short by the stream's FIN (``ended``, RFC 9297 section 3.3)."""
    capsules = decoder.feed(data) if data else []
    if ended:
        decoder.eof()
    return capsules


def reset_closed(stream_id: int, who: str, code: int) -> SessionClosed:
    """The session's end by a RESET_STREAM from ``who``."""
    return SessionClosed(
        stream_id, f"{who} reset the stream (error 0x{code:x})", code not in NO_ERRORS
    )


def stop_closed(stream_id: int, who: str, code: int) -> SessionClosed:
    """The session's end by a STOP_SENDING from ``who``."""
    return SessionClosed(
        stream_id, f"{who} stopped reading the stream (error 0x{code:x})", code not in NO_ERRORS
    )


def connection_closed(event: ConnectionTerminated) -> ConnectionClosed:
    """The engine's ConnectionTerminated, as a session event."""
    return ConnectionClosed(event.error_code, event.reason, event.by_peer, event.handshake_done)
