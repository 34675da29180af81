"""Properties of the HTTP/3 and session parsers (hypothesis): any split of the same bytes
reads the same, and no input, however wrong, raises out of them."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from zgate_proto.engines.base import DatagramReceived, StreamDataReceived, StreamReset
from zgate_proto.http3 import (
    DataReceived,
    ErrorCode,
    FrameType,
    H3Connection,
    H3Event,
    HeadersReceived,
    encode_frame,
)
from zgate_proto.request import build_connect_ip_request
from zgate_proto.session import (
    PacketDropped,
    PacketMode,
    PacketReceived,
    ServerConnection,
    SessionClosed,
    SessionRequested,
)
from zgate_testkit.memquic import CloseFrame, MemoryQuicConn

#: A valid CONNECT-IP request (what the HTTP/3 layer carries does not matter here).
REQUEST = build_connect_ip_request("relay.example")
H3_CODES = {int(code) for code in ErrorCode}


def header_block(headers: list[tuple[bytes, bytes]]) -> bytes:
    """A HEADERS frame as one of our peers would send it."""
    quic = MemoryQuicConn(True)
    H3Connection(quic, is_client=True).send_headers(0, headers)
    return quic.outbox[-1].data  # type: ignore[union-attr]


def cuts(data: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def read(chunks: list[bytes]) -> tuple[list[HeadersReceived], bytes]:
    """What a server reads from a request stream cut into ``chunks`` (FIN on the last)."""
    quic = MemoryQuicConn(False)
    h3 = H3Connection(quic, is_client=False)
    events: list[H3Event] = []
    for i, chunk in enumerate(chunks):
        events += h3.handle_event(StreamDataReceived(0, chunk, i == len(chunks) - 1))
    assert not quic.closed, [f for f in quic.outbox if isinstance(f, CloseFrame)]
    headers = [e for e in events if isinstance(e, HeadersReceived)]
    data = [e for e in events if isinstance(e, DataReceived)]
    last = events[-1]
    assert isinstance(last, HeadersReceived | DataReceived) and last.stream_ended
    assert not any(e.stream_ended for e in events[:-1])  # type: ignore[attr-defined]
    return headers, b"".join(e.data for e in data)


frames = st.lists(
    st.one_of(
        st.binary(max_size=300).map(lambda b: (FrameType.DATA, b)),
        st.tuples(st.sampled_from([0x21, 0x40, 0x1F * 7 + 0x21]), st.binary(max_size=40)),
    ),
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(body=frames, points=st.lists(st.integers(min_value=0), max_size=20))
def test_any_split_of_a_request_stream_reads_the_same(
    body: list[tuple[int, bytes]], points: list[int]
) -> None:
    stream = header_block(REQUEST) + b"".join(encode_frame(t, p) for t, p in body)
    whole = read([stream])
    split = read(cuts(stream, points) or [b""])
    expected_data = b"".join(p for t, p in body if t == FrameType.DATA)
    assert whole[1] == split[1] == expected_data
    assert [h.headers for h in whole[0]] == [h.headers for h in split[0]] == [REQUEST]


stream_ids = st.sampled_from([0, 1, 2, 3, 4, 6, 7, 10, 11])


@settings(max_examples=300, deadline=None)
@given(
    inputs=st.lists(
        st.tuples(stream_ids, st.binary(max_size=64), st.booleans(), st.booleans()), max_size=12
    ),
    is_client=st.booleans(),
)
def test_no_stream_input_raises_out_of_http3(
    inputs: list[tuple[int, bytes, bool, bool]], is_client: bool
) -> None:
    quic = MemoryQuicConn(is_client)
    h3 = H3Connection(quic, is_client=is_client)
    for stream_id, data, fin, reset in inputs:
        if reset:
            h3.handle_event(StreamReset(stream_id, 0x10C))
        else:
            h3.handle_event(StreamDataReceived(stream_id, data, fin))
    closes = [f.code for f in quic.outbox if isinstance(f, CloseFrame)]
    assert len(closes) <= 1
    assert all(code in H3_CODES for code in closes)
    assert h3.closed == bool(closes)


def client_control_stream() -> bytes:
    """What a client's HTTP/3 layer first sends on its control stream (SETTINGS)."""
    quic = MemoryQuicConn(True)
    H3Connection(quic, is_client=True)
    return quic.outbox[0].data  # type: ignore[union-attr]


def open_server() -> tuple[ServerConnection, int]:
    quic = MemoryQuicConn(False)
    server = ServerConnection(quic)
    assert server.receive(StreamDataReceived(2, client_control_stream(), False)) == []
    out = server.receive(StreamDataReceived(0, header_block(REQUEST), False))
    [requested] = out
    assert isinstance(requested, SessionRequested)
    server.accept(0, PacketMode.STREAM)
    return server, 0


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=40))
def test_any_datagram_is_one_packet_or_one_drop(data: bytes) -> None:
    server, sid = open_server()
    [event] = server.receive(DatagramReceived(data))
    if isinstance(event, PacketReceived):
        assert event.stream_id == sid and data.endswith(event.packet)
    else:
        assert isinstance(event, PacketDropped)


@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(st.binary(max_size=80), max_size=8), fin=st.booleans())
def test_no_capsule_stream_raises_out_of_a_session(chunks: list[bytes], fin: bool) -> None:
    server, sid = open_server()
    events = []
    for i, chunk in enumerate(chunks):
        last = fin and i == len(chunks) - 1
        events += server.receive(StreamDataReceived(sid, encode_frame(FrameType.DATA, chunk), last))
    closed = [e for e in events if isinstance(e, SessionClosed)]
    assert len(closed) <= 1
    if closed:
        assert events[-1] == closed[0]  # nothing about the session after it closed
