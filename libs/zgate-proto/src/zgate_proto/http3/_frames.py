"""HTTP/3 on the wire: frame, stream and setting codes, error codes, and the incremental
frame reader (RFC 9114 §6-8, RFC 9204 §4-6)."""

from __future__ import annotations

import enum
from typing import Final

from zgate_proto.varint import encode_varint

__all__ = [
    "BUFFERED_FRAMES",
    "CRITICAL_STREAMS",
    "DATA",
    "MAX_FRAME_SIZE",
    "ErrorCode",
    "FrameReader",
    "FrameType",
    "Headers",
    "ProtocolViolation",
    "Setting",
    "StreamType",
    "encode_frame",
    "parse_settings",
    "read_varint",
    "single_varint",
]

#: A header section: (name, value) pairs, names in lower case.
Headers = list[tuple[bytes, bytes]]


class FrameType(enum.IntEnum):
    """HTTP/3 frame types (RFC 9114 §7.2)."""

    DATA = 0x0
    HEADERS = 0x1
    CANCEL_PUSH = 0x3
    SETTINGS = 0x4
    PUSH_PROMISE = 0x5
    GOAWAY = 0x7
    MAX_PUSH_ID = 0xD


class StreamType(enum.IntEnum):
    """Unidirectional stream types (RFC 9114 §6.2, RFC 9204 §4.2)."""

    CONTROL = 0x00
    PUSH = 0x01
    QPACK_ENCODER = 0x02
    QPACK_DECODER = 0x03


class Setting(enum.IntEnum):
    """SETTINGS identifiers (RFC 9114 §7.2.4.1, RFC 9204 §5, RFC 9220 §3, RFC 9297 §2.1.1)."""

    QPACK_MAX_TABLE_CAPACITY = 0x01
    MAX_FIELD_SECTION_SIZE = 0x06
    QPACK_BLOCKED_STREAMS = 0x07
    ENABLE_CONNECT_PROTOCOL = 0x08
    H3_DATAGRAM = 0x33


class ErrorCode(enum.IntEnum):
    """HTTP/3 error codes (RFC 9114 §8.1, RFC 9204 §6, RFC 9297 §5.2)."""

    H3_DATAGRAM_ERROR = 0x33
    H3_NO_ERROR = 0x100
    H3_GENERAL_PROTOCOL_ERROR = 0x101
    H3_INTERNAL_ERROR = 0x102
    H3_STREAM_CREATION_ERROR = 0x103
    H3_CLOSED_CRITICAL_STREAM = 0x104
    H3_FRAME_UNEXPECTED = 0x105
    H3_FRAME_ERROR = 0x106
    H3_EXCESSIVE_LOAD = 0x107
    H3_ID_ERROR = 0x108
    H3_SETTINGS_ERROR = 0x109
    H3_MISSING_SETTINGS = 0x10A
    H3_REQUEST_REJECTED = 0x10B
    H3_REQUEST_CANCELLED = 0x10C
    H3_REQUEST_INCOMPLETE = 0x10D
    H3_MESSAGE_ERROR = 0x10E
    H3_CONNECT_ERROR = 0x10F
    H3_VERSION_FALLBACK = 0x110
    QPACK_DECOMPRESSION_FAILED = 0x200
    QPACK_ENCODER_STREAM_ERROR = 0x201
    QPACK_DECODER_STREAM_ERROR = 0x202


# Frame types of HTTP/2 that HTTP/3 reserves: receiving one is an error (RFC 9114 §7.2.8).
_HTTP2_FRAMES: Final = frozenset((0x2, 0x6, 0x8, 0x9))
# Setting identifiers of HTTP/2 that HTTP/3 reserves (RFC 9114 §7.2.4.1).
_HTTP2_SETTINGS: Final = frozenset((0x0, 0x2, 0x3, 0x4, 0x5))
# Frames buffered whole before they are handled; DATA is passed on as it arrives and any
# other type is skipped unread (RFC 9114 §9: unknown types are ignored).
BUFFERED_FRAMES: Final = frozenset(
    (
        FrameType.HEADERS,
        FrameType.CANCEL_PUSH,
        FrameType.SETTINGS,
        FrameType.PUSH_PROMISE,
        FrameType.GOAWAY,
        FrameType.MAX_PUSH_ID,
        *_HTTP2_FRAMES,
    )
)
#: FrameType.DATA as a plain int: the per-packet comparisons skip IntEnum's __eq__.
DATA: Final = 0

#: The largest HEADERS or control frame we buffer; a CONNECT-IP request is a few hundred
#: bytes, so anything near this is abuse (H3_EXCESSIVE_LOAD).
MAX_FRAME_SIZE: Final = 64 * 1024

CRITICAL_STREAMS: Final = {
    StreamType.CONTROL: "control",
    StreamType.QPACK_ENCODER: "QPACK encoder",
    StreamType.QPACK_DECODER: "QPACK decoder",
}


