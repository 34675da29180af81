"""zgate_proto.http3 between two in-memory peers, and against a peer that breaks RFC 9114."""

from __future__ import annotations

import pytest

from zgate_proto.engines.base import StopSendingReceived, StreamDataReceived, StreamReset
from zgate_proto.http3 import (
    MAX_FRAME_SIZE,
    DataReceived,
    ErrorCode,
    FrameType,
    H3Connection,
    H3Event,
    HeadersReceived,
    SendingStopped,
    Setting,
    SettingsReceived,
    StreamType,
    StreamWasReset,
    encode_frame,
)
from zgate_proto.request import build_connect_ip_request
from zgate_proto.varint import encode_varint
from zgate_testkit.memquic import CloseFrame, MemoryLink, MemoryQuicConn, memory_pair

#: A valid CONNECT-IP request (what the HTTP/3 layer carries does not matter here).
REQUEST = build_connect_ip_request("relay.example:443")
RESPONSE = [(b":status", b"200"), (b"capsule-protocol", b"?1")]


class H3Peers:
    """Two H3Connections over a memory link, collecting what each side gets."""

    def __init__(self, *, chunk: int | None = None, **pair: bool) -> None:
        self.client_quic, self.server_quic = memory_pair(**pair)
        self.client_quic.chunk = self.server_quic.chunk = chunk
        self.link = MemoryLink(self.client_quic, self.server_quic)
        self.client = H3Connection(self.client_quic, is_client=True)
        self.server = H3Connection(self.server_quic, is_client=False)
        self.client_events: list[H3Event] = []
        self.server_events: list[H3Event] = []

    def pump(self) -> None:
        while self.link.exchange():
            for quic, h3, events in (
                (self.client_quic, self.client, self.client_events),
                (self.server_quic, self.server, self.server_events),
            ):
                while (event := quic.next_event()) is not None:
                    events.extend(h3.handle_event(event))


def merged(events: list[H3Event], stream_id: int) -> tuple[list[HeadersReceived], bytes, bool]:
    """Header events, all DATA and whether the stream ended, for one stream."""
    headers = [e for e in events if isinstance(e, HeadersReceived) and e.stream_id == stream_id]
    data = [e for e in events if isinstance(e, DataReceived) and e.stream_id == stream_id]
    ended = [e.stream_ended for e in headers] + [e.stream_ended for e in data]
    return headers, b"".join(e.data for e in data), any(ended)


# ---- between two of ours -------------------------------------------------------------------


def test_settings_are_exchanged_and_read() -> None:
    peers = H3Peers()
    assert peers.client.peer_settings is None
    assert not peers.client.peer_supports_extended_connect()
    peers.pump()

    expected: dict[int, int] = {
        Setting.QPACK_MAX_TABLE_CAPACITY: 0,
        Setting.QPACK_BLOCKED_STREAMS: 0,
        Setting.ENABLE_CONNECT_PROTOCOL: 1,
        Setting.H3_DATAGRAM: 1,
    }
    assert peers.client_events == [SettingsReceived(expected)]
    assert peers.server_events == [SettingsReceived(expected)]
    for h3 in (peers.client, peers.server):
        assert h3.peer_settings == expected
        assert h3.peer_supports_extended_connect()
        assert h3.peer_supports_datagrams()
        assert not h3.closed
    assert not peers.client_quic.closed and not peers.server_quic.closed


def test_datagrams_need_the_setting_and_the_transport_parameter() -> None:
    # The server's QUIC layer takes no DATAGRAM frames, so it must not offer H3_DATAGRAM.
    peers = H3Peers(server_datagrams=False)
    peers.server = H3Connection(peers.server_quic, is_client=False, datagrams=False)
    peers.server_quic.outbox = peers.server_quic.outbox[3:]  # drop the first H3Connection's streams
    peers.pump()
    assert peers.client.peer_settings is not None
    assert Setting.H3_DATAGRAM not in peers.client.peer_settings
    assert not peers.client.peer_supports_datagrams()
    assert peers.server.peer_supports_datagrams()


