"""The relay's session core at transitions the other session tests do not reach: a request
whose stream ends with its headers, a malformed request that ends its stream (answered, not
stopped), a session closed while still unanswered (reset, H3_REQUEST_REJECTED), closing what
is already closed or was never asked, trailers that end an open session.

A MemoryLink that records every frame the relay sends shows what reached the wire.
"""

from __future__ import annotations

from zgate_proto.http3 import ErrorCode
from zgate_proto.request import build_connect_ip_request
from zgate_proto.session import (
    RequestRejected,
    SessionClosed,
    SessionRequested,
)
from zgate_testkit.memquic import (
    Frame,
    MemoryLink,
    ResetFrame,
    StopFrame,
    StreamFrame,
    memory_pair,
)
from zgate_testkit.sessions import Answer, Peers, accept_all

REQUEST = build_connect_ip_request("relay.example")


class RecordingLink(MemoryLink):
    """A MemoryLink that keeps every frame the relay sent."""

    def __init__(self) -> None:
        super().__init__(*memory_pair())
        self.from_relay: list[Frame] = []

    def exchange(self) -> bool:
        self.from_relay.extend(self.mem_server.outbox)
        return super().exchange()

    def on_stream(self, stream_id: int) -> list[Frame]:
        return [f for f in self.from_relay if getattr(f, "stream_id", None) == stream_id]


def opened(answer: Answer = accept_all) -> tuple[Peers, RecordingLink]:
    link = RecordingLink()
    peers = Peers(link, answer=answer)
    peers.open()
    return peers, link


def second_request(peers: Peers, headers: list[tuple[bytes, bytes]], *, fin: bool) -> int:
    """A hand-written request on the client's HTTP/3 connection, next to its session."""
    stream_id = peers.client.quic.next_stream_id()
    peers.client.h3.send_headers(stream_id, headers, end_stream=fin)
    peers.run()
    return stream_id


def on(peers: Peers, stream_id: int) -> list[object]:
    return [e for e in peers.server_events if getattr(e, "stream_id", None) == stream_id]


def test_a_request_that_ends_its_stream_is_requested_then_closed() -> None:
    peers, _ = opened()
    sid = second_request(peers, REQUEST, fin=True)

    requested, closed = on(peers, sid)
    assert isinstance(requested, SessionRequested)
    assert closed == SessionClosed(sid, "peer ended the stream", False)
    assert sid not in peers.srv.session_ids


def test_a_malformed_request_that_ended_is_answered_but_not_stopped() -> None:
    peers, link = opened()
    sid = second_request(peers, REQUEST[:-1], fin=True)  # no capsule-protocol

    [rejected] = on(peers, sid)
    assert isinstance(rejected, RequestRejected) and rejected.status == 400
    frames = link.on_stream(sid)
    assert frames and all(isinstance(f, StreamFrame) for f in frames)
    assert frames[-1].fin  # type: ignore[union-attr]
    assert not any(isinstance(f, StopFrame) for f in frames)  # the client already finished


def test_a_malformed_request_still_open_is_answered_and_stopped() -> None:
    peers, link = opened()
    sid = second_request(peers, REQUEST[:-1], fin=False)

    frames = link.on_stream(sid)
    assert StopFrame(sid, ErrorCode.H3_NO_ERROR) in frames
    assert any(isinstance(f, StreamFrame) and f.fin for f in frames)


def test_closing_an_unanswered_session_rejects_it() -> None:
    held: list[SessionRequested] = []
    peers, link = opened()
    peers.answer = lambda _peers, event: held.append(event)
    sid = second_request(peers, REQUEST, fin=False)
    [event] = held

    peers.srv.close_session(event.stream_id)
    peers.srv.close_session(event.stream_id)  # already closed: nothing more
    peers.srv.close_session(event.stream_id + 400)  # never requested: nothing
    peers.run()

    frames = link.on_stream(sid)
    assert [f for f in frames if isinstance(f, ResetFrame)] == [
        ResetFrame(sid, ErrorCode.H3_REQUEST_REJECTED)
    ]
    assert [f for f in frames if isinstance(f, StopFrame)] == [
        StopFrame(sid, ErrorCode.H3_REQUEST_REJECTED)
    ]
    assert not any(isinstance(f, StreamFrame) for f in frames)  # no response was sent
    assert sid not in peers.srv.session_ids
    assert not [e for e in on(peers, sid) if isinstance(e, SessionClosed)]  # no event follows


def test_trailers_that_end_the_stream_close_the_session() -> None:
    peers, _ = opened()
    sid = peers.client.stream_id
    peers.client.h3.send_headers(sid, [(b"x-why", b"done")], end_stream=True)
    peers.run()

    [closed] = [e for e in on(peers, sid) if isinstance(e, SessionClosed)]
    assert closed == SessionClosed(sid, "peer ended the stream", False)
    assert sid not in peers.srv.session_ids