class ProtocolViolation(Exception):
    """A peer's protocol violation that ends the connection with ``code``."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def encode_frame(frame_type: int, payload: bytes) -> bytes:
    """One HTTP/3 frame: Type (i), Length (i), payload (RFC 9114 §7.1)."""
    return encode_varint(frame_type) + encode_varint(len(payload)) + payload


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, next position), or (-1, pos) when ``data`` ends inside the varint."""
    if pos >= len(data):
        return -1, pos
    first = data[pos]
    size = 1 << (first >> 6)
    if size == 1:
        return first, pos + 1
    end = pos + size
    if end > len(data):
        return -1, pos
    return int.from_bytes(data[pos:end], "big") & ((1 << (8 * size - 2)) - 1), end


class FrameReader:
    """Splits one stream's bytes into frames, incrementally.

    Returns (type, payload) pairs. DATA payload is handed on in pieces as it arrives (a
    DATA frame may be as long as the stream); the types in ``BUFFERED_FRAMES`` come whole, up to
    :data:`MAX_FRAME_SIZE`; any other type is skipped without being kept.
    """

    __slots__ = ("_left", "_passing", "_pending", "first_type")

    def __init__(self) -> None:
        #: The type of the stream's first frame, once its header arrived (-1 before).
        self.first_type = -1
        self._pending = b""  # an incomplete frame header or buffered frame
        self._left = 0  # bytes still to come of the current DATA or skipped frame
        self._passing = False  # those bytes are DATA payload (else: skipped)

    @property
    def at_boundary(self) -> bool:
        """No frame has been cut short (the stream may end here)."""
        return not self._pending and not self._left

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """The frames (or pieces of DATA payload) that ``data`` completes."""
        out: list[tuple[int, bytes]] = []
        if self._left:
            take = min(self._left, len(data))
            if self._passing:
                out.append((DATA, data[:take]))
            self._left -= take
            data = data[take:]
        if self._pending:
            data = self._pending + data
            self._pending = b""
        pos, end = 0, len(data)
        while pos < end:
            # The hot case, a DATA frame of 64..16383 bytes (one capsule with one packet),
            # is read inline; read_varint handles the rest.
            if data[pos] == DATA and pos + 2 < end and 0x40 <= data[pos + 1] < 0x80:
                frame_type, length = DATA, ((data[pos + 1] & 0x3F) << 8) | data[pos + 2]
                cursor = pos + 3
            else:
                frame_type, cursor = read_varint(data, pos)
                length = -1
                if frame_type >= 0:
                    length, cursor = read_varint(data, cursor)
                if length < 0:
                    self._pending = data[pos:]
                    break
            stop = cursor + length
            if self.first_type < 0:
                self.first_type = frame_type
            if frame_type == DATA or frame_type not in BUFFERED_FRAMES:
                passing = frame_type == DATA
                if passing and length and cursor < end:
                    out.append((DATA, data[cursor:stop]))
                if stop > end:
                    self._left, self._passing = stop - end, passing
                    break
            else:
                if length > MAX_FRAME_SIZE:
                    raise ProtocolViolation(
                        ErrorCode.H3_EXCESSIVE_LOAD, f"frame 0x{frame_type:x} of {length} bytes"
                    )
                if stop > end:
                    self._pending = data[pos:]
                    break
                out.append((frame_type, data[cursor:stop]))
            pos = stop
        return out


def parse_settings(payload: bytes) -> dict[int, int]:
    settings: dict[int, int] = {}
    pos = 0
    while pos < len(payload):
        identifier, pos = read_varint(payload, pos)
        value, pos = read_varint(payload, pos) if identifier >= 0 else (-1, pos)
        if value < 0:
            raise ProtocolViolation(ErrorCode.H3_FRAME_ERROR, "truncated SETTINGS frame")
        if identifier in _HTTP2_SETTINGS:
            raise ProtocolViolation(
                ErrorCode.H3_SETTINGS_ERROR, f"HTTP/2 setting 0x{identifier:x} in SETTINGS"
            )
        if identifier in settings:
            raise ProtocolViolation(
                ErrorCode.H3_SETTINGS_ERROR, f"setting 0x{identifier:x} sent twice"
            )
        settings[identifier] = value
    for flag in (Setting.ENABLE_CONNECT_PROTOCOL, Setting.H3_DATAGRAM):
        if settings.get(flag, 0) not in (0, 1):
            raise ProtocolViolation(ErrorCode.H3_SETTINGS_ERROR, f"{flag.name} must be 0 or 1")
    return settings


def single_varint(payload: bytes, what: str) -> int:
    value, pos = read_varint(payload, 0)
    if value < 0 or pos != len(payload):
        raise ProtocolViolation(ErrorCode.H3_FRAME_ERROR, f"malformed {what} frame")
    return value