@pytest.mark.parametrize("chunk", [None, 1, 7])
def test_request_and_response_with_data_both_ways(chunk: int | None) -> None:
    peers = H3Peers(chunk=chunk)
    peers.pump()
    sid = peers.client_quic.next_stream_id()
    peers.client.send_headers(sid, REQUEST)
    peers.client.send_data(sid, b"hello")
    peers.client.send_data(sid, b" " * 300)
    peers.pump()
    headers, data, ended = merged(peers.server_events, sid)
    assert [h.headers for h in headers] == [REQUEST]
    assert data == b"hello" + b" " * 300
    assert not ended

    peers.server.send_headers(sid, RESPONSE)
    peers.server.send_data(sid, b"x" * 5000)
    peers.server.send_data(sid, b"", end_stream=True)
    peers.pump()
    headers, data, ended = merged(peers.client_events, sid)
    assert [h.headers for h in headers] == [RESPONSE]
    assert data == b"x" * 5000
    assert ended
    assert not peers.client_quic.closed and not peers.server_quic.closed


def test_one_event_per_run_of_data_frames() -> None:
    peers = H3Peers()
    peers.pump()
    sid = peers.client_quic.next_stream_id()
    frames = encode_frame(FrameType.DATA, b"a") + encode_frame(FrameType.DATA, b"bc")
    peers.client.send_headers(sid, REQUEST)
    peers.client_quic.send_stream(sid, frames + encode_frame(0x21, b"grease") + frames)
    peers.pump()
    assert [e for e in peers.server_events if isinstance(e, DataReceived)] == [
        DataReceived(sid, b"abcabc", False)
    ]


def test_headers_with_fin_trailers_and_a_bare_fin() -> None:
    peers = H3Peers()
    peers.pump()
    sid = peers.client_quic.next_stream_id()
    peers.client.send_headers(sid, REQUEST, end_stream=True)
    sid2 = peers.client_quic.next_stream_id()
    peers.client.send_headers(sid2, REQUEST)
    peers.client.send_data(sid2, b"body")
    peers.client.send_headers(sid2, [(b"x-trailer", b"1")])
    peers.client.send_data(sid2, b"", end_stream=True)
    peers.pump()
    events = [e for e in peers.server_events if not isinstance(e, SettingsReceived)]
    assert events == [
        HeadersReceived(sid, REQUEST, True),
        HeadersReceived(sid2, REQUEST, False),
        DataReceived(sid2, b"body", False),
        HeadersReceived(sid2, [(b"x-trailer", b"1")], False),
        DataReceived(sid2, b"", True),
    ]


def test_interim_responses_are_followed_by_the_final_one() -> None:
    peers = H3Peers()
    peers.pump()
    sid = peers.client_quic.next_stream_id()
    peers.client.send_headers(sid, REQUEST)
    peers.pump()
    peers.server.send_headers(sid, [(b":status", b"103")])
    peers.server.send_headers(sid, RESPONSE)
    peers.server.send_data(sid, b"ok")
    peers.pump()
    headers, data, _ = merged(peers.client_events, sid)
    assert [h.headers for h in headers] == [[(b":status", b"103")], RESPONSE]
    assert data == b"ok"
    assert not peers.client_quic.closed


def test_resets_and_stop_sending_on_request_streams_become_events() -> None:
    peers = H3Peers()
    peers.pump()
    sid = peers.client_quic.next_stream_id()
    peers.client.send_headers(sid, REQUEST)
    peers.pump()
    peers.server_quic.stop_stream(sid, ErrorCode.H3_MESSAGE_ERROR)
    peers.pump()
    # The memory engine, like aioquic, answers STOP_SENDING with RESET_STREAM itself.
    assert SendingStopped(sid, ErrorCode.H3_MESSAGE_ERROR) in peers.client_events
    assert StreamWasReset(sid, ErrorCode.H3_MESSAGE_ERROR) in peers.server_events
    assert not peers.client_quic.closed and not peers.server_quic.closed


