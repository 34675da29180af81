"""HTTP/3 paths the main tests leave out: request streams with trailers (and HEADERS after
them), the peer's QPACK decoder stream going wrong, the push-related control frames a relay
must tolerate or refuse, GOAWAY from a client, and the sender's own guard rails.

Each H3Connection runs over the test kit's MemoryQuicConn; its outbox shows what was sent.
"""

from __future__ import annotations

import pytest

from zgate_proto.engines.base import StreamDataReceived
from zgate_proto.errors import ProtoError
from zgate_proto.http3 import (
    DataReceived,
    ErrorCode,
    FrameType,
    H3Connection,
    H3Event,
    HeadersReceived,
    Setting,
    StreamType,
    encode_frame,
)
from zgate_proto.request import build_connect_ip_request
from zgate_proto.varint import encode_varint
from zgate_testkit.memquic import CloseFrame, MemoryQuicConn, StreamFrame

REQUEST = build_connect_ip_request("relay.example:443")
TRAILERS = [(b"x-done", b"1")]
CLIENT_UNI = 2
GOOD_SETTINGS = encode_frame(
    FrameType.SETTINGS,
    encode_varint(Setting.ENABLE_CONNECT_PROTOCOL) + encode_varint(1),
)


def server_side() -> tuple[H3Connection, MemoryQuicConn]:
    quic = MemoryQuicConn(False, peer_max_datagram_frame_size=65536)
    return H3Connection(quic, is_client=False), quic


def client_side() -> tuple[H3Connection, MemoryQuicConn]:
    quic = MemoryQuicConn(True)
    return H3Connection(quic, is_client=True), quic


def closed_with(quic: MemoryQuicConn) -> int | None:
    codes = [f.code for f in quic.outbox if isinstance(f, CloseFrame)]
    assert len(codes) <= 1
    return codes[0] if codes else None


def sent_on(quic: MemoryQuicConn, stream_id: int) -> list[StreamFrame]:
    return [f for f in quic.outbox if isinstance(f, StreamFrame) and f.stream_id == stream_id]


def header_frame(headers: list[tuple[bytes, bytes]]) -> bytes:
    """A HEADERS frame as a client's H3Connection encodes it (static table only)."""
    client, quic = client_side()
    sid = quic.next_stream_id()
    client.send_headers(sid, headers)
    return b"".join(f.data for f in sent_on(quic, sid))


def control(*frames: bytes) -> bytes:
    return encode_varint(StreamType.CONTROL) + b"".join(frames)


def feed(h3: H3Connection, *events: StreamDataReceived) -> list[H3Event]:
    out: list[H3Event] = []
    for event in events:
        out.extend(h3.handle_event(event))
    return out


# ---- request streams ------------------------------------------------------------------------


def test_data_then_trailers_in_one_read_keep_their_order() -> None:
    h3, quic = server_side()
    body = encode_frame(FrameType.DATA, b"ab") + encode_frame(FrameType.DATA, b"cd")
    data = header_frame(REQUEST) + body + header_frame(TRAILERS)

    out = feed(h3, StreamDataReceived(0, data, True))

    assert [type(e) for e in out] == [HeadersReceived, DataReceived, HeadersReceived]
    assert out[1] == DataReceived(0, b"abcd", False)
    last = out[2]
    assert isinstance(last, HeadersReceived)
    assert last.headers == TRAILERS and last.stream_ended
    assert closed_with(quic) is None


def test_headers_after_trailers_is_frame_unexpected() -> None:
    h3, quic = server_side()
    data = (
        header_frame(REQUEST)
        + encode_frame(FrameType.DATA, b"x")
        + header_frame(TRAILERS)
        + header_frame(TRAILERS)
    )

    feed(h3, StreamDataReceived(0, data, False))

    assert closed_with(quic) == ErrorCode.H3_FRAME_UNEXPECTED
    assert h3.closed


def test_a_broken_qpack_decoder_stream_is_a_decoder_stream_error() -> None:
    h3, quic = server_side()
    # A Section Acknowledgment for stream 0, on which we never sent a header block.
    feed(
        h3, StreamDataReceived(CLIENT_UNI, encode_varint(StreamType.QPACK_DECODER) + b"\x80", False)
    )

    assert closed_with(quic) == ErrorCode.QPACK_DECODER_STREAM_ERROR


# ---- control frames --------------------------------------------------------------------------


def test_push_frames_from_a_client_are_tolerated() -> None:
    h3, quic = server_side()
    frames = control(
        GOOD_SETTINGS,
        encode_frame(FrameType.MAX_PUSH_ID, b"\x08"),
        encode_frame(FrameType.CANCEL_PUSH, b"\x00"),
    )
    feed(h3, StreamDataReceived(CLIENT_UNI, frames, False))

    assert closed_with(quic) is None and not h3.closed
    assert h3.peer_settings is not None


def test_a_clients_goaway_may_go_down_but_not_up() -> None:
    h3, quic = server_side()
    feed(
        h3,
        StreamDataReceived(
            CLIENT_UNI,
            control(GOOD_SETTINGS, encode_frame(FrameType.GOAWAY, b"\x07")),
            False,
        ),
    )
    assert h3.peer_goaway == 7  # a push ID, not a request stream: any value is fine
    feed(h3, StreamDataReceived(CLIENT_UNI, encode_frame(FrameType.GOAWAY, b"\x03"), False))
    assert h3.peer_goaway == 3 and closed_with(quic) is None

    feed(h3, StreamDataReceived(CLIENT_UNI, encode_frame(FrameType.GOAWAY, b"\x05"), False))
    assert closed_with(quic) == ErrorCode.H3_ID_ERROR
    assert h3.peer_goaway == 3


# ---- sending ----------------------------------------------------------------------------------


def test_headers_on_a_unidirectional_stream_are_refused() -> None:
    h3, quic = client_side()
    sid = quic.next_stream_id(unidirectional=True)
    before = len(quic.outbox)

    with pytest.raises(ProtoError, match="unidirectional"):
        h3.send_headers(sid, REQUEST)
    assert len(quic.outbox) == before


@pytest.mark.parametrize(("end_stream", "expected"), [(False, []), (True, [b""])])
def test_empty_data_sends_at_most_a_fin(end_stream: bool, expected: list[bytes]) -> None:
    h3, quic = client_side()
    sid = quic.next_stream_id()
    h3.send_data(sid, b"", end_stream=end_stream)

    frames = sent_on(quic, sid)
    assert [f.data for f in frames] == expected
    assert all(f.fin for f in frames)
    assert h3.quic is quic
