"""A minimal HTTP/3 (RFC 9114) endpoint over one :class:`~zgate_proto.engines.base.QuicConn`.

Just what CONNECT-IP needs: request streams carrying HEADERS and DATA frames, the control
stream with SETTINGS, and QPACK (RFC 9204) through ``pylsqpack``. No server push, no
priorities. Sans-IO and engine-independent: it only calls the ``QuicConn`` interface and
is fed the engine's zgate events through :meth:`H3Connection.handle_event`.

We advertise a QPACK dynamic table of capacity 0, so peers encode our headers with the
static table and literals only, and we never use the dynamic table when encoding either:
headers are sent once per session, far off the hot path, and no stream can ever block.

A peer that breaks the protocol gets the connection closed with the HTTP/3 error code of
RFC 9114 §8.1 (or RFC 9204 §6 for QPACK); after that every event is ignored.

HTTP datagrams do not pass through here: the session layer frames them itself
(:mod:`zgate_proto.session`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

import pylsqpack

from zgate_proto.engines.base import (
    QuicConn,
    QuicEvent,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)
from zgate_proto.errors import ProtoError
from zgate_proto.varint import encode_varint

__all__ = [
    "DataReceived",
    "ErrorCode",
    "FrameType",
    "H3Connection",
    "H3Event",
    "Headers",
    "HeadersReceived",
    "SendingStopped",
    "Setting",
    "SettingsReceived",
    "StreamEvent",
    "StreamType",
    "StreamWasReset",
    "encode_frame",
]

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
_BUFFERED: Final = frozenset(
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
#: The largest HEADERS or control frame we buffer; a CONNECT-IP request is a few hundred
#: bytes, so anything near this is abuse (H3_EXCESSIVE_LOAD).
MAX_FRAME_SIZE: Final = 64 * 1024

_CRITICAL_NAMES: Final = {
    StreamType.CONTROL: "control",
    StreamType.QPACK_ENCODER: "QPACK encoder",
    StreamType.QPACK_DECODER: "QPACK decoder",
}


# ---------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class H3Event:
    """Base of the events :meth:`H3Connection.handle_event` returns."""


@dataclass(frozen=True, slots=True)
class SettingsReceived(H3Event):
    """The peer's SETTINGS frame arrived (once per connection)."""

    settings: dict[int, int]


@dataclass(frozen=True, slots=True)
class StreamEvent(H3Event):
    """Base of the events about one request stream."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class HeadersReceived(StreamEvent):
    """A HEADERS frame arrived on a request stream (``stream_ended``: FIN came with it)."""

    headers: Headers
    stream_ended: bool


@dataclass(frozen=True, slots=True)
class DataReceived(StreamEvent):
    """Payload of DATA frames arrived on a request stream; ``data`` may be empty when only
    the FIN arrived (``stream_ended``)."""

    data: bytes
    stream_ended: bool


@dataclass(frozen=True, slots=True)
class StreamWasReset(StreamEvent):
    """The peer reset a request stream (RESET_STREAM): nothing more arrives on it."""

    error_code: int


@dataclass(frozen=True, slots=True)
class SendingStopped(StreamEvent):
    """The peer asked us to stop sending on a request stream (STOP_SENDING)."""

    error_code: int


# ----------------------------------------------------------------------- frame codec


class _ConnectionError(Exception):
    """A peer's protocol violation that ends the connection with ``code``."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def encode_frame(frame_type: int, payload: bytes) -> bytes:
    """One HTTP/3 frame: Type (i), Length (i), payload (RFC 9114 §7.1)."""
    return encode_varint(frame_type) + encode_varint(len(payload)) + payload


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
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