def test_unknown_unidirectional_streams_are_stopped_and_ignored() -> None:
    peers = H3Peers()
    peers.pump()
    grease = peers.client_quic.next_stream_id(unidirectional=True)
    peers.client_quic.send_stream(grease, encode_varint(0x21) + b"whatever", end_stream=True)
    peers.pump()
    assert (grease, ErrorCode.H3_STREAM_CREATION_ERROR) in peers.server_quic.stop_calls
    assert not peers.server_quic.closed


def test_the_peers_qpack_encoder_stream_is_read() -> None:
    # Set Dynamic Table Capacity 0 is the one instruction valid against a table of 0.
    peers = H3Peers()
    peers.pump()
    encoder = 2  # the client's QPACK encoder stream: its second unidirectional stream
    peers.client_quic.send_stream(encoder + 4, b"\x20")
    peers.pump()
    assert not peers.server_quic.closed


# ---- a peer that breaks the rules ------------------------------------------------------------


def control(*frames: bytes) -> bytes:
    return encode_varint(StreamType.CONTROL) + b"".join(frames)


def settings(*pairs: tuple[int, int]) -> bytes:
    return encode_frame(
        FrameType.SETTINGS, b"".join(encode_varint(k) + encode_varint(v) for k, v in pairs)
    )


GOOD_SETTINGS = settings((Setting.ENABLE_CONNECT_PROTOCOL, 1))
CLIENT_UNI, SERVER_UNI = 2, 3  # the peer's first unidirectional stream
REQUEST_STREAM = 0


def closed_with(quic: MemoryQuicConn) -> int | None:
    codes = [f.code for f in quic.outbox if isinstance(f, CloseFrame)]
    assert len(codes) <= 1
    return codes[0] if codes else None


def feed(
    h3: H3Connection, *events: StreamDataReceived | StreamReset | StopSendingReceived
) -> list[H3Event]:
    out: list[H3Event] = []
    for event in events:
        out.extend(h3.handle_event(event))
    return out


def server_side(*, peer_datagrams: bool = True) -> tuple[H3Connection, MemoryQuicConn]:
    quic = MemoryQuicConn(False, peer_max_datagram_frame_size=65536 if peer_datagrams else 0)
    return H3Connection(quic, is_client=False), quic


def client_side() -> tuple[H3Connection, MemoryQuicConn]:
    quic = MemoryQuicConn(True)
    return H3Connection(quic, is_client=True), quic


def uni(stream_id: int, data: bytes, fin: bool = False) -> StreamDataReceived:
    return StreamDataReceived(stream_id, data, fin)


Violation = tuple[list[StreamDataReceived | StreamReset | StopSendingReceived], int]

