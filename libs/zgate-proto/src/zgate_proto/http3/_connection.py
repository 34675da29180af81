"""One HTTP/3 endpoint over a QuicConn: our critical streams, the peer's, request streams
and the rules that bind them (see :mod:`zgate_proto.http3`)."""

from __future__ import annotations

import enum

import pylsqpack

from zgate_proto.engines.base import (
    QuicConn,
    QuicEvent,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)
from zgate_proto.errors import ProtoError
from zgate_proto.http3._events import (
    DataReceived,
    H3Event,
    HeadersReceived,
    SendingStopped,
    SettingsReceived,
    StreamWasReset,
)
from zgate_proto.http3._frames import (
    BUFFERED_FRAMES,
    CRITICAL_STREAMS,
    DATA,
    ErrorCode,
    FrameReader,
    FrameType,
    Headers,
    ProtocolViolation,
    Setting,
    StreamType,
    encode_frame,
    parse_settings,
    read_varint,
    single_varint,
)
from zgate_proto.varint import encode_varint

__all__ = ["H3Connection"]

_DATA_TYPE = encode_varint(FrameType.DATA)


class _Phase(enum.Enum):
    """Where a request stream is in RFC 9114 §4.1's frame sequence."""

    HEADERS = "headers"  # waiting for the (final) header section
    BODY = "body"  # DATA, or a trailer section
    TRAILED = "trailed"  # after trailers: nothing but unknown frames


class _RequestStream:
    __slots__ = ("phase", "reader")

    def __init__(self) -> None:
        self.reader = FrameReader()
        self.phase = _Phase.HEADERS


class _PeerUniStream:
    __slots__ = ("ignored", "kind", "pending", "reader")

    def __init__(self) -> None:
        self.kind: int | None = None
        self.pending = b""  # the stream type varint, while incomplete
        self.reader = FrameReader()
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
            frame = b"".join((_DATA_TYPE, encode_varint(len(data)), data))
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
        except ProtocolViolation as exc:
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
                raise ProtocolViolation(
                    ErrorCode.H3_STREAM_CREATION_ERROR,
                    f"server opened bidirectional stream {stream_id}",
                )
            stream = self._requests[stream_id] = _RequestStream()
        events: list[H3Event] = []
        chunks: list[bytes] = []
        for frame_type, payload in stream.reader.feed(data) if data else ():
            if frame_type == DATA:
                if stream.phase is not _Phase.BODY:
                    raise ProtocolViolation(
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
                raise ProtocolViolation(
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
            raise ProtocolViolation(
                ErrorCode.H3_FRAME_UNEXPECTED, f"HEADERS after trailers on stream {stream_id}"
            )
        try:
            feedback, headers = self._decoder.feed_header(stream_id, block)
        except (pylsqpack.DecompressionFailed, pylsqpack.StreamBlocked) as exc:
            raise ProtocolViolation(ErrorCode.QPACK_DECOMPRESSION_FAILED, str(exc)) from None
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
            raise ProtocolViolation(ErrorCode.H3_ID_ERROR, "PUSH_PROMISE without MAX_PUSH_ID")
        raise ProtocolViolation(
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
            raise ProtocolViolation(
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
            kind, pos = read_varint(data, 0)
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
                raise ProtocolViolation(
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
                raise ProtocolViolation(ErrorCode.QPACK_ENCODER_STREAM_ERROR, str(exc)) from None
        elif kind == StreamType.QPACK_DECODER and data:
            try:
                self._encoder.feed_decoder(data)
            except pylsqpack.DecoderStreamError as exc:
                raise ProtocolViolation(ErrorCode.QPACK_DECODER_STREAM_ERROR, str(exc)) from None
        if ended:
            raise self._critical_closed(stream_id)
        return events

    def _open_peer_uni(self, stream_id: int, stream: _PeerUniStream, kind: int) -> None:
        if kind in CRITICAL_STREAMS:
            if kind in self._critical:
                raise ProtocolViolation(
                    ErrorCode.H3_STREAM_CREATION_ERROR,
                    f"second {CRITICAL_STREAMS[StreamType(kind)]} stream {stream_id}",
                )
            self._critical[kind] = stream_id
        elif kind == StreamType.PUSH:
            # Only servers push, and only up to a MAX_PUSH_ID we never send (RFC 9114 §4.6).
            if self._is_client:
                raise ProtocolViolation(ErrorCode.H3_ID_ERROR, "push stream without MAX_PUSH_ID")
            raise ProtocolViolation(
                ErrorCode.H3_STREAM_CREATION_ERROR, "client opened a push stream"
            )
        else:
            # Unknown or reserved stream types are read and discarded (RFC 9114 §6.2).
            stream.ignored = True
            self._quic.stop_stream(stream_id, ErrorCode.H3_STREAM_CREATION_ERROR)

    def _critical_closed(self, stream_id: int) -> ProtocolViolation:
        return ProtocolViolation(
            ErrorCode.H3_CLOSED_CRITICAL_STREAM, f"peer closed its critical stream {stream_id}"
        )

    def _control_frame(self, frame_type: int, payload: bytes) -> H3Event | None:
        if self.peer_settings is None:
            if frame_type != FrameType.SETTINGS:
                raise ProtocolViolation(
                    ErrorCode.H3_MISSING_SETTINGS, "control stream does not start with SETTINGS"
                )
            settings = parse_settings(payload)
            if (
                settings.get(Setting.H3_DATAGRAM) == 1
                and self._quic.peer_max_datagram_frame_size <= 0
            ):
                raise ProtocolViolation(
                    ErrorCode.H3_SETTINGS_ERROR,
                    "H3_DATAGRAM offered without the max_datagram_frame_size transport parameter",
                )
            self.peer_settings = settings
            return SettingsReceived(dict(settings))
        if frame_type == FrameType.SETTINGS:
            raise ProtocolViolation(ErrorCode.H3_FRAME_UNEXPECTED, "second SETTINGS frame")
        if frame_type == FrameType.GOAWAY:
            self._peer_goaway(single_varint(payload, "GOAWAY"))
        elif frame_type == FrameType.MAX_PUSH_ID:
            if self._is_client:
                raise ProtocolViolation(ErrorCode.H3_FRAME_UNEXPECTED, "MAX_PUSH_ID from a server")
            single_varint(payload, "MAX_PUSH_ID")  # we never push: nothing to raise
        elif frame_type == FrameType.CANCEL_PUSH:
            single_varint(payload, "CANCEL_PUSH")  # no push ever promised: nothing to cancel
        elif frame_type in BUFFERED_FRAMES or frame_type == FrameType.DATA:
            raise ProtocolViolation(
                ErrorCode.H3_FRAME_UNEXPECTED, f"frame 0x{frame_type:x} on the control stream"
            )
        return None

    def _peer_goaway(self, identifier: int) -> None:
        if self._is_client and identifier % 4:
            raise ProtocolViolation(
                ErrorCode.H3_ID_ERROR, f"GOAWAY names {identifier}, not a request stream"
            )
        if self._goaway is not None and identifier > self._goaway:
            raise ProtocolViolation(ErrorCode.H3_ID_ERROR, "GOAWAY identifier went up")
        self._goaway = identifier


def _is_interim(headers: Headers) -> bool:
    """A 1xx response, after which the final response's HEADERS still follow."""
    for name, value in headers:
        if name == b":status":
            return len(value) == 3 and value.startswith(b"1")
    return False