class _FrameReader:
    """Splits one stream's bytes into frames, incrementally.

    Returns (type, payload) pairs. DATA payload is handed on in pieces as it arrives (a
    DATA frame may be as long as the stream); the types in ``_BUFFERED`` come whole, up to
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
        out: list[tuple[int, bytes]] = []
        if self._left:
            take = min(self._left, len(data))
            if self._passing:
                out.append((FrameType.DATA, data[:take]))
            self._left -= take
            data = data[take:]
        if self._pending:
            data = self._pending + data
            self._pending = b""
        pos, end = 0, len(data)
        while pos < end:
            frame_type, cursor = _read_varint(data, pos)
            if frame_type >= 0:
                length, cursor = _read_varint(data, cursor)
            if frame_type < 0 or length < 0:
                self._pending = data[pos:]
                break
            stop = cursor + length
            if self.first_type < 0:
                self.first_type = frame_type
            if frame_type == FrameType.DATA or frame_type not in _BUFFERED:
                passing = frame_type == FrameType.DATA
                if passing and length and cursor < end:
                    out.append((FrameType.DATA, data[cursor:stop]))
                if stop > end:
                    self._left, self._passing = stop - end, passing
                    break
            else:
                if length > MAX_FRAME_SIZE:
                    raise _ConnectionError(
                        ErrorCode.H3_EXCESSIVE_LOAD, f"frame 0x{frame_type:x} of {length} bytes"
                    )
                if stop > end:
                    self._pending = data[pos:]
                    break
                out.append((frame_type, data[cursor:stop]))
            pos = stop
        return out


def _parse_settings(payload: bytes) -> dict[int, int]:
    settings: dict[int, int] = {}
    pos = 0
    while pos < len(payload):
        identifier, pos = _read_varint(payload, pos)
        value, pos = _read_varint(payload, pos) if identifier >= 0 else (-1, pos)
        if value < 0:
            raise _ConnectionError(ErrorCode.H3_FRAME_ERROR, "truncated SETTINGS frame")
        if identifier in _HTTP2_SETTINGS:
            raise _ConnectionError(
                ErrorCode.H3_SETTINGS_ERROR, f"HTTP/2 setting 0x{identifier:x} in SETTINGS"
            )
        if identifier in settings:
            raise _ConnectionError(
                ErrorCode.H3_SETTINGS_ERROR, f"setting 0x{identifier:x} sent twice"
            )
        settings[identifier] = value
    for flag in (Setting.ENABLE_CONNECT_PROTOCOL, Setting.H3_DATAGRAM):
        if settings.get(flag, 0) not in (0, 1):
            raise _ConnectionError(ErrorCode.H3_SETTINGS_ERROR, f"{flag.name} must be 0 or 1")
    return settings


def _single_varint(payload: bytes, what: str) -> int:
    value, pos = _read_varint(payload, 0)
    if value < 0 or pos != len(payload):
        raise _ConnectionError(ErrorCode.H3_FRAME_ERROR, f"malformed {what} frame")
    return value


# ------------------------------------------------------------------- stream states


class _Phase(enum.Enum):
    """Where a request stream is in RFC 9114 §4.1's frame sequence."""

    HEADERS = "headers"  # waiting for the (final) header section
    BODY = "body"  # DATA, or a trailer section
    TRAILED = "trailed"  # after trailers: nothing but unknown frames


class _RequestStream:
    __slots__ = ("phase", "reader")

    def __init__(self) -> None:
        self.reader = _FrameReader()
        self.phase = _Phase.HEADERS


class _PeerUniStream:
    __slots__ = ("ignored", "kind", "pending", "reader")

    def __init__(self) -> None:
        self.kind: int | None = None
        self.pending = b""  # the stream type varint, while incomplete
        self.reader = _FrameReader()
        self.ignored = False


# ---------------------------------------------------------------------- connection