VIOLATIONS_TO_SERVER: dict[str, Violation] = {
    "control stream starts with another frame": (
        [uni(CLIENT_UNI, control(encode_frame(FrameType.GOAWAY, b"\x00")))],
        ErrorCode.H3_MISSING_SETTINGS,
    ),
    "control stream starts with an unknown frame": (
        [uni(CLIENT_UNI, control(encode_frame(0x21, b""), GOOD_SETTINGS))],
        ErrorCode.H3_MISSING_SETTINGS,
    ),
    "second SETTINGS": (
        [uni(CLIENT_UNI, control(GOOD_SETTINGS, GOOD_SETTINGS))],
        ErrorCode.H3_FRAME_UNEXPECTED,
    ),
    "DATA on the control stream": (
        [uni(CLIENT_UNI, control(GOOD_SETTINGS, encode_frame(FrameType.DATA, b"x")))],
        ErrorCode.H3_FRAME_UNEXPECTED,
    ),
    "HEADERS on the control stream": (
        [uni(CLIENT_UNI, control(GOOD_SETTINGS, encode_frame(FrameType.HEADERS, b"x")))],
        ErrorCode.H3_FRAME_UNEXPECTED,
    ),
    "an HTTP/2 setting": (
        [uni(CLIENT_UNI, control(settings((0x2, 1))))],
        ErrorCode.H3_SETTINGS_ERROR,
    ),
    "a setting twice": (
        [uni(CLIENT_UNI, control(settings((0x21, 1), (0x21, 2))))],
        ErrorCode.H3_SETTINGS_ERROR,
    ),
    "H3_DATAGRAM of 2": (
        [uni(CLIENT_UNI, control(settings((Setting.H3_DATAGRAM, 2))))],
        ErrorCode.H3_SETTINGS_ERROR,
    ),
    "a truncated SETTINGS frame": (
        [uni(CLIENT_UNI, control(encode_frame(FrameType.SETTINGS, b"\x08")))],
        ErrorCode.H3_FRAME_ERROR,
    ),
    "a second control stream": (
        [uni(CLIENT_UNI, control(GOOD_SETTINGS)), uni(CLIENT_UNI + 4, control())],
        ErrorCode.H3_STREAM_CREATION_ERROR,
    ),
    "a push stream from a client": (
        [uni(CLIENT_UNI, encode_varint(StreamType.PUSH))],
        ErrorCode.H3_STREAM_CREATION_ERROR,
    ),
    "the control stream ended": (
        [uni(CLIENT_UNI, control(GOOD_SETTINGS), fin=True)],
        ErrorCode.H3_CLOSED_CRITICAL_STREAM,
    ),
    "the QPACK encoder stream reset": (
        [uni(CLIENT_UNI, encode_varint(StreamType.QPACK_ENCODER)), StreamReset(CLIENT_UNI, 0)],
        ErrorCode.H3_CLOSED_CRITICAL_STREAM,
    ),
    "our control stream stopped": (
        [StopSendingReceived(SERVER_UNI, 0x100)],
        ErrorCode.H3_CLOSED_CRITICAL_STREAM,
    ),
    "DATA before HEADERS": (
        [StreamDataReceived(REQUEST_STREAM, encode_frame(FrameType.DATA, b"x"), False)],
        ErrorCode.H3_FRAME_UNEXPECTED,
    ),
    "an HTTP/2 PING on a request stream": (
        [StreamDataReceived(REQUEST_STREAM, encode_frame(0x6, b"12345678"), False)],
        ErrorCode.H3_FRAME_UNEXPECTED,
    ),
    "SETTINGS on a request stream": (
        [StreamDataReceived(REQUEST_STREAM, GOOD_SETTINGS, False)],
        ErrorCode.H3_FRAME_UNEXPECTED,
    ),
    "PUSH_PROMISE from a client": (
        [StreamDataReceived(REQUEST_STREAM, encode_frame(FrameType.PUSH_PROMISE, b"\x00"), False)],
        ErrorCode.H3_FRAME_UNEXPECTED,
    ),
    "a header block QPACK cannot decode": (
        [StreamDataReceived(REQUEST_STREAM, encode_frame(FrameType.HEADERS, b"\xff\xff"), False)],
        ErrorCode.QPACK_DECOMPRESSION_FAILED,
    ),
    "a dynamic-table insert against capacity 0": (
        [uni(CLIENT_UNI, encode_varint(StreamType.QPACK_ENCODER) + b"\x3f\xe1\x1f")],
        ErrorCode.QPACK_ENCODER_STREAM_ERROR,
    ),
    "a request stream ended inside a frame": (
        [StreamDataReceived(REQUEST_STREAM, b"\x01\x10\x00", True)],
        ErrorCode.H3_FRAME_ERROR,
    ),
    "an oversized HEADERS frame": (
        [StreamDataReceived(REQUEST_STREAM, b"\x01" + encode_varint(MAX_FRAME_SIZE + 1), False)],
        ErrorCode.H3_EXCESSIVE_LOAD,
    ),
    "MAX_PUSH_ID that is not one varint": (
        [uni(CLIENT_UNI, control(GOOD_SETTINGS, encode_frame(FrameType.MAX_PUSH_ID, b"")))],
        ErrorCode.H3_FRAME_ERROR,
    ),
}


@pytest.mark.parametrize("case", list(VIOLATIONS_TO_SERVER))
def test_a_clients_violation_closes_the_connection(case: str) -> None:
    events, code = VIOLATIONS_TO_SERVER[case]
    h3, quic = server_side()
    out = feed(h3, *events)
    assert closed_with(quic) == code
    assert h3.closed and quic.closed
    assert not any(isinstance(e, HeadersReceived | DataReceived) for e in out)
    # Nothing more is read once the connection is closed.
    assert feed(h3, StreamDataReceived(8, encode_frame(FrameType.HEADERS, b""), False)) == []


VIOLATIONS_TO_CLIENT: dict[str, Violation] = {
    "a server-initiated bidirectional stream": (
        [StreamDataReceived(1, b"", False)],
        ErrorCode.H3_STREAM_CREATION_ERROR,
    ),
    "a push stream without MAX_PUSH_ID": (
        [uni(SERVER_UNI, encode_varint(StreamType.PUSH))],
        ErrorCode.H3_ID_ERROR,
    ),
    "PUSH_PROMISE without MAX_PUSH_ID": (
        [StreamDataReceived(0, encode_frame(FrameType.PUSH_PROMISE, b"\x00\x00"), False)],
        ErrorCode.H3_ID_ERROR,
    ),
    "MAX_PUSH_ID from a server": (
        [uni(SERVER_UNI, control(GOOD_SETTINGS, encode_frame(FrameType.MAX_PUSH_ID, b"\x00")))],
        ErrorCode.H3_FRAME_UNEXPECTED,
    ),
    "GOAWAY naming a push or unidirectional stream": (
        [uni(SERVER_UNI, control(GOOD_SETTINGS, encode_frame(FrameType.GOAWAY, b"\x02")))],
        ErrorCode.H3_ID_ERROR,
    ),
    "GOAWAY going up": (
        [
            uni(
                SERVER_UNI,
                control(
                    GOOD_SETTINGS,
                    encode_frame(FrameType.GOAWAY, b"\x04"),
                    encode_frame(FrameType.GOAWAY, b"\x08"),
                ),
            )
        ],
        ErrorCode.H3_ID_ERROR,
    ),
}


@pytest.mark.parametrize("case", list(VIOLATIONS_TO_CLIENT))
def test_a_servers_violation_closes_the_connection(case: str) -> None:
    events, code = VIOLATIONS_TO_CLIENT[case]
    h3, quic = client_side()
    feed(h3, *events)
    assert closed_with(quic) == code


def test_h3_datagram_without_the_transport_parameter_is_a_settings_error() -> None:
    h3, quic = server_side(peer_datagrams=False)
    feed(h3, uni(CLIENT_UNI, control(settings((Setting.H3_DATAGRAM, 1)))))
    assert closed_with(quic) == ErrorCode.H3_SETTINGS_ERROR


def test_frames_split_anywhere_parse_the_same() -> None:
    h3, quic = server_side()
    block_headers = H3Connection(MemoryQuicConn(True), is_client=True)
    stream = control(settings((Setting.ENABLE_CONNECT_PROTOCOL, 1), (0x21, 5)))
    events: list[H3Event] = []
    for i in range(len(stream)):
        events += h3.handle_event(uni(CLIENT_UNI, stream[i : i + 1]))
    assert events == [SettingsReceived({Setting.ENABLE_CONNECT_PROTOCOL: 1, 0x21: 5})]
    goaway = encode_frame(FrameType.GOAWAY, encode_varint(2**30))
    for i in range(len(goaway)):
        h3.handle_event(uni(CLIENT_UNI, goaway[i : i + 1]))
    assert h3.peer_goaway == 2**30
    assert closed_with(quic) is None
    del block_headers


def test_a_unidirectional_stream_that_ends_before_its_type_is_ignored() -> None:
    h3, quic = server_side()
    assert feed(h3, uni(CLIENT_UNI, b"\x40"), uni(CLIENT_UNI, b"", fin=True)) == []
    assert closed_with(quic) is None