class H3Connection:
    """HTTP/3 on one QUIC connection, either side (sans-IO).

    Opens our control stream (SETTINGS: QPACK table capacity 0, extended CONNECT, HTTP
    datagrams) and QPACK encoder/decoder streams as soon as it is made; the caller then
    feeds every stream event of the QUIC connection to :meth:`handle_event`.

    ``datagrams=False`` leaves SETTINGS_H3_DATAGRAM out: RFC 9297 §2.1.1 forbids offering it
    on a connection whose QUIC layer does not accept DATAGRAM frames.
    """

    def __init__(self, quic: QuicConn, *, is_client: bool, datagrams: bool = True) -> None:
        self._quic = quic
        self._is_client = is_client
        self._closed = False
        self._requests: dict[int, _RequestStream] = {}
        self._uni: dict[int, _PeerUniStream] = {}
        self._critical: dict[int, int] = {}  # peer's critical stream type -> stream ID
        self._goaway: int | None = None
        #: The peer's SETTINGS, once they arrived.
        self.peer_settings: dict[int, int] | None = None
        self._decoder = pylsqpack.Decoder(0, 0)
        self._encoder = pylsqpack.Encoder()
        self._encoder.apply_settings(0, 0)  # static table and literals only
        self.local_settings: dict[int, int] = {
            Setting.QPACK_MAX_TABLE_CAPACITY: 0,
            Setting.QPACK_BLOCKED_STREAMS: 0,
            Setting.ENABLE_CONNECT_PROTOCOL: 1,
        }
        if datagrams:
            self.local_settings[Setting.H3_DATAGRAM] = 1
        payload = b"".join(
            encode_varint(k) + encode_varint(v) for k, v in self.local_settings.items()
        )
        self._control_id = self._open_uni(
            encode_varint(StreamType.CONTROL) + encode_frame(FrameType.SETTINGS, payload)
        )
        self._encoder_id = self._open_uni(encode_varint(StreamType.QPACK_ENCODER))
        self._decoder_id = self._open_uni(encode_varint(StreamType.QPACK_DECODER))
        self._own_critical = frozenset((self._control_id, self._encoder_id, self._decoder_id))

    def _open_uni(self, data: bytes) -> int:
        stream_id = self._quic.next_stream_id(unidirectional=True)
        self._quic.send_stream(stream_id, data)
        return stream_id

    # ------------------------------------------------------------------ properties

    @property
    def quic(self) -> QuicConn:
        """The QUIC connection underneath."""
        return self._quic

    @property
    def closed(self) -> bool:
        """We closed the connection for a protocol error (or the caller may stop feeding)."""
        return self._closed

    @property
    def peer_goaway(self) -> int | None:
        """The stream (client) or push ID (server) limit of the peer's last GOAWAY."""
        return self._goaway

    def peer_supports_extended_connect(self) -> bool:
        """The peer sent SETTINGS_ENABLE_CONNECT_PROTOCOL = 1 (RFC 9220 §3)."""
        settings = self.peer_settings
        return settings is not None and settings.get(Setting.ENABLE_CONNECT_PROTOCOL) == 1

    def peer_supports_datagrams(self) -> bool:
        """HTTP datagrams may be sent: SETTINGS_H3_DATAGRAM = 1 and a non-zero
        max_datagram_frame_size transport parameter (RFC 9297 §2.1.1)."""
        settings = self.peer_settings
        return (
            settings is not None
            and settings.get(Setting.H3_DATAGRAM) == 1
            and self._quic.peer_max_datagram_frame_size > 0
        )

    # --------------------------------------------------------------------- sending

    def send_headers(self, stream_id: int, headers: Headers, end_stream: bool = False) -> None:
        """Send a header section (request, response or trailers) on a request stream."""
        self._check_request_stream(stream_id)
        encoder_data, block = self._encoder.encode(stream_id, headers)
        if encoder_data:  # never with a zero-capacity table; kept correct regardless
            self._quic.send_stream(self._encoder_id, encoder_data)
        self._quic.send_stream(stream_id, encode_frame(FrameType.HEADERS, block), end_stream)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Send ``data`` in one DATA frame (none when empty: then only the FIN, if asked)."""
        if data:
            frame = encode_varint(FrameType.DATA) + encode_varint(len(data)) + data
            self._quic.send_stream(stream_id, frame, end_stream)
        elif end_stream:
            self._quic.send_stream(stream_id, b"", True)

    def _check_request_stream(self, stream_id: int) -> None:
        if stream_id & 0x2:
            raise ProtoError(f"stream {stream_id} is unidirectional, not a request stream")

    # ------------------------------------------------------------------- receiving

    def handle_event(self, event: QuicEvent) -> list[H3Event]:
        """HTTP/3 events for one QUIC event; only stream events produce any."""
        if self._closed:
            return []
        try:
            if isinstance(event, StreamDataReceived):
                stream_id = event.stream_id
                if stream_id & 0x2:
                    return self._uni_data(stream_id, event.data, event.end_stream)
                return self._request_data(stream_id, event.data, event.end_stream)
            if isinstance(event, StreamReset):
                return self._stream_reset(event.stream_id, event.error_code)
            if isinstance(event, StopSendingReceived):
                return self._stop_sending(event.stream_id, event.error_code)
        except _ConnectionError as exc:
            self._close(exc.code, exc.reason)
        return []

    def _close(self, code: int, reason: str) -> None:
        self._closed = True
        self._quic.close(code, reason)

    # ---- request streams

    def _request_data(self, stream_id: int, data: bytes, ended: bool) -> list[H3Event]:
        stream = self._requests.get(stream_id)
        if stream is None:
            if stream_id & 0x1 and self._is_client:
                # A server-initiated bidirectional stream (RFC 9114 §6.1).
                raise _ConnectionError(
                    ErrorCode.H3_STREAM_CREATION_ERROR,
                    f"server opened bidirectional stream {stream_id}",
                )
            stream = self._requests[stream_id] = _RequestStream()
        events: list[H3Event] = []
        chunks: list[bytes] = []
        for frame_type, payload in stream.reader.feed(data) if data else ():
            if frame_type == FrameType.DATA:
                if stream.phase is not _Phase.BODY:
                    raise _ConnectionError(
                        ErrorCode.H3_FRAME_UNEXPECTED,
                        f"DATA frame out of place on stream {stream_id}",
                    )
                chunks.append(payload)
            elif frame_type == FrameType.HEADERS:
                if chunks:
                    events.append(DataReceived(stream_id, b"".join(chunks), False))
                    chunks = []
                events.append(self._headers(stream_id, stream, payload))
            else:
                self._unexpected_on_request(frame_type, stream_id)
        if ended:
            del self._requests[stream_id]
            if not stream.reader.at_boundary:
                raise _ConnectionError(
                    ErrorCode.H3_FRAME_ERROR, f"stream {stream_id} ended inside a frame"
                )
        if chunks:
            events.append(
                DataReceived(stream_id, b"".join(chunks) if len(chunks) > 1 else chunks[0], ended)
            )
        elif ended:
            last = events[-1] if events else None
            if isinstance(last, HeadersReceived):
                events[-1] = HeadersReceived(stream_id, last.headers, True)
            else:
                events.append(DataReceived(stream_id, b"", True))
        return events

    def _headers(self, stream_id: int, stream: _RequestStream, block: bytes) -> HeadersReceived:
        if stream.phase is _Phase.TRAILED:
            raise _ConnectionError(
                ErrorCode.H3_FRAME_UNEXPECTED, f"HEADERS after trailers on stream {stream_id}"
            )
        try:
            feedback, headers = self._decoder.feed_header(stream_id, block)
        except (pylsqpack.DecompressionFailed, pylsqpack.StreamBlocked) as exc:
            raise _ConnectionError(ErrorCode.QPACK_DECOMPRESSION_FAILED, str(exc)) from None
        if feedback:
            self._quic.send_stream(self._decoder_id, feedback)
        if stream.phase is _Phase.BODY:
            stream.phase = _Phase.TRAILED
        elif not (self._is_client and _is_interim(headers)):
            stream.phase = _Phase.BODY
        return HeadersReceived(stream_id, headers, False)

    def _unexpected_on_request(self, frame_type: int, stream_id: int) -> None:
        if frame_type == FrameType.PUSH_PROMISE and self._is_client:
            # We never sent MAX_PUSH_ID, so no push ID is valid (RFC 9114 §7.2.5).
            raise _ConnectionError(ErrorCode.H3_ID_ERROR, "PUSH_PROMISE without MAX_PUSH_ID")
        raise _ConnectionError(
            ErrorCode.H3_FRAME_UNEXPECTED,
            f"frame 0x{frame_type:x} is not allowed on request stream {stream_id}",
        )

    def _stream_reset(self, stream_id: int, error_code: int) -> list[H3Event]:
        if stream_id & 0x2:
            kind = self._uni_kind(stream_id)
            if kind is not None and self._critical.get(kind) == stream_id:
                raise self._critical_closed(stream_id)
            self._uni.pop(stream_id, None)
            return []
        self._requests.pop(stream_id, None)
        return [StreamWasReset(stream_id, error_code)]

    def _stop_sending(self, stream_id: int, error_code: int) -> list[H3Event]:
        if stream_id in self._own_critical:
            raise _ConnectionError(
                ErrorCode.H3_CLOSED_CRITICAL_STREAM, f"peer stopped our critical stream {stream_id}"
            )
        if stream_id & 0x2:
            return []
        return [SendingStopped(stream_id, error_code)]

    # ---- unidirectional streams

    def _uni_kind(self, stream_id: int) -> int | None:
        stream = self._uni.get(stream_id)
        return None if stream is None else stream.kind

    def _uni_data(self, stream_id: int, data: bytes, ended: bool) -> list[H3Event]:
        stream = self._uni.get(stream_id)
        if stream is None:
            stream = self._uni[stream_id] = _PeerUniStream()
        if stream.ignored:
            if ended:
                del self._uni[stream_id]
            return []
        if stream.kind is None:
            data = stream.pending + data
            kind, pos = _read_varint(data, 0)
            if kind < 0:
                stream.pending = data
                if ended:
                    del self._uni[stream_id]  # RFC 9114 §6.2: no type, nothing to do
                return []
            stream.pending = b""
            stream.kind = kind
            self._open_peer_uni(stream_id, stream, kind)
            if stream.ignored:
                if ended:
                    del self._uni[stream_id]
                return []
            data = data[pos:]
        events: list[H3Event] = []
        kind = stream.kind
        if kind == StreamType.CONTROL:
            reader = stream.reader
            frames = reader.feed(data) if data else []
            if self.peer_settings is None and reader.first_type not in (-1, FrameType.SETTINGS):
                # Even an unknown frame type breaks this rule (RFC 9114 §6.2.1).
                raise _ConnectionError(
                    ErrorCode.H3_MISSING_SETTINGS, "control stream does not start with SETTINGS"
                )
            for frame_type, payload in frames:
                event = self._control_frame(frame_type, payload)
                if event is not None:
                    events.append(event)
        elif kind == StreamType.QPACK_ENCODER and data:
            try:
                self._decoder.feed_encoder(data)
            except pylsqpack.EncoderStreamError as exc:
                raise _ConnectionError(ErrorCode.QPACK_ENCODER_STREAM_ERROR, str(exc)) from None
        elif kind == StreamType.QPACK_DECODER and data:
            try:
                self._encoder.feed_decoder(data)
            except pylsqpack.DecoderStreamError as exc:
                raise _ConnectionError(ErrorCode.QPACK_DECODER_STREAM_ERROR, str(exc)) from None
        if ended:
            raise self._critical_closed(stream_id)
        return events

    def _open_peer_uni(self, stream_id: int, stream: _PeerUniStream, kind: int) -> None:
        if kind in _CRITICAL_NAMES:
            if kind in self._critical:
                raise _ConnectionError(
                    ErrorCode.H3_STREAM_CREATION_ERROR,
                    f"second {_CRITICAL_NAMES[StreamType(kind)]} stream {stream_id}",
                )
            self._critical[kind] = stream_id
        elif kind == StreamType.PUSH:
            # Only servers push, and only up to a MAX_PUSH_ID we never send (RFC 9114 §4.6).
            if self._is_client:
                raise _ConnectionError(ErrorCode.H3_ID_ERROR, "push stream without MAX_PUSH_ID")
            raise _ConnectionError(
                ErrorCode.H3_STREAM_CREATION_ERROR, "client opened a push stream"
            )
        else:
            # Unknown or reserved stream types are read and discarded (RFC 9114 §6.2).
            stream.ignored = True
            self._quic.stop_stream(stream_id, ErrorCode.H3_STREAM_CREATION_ERROR)

    def _critical_closed(self, stream_id: int) -> _ConnectionError:
        return _ConnectionError(
            ErrorCode.H3_CLOSED_CRITICAL_STREAM, f"peer closed its critical stream {stream_id}"
        )

    def _control_frame(self, frame_type: int, payload: bytes) -> H3Event | None:
        if self.peer_settings is None:
            if frame_type != FrameType.SETTINGS:
                raise _ConnectionError(
                    ErrorCode.H3_MISSING_SETTINGS, "control stream does not start with SETTINGS"
                )
            settings = _parse_settings(payload)
            if (
                settings.get(Setting.H3_DATAGRAM) == 1
                and self._quic.peer_max_datagram_frame_size <= 0
            ):
                raise _ConnectionError(
                    ErrorCode.H3_SETTINGS_ERROR,
                    "H3_DATAGRAM offered without the max_datagram_frame_size transport parameter",
                )
            self.peer_settings = settings
            return SettingsReceived(dict(settings))
        if frame_type == FrameType.SETTINGS:
            raise _ConnectionError(ErrorCode.H3_FRAME_UNEXPECTED, "second SETTINGS frame")
        if frame_type == FrameType.GOAWAY:
            self._peer_goaway(_single_varint(payload, "GOAWAY"))
        elif frame_type == FrameType.MAX_PUSH_ID:
            if self._is_client:
                raise _ConnectionError(ErrorCode.H3_FRAME_UNEXPECTED, "MAX_PUSH_ID from a server")
            _single_varint(payload, "MAX_PUSH_ID")  # we never push: nothing to raise
        elif frame_type == FrameType.CANCEL_PUSH:
            _single_varint(payload, "CANCEL_PUSH")  # no push ever promised: nothing to cancel
        elif frame_type in _BUFFERED or frame_type == FrameType.DATA:
            raise _ConnectionError(
                ErrorCode.H3_FRAME_UNEXPECTED, f"frame 0x{frame_type:x} on the control stream"
            )
        return None

    def _peer_goaway(self, identifier: int) -> None:
        if self._is_client and identifier % 4:
            raise _ConnectionError(
                ErrorCode.H3_ID_ERROR, f"GOAWAY names {identifier}, not a request stream"
            )
        if self._goaway is not None and identifier > self._goaway:
            raise _ConnectionError(ErrorCode.H3_ID_ERROR, "GOAWAY identifier went up")
        self._goaway = identifier


def _is_interim(headers: Headers) -> bool:
    """A 1xx response, after which the final response's HEADERS still follow."""
    for name, value in headers:
        if name == b":status":
            return len(value) == 3 and value.startswith(b"1")
    return False
