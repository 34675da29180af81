"""The agent's session core against a hand-driven relay: an interim response before the
answer, STOP_SENDING(H3_NO_ERROR) then a refusal (the refusal wins: RFC 9114 section 4.1.1),
STOP_SENDING with an error, a 200 that ends the stream at once, and capsules sent before the
session opened.

The relay side is a bare H3Connection over the test kit's memory link, so each test chooses
exactly what the relay sends.
"""

from __future__ import annotations

import pytest

from zgate_proto.http3 import ErrorCode, H3Connection, H3Event, HeadersReceived
from zgate_proto.session import (
    ClientEvent,
    ClientSession,
    ClientState,
    PacketMode,
    SessionAccepted,
    SessionClosed,
    SessionError,
    SessionRefused,
)
from zgate_testkit.memquic import MemoryLink, MemoryQuicConn, ResetFrame, drain, memory_pair
from zgate_testkit.sessions import ROUTES

OK = [(b":status", b"200"), (b"capsule-protocol", b"?1")]


class HandRelay:
    """A ClientSession and, across a memory link, the relay's HTTP/3 layer driven by hand."""

    def __init__(self) -> None:
        self.client_quic, self.relay_quic = memory_pair()
        self.link = MemoryLink(self.client_quic, self.relay_quic)
        self.session = ClientSession(
            self.client_quic, authority="relay.example", mode=PacketMode.DATAGRAM
        )
        self.relay = H3Connection(self.relay_quic, is_client=False)
        self.client_events: list[ClientEvent] = []
        self.relay_events: list[H3Event] = []
        self.from_client: list[object] = []
        self.pump()
        [request] = [e for e in self.relay_events if isinstance(e, HeadersReceived)]
        self.stream_id = request.stream_id

    def pump(self) -> None:
        client: MemoryQuicConn = self.client_quic
        while True:
            self.from_client.extend(client.outbox)
            if not self.link.exchange():
                return
            drain(self.client_quic, lambda e: self.client_events.extend(self.session.receive(e)))
            drain(self.relay_quic, lambda e: self.relay_events.extend(self.relay.handle_event(e)))

    def got(self, kind: type) -> list[object]:
        return [e for e in self.client_events if isinstance(e, kind)]


def state(hand: HandRelay) -> ClientState:
    """The session's state, read through a call (mypy would narrow the attribute)."""
    return hand.session.state


def test_an_interim_response_waits_for_the_final_one() -> None:
    hand = HandRelay()
    hand.relay.send_headers(hand.stream_id, [(b":status", b"103")])
    hand.pump()
    assert state(hand) is ClientState.REQUESTED and hand.client_events == []

    hand.relay.send_headers(hand.stream_id, OK)
    hand.pump()
    assert state(hand) is ClientState.OPEN
    assert len(hand.got(SessionAccepted)) == 1


def test_stop_sending_without_error_then_a_refusal_is_the_refusal() -> None:
    hand = HandRelay()
    hand.relay_quic.stop_stream(hand.stream_id, ErrorCode.H3_NO_ERROR)
    hand.pump()
    assert state(hand) is ClientState.REQUESTED  # waiting for the answer
    assert ResetFrame(hand.stream_id, ErrorCode.H3_NO_ERROR) in hand.from_client

    hand.relay.send_headers(hand.stream_id, [(b":status", b"403")], end_stream=True)
    hand.pump()
    [refused] = hand.got(SessionRefused)
    assert isinstance(refused, SessionRefused) and refused.status == 403
    assert hand.got(SessionClosed) == []
    assert state(hand) is ClientState.CLOSED


def test_stop_sending_with_an_error_closes_the_request() -> None:
    hand = HandRelay()
    hand.relay_quic.stop_stream(hand.stream_id, ErrorCode.H3_REQUEST_REJECTED)
    hand.pump()

    [closed] = hand.got(SessionClosed)
    assert isinstance(closed, SessionClosed) and closed.error
    assert state(hand) is ClientState.CLOSED
    assert ResetFrame(hand.stream_id, ErrorCode.H3_REQUEST_REJECTED) in hand.from_client


def test_a_200_that_ends_the_stream_opens_then_closes() -> None:
    hand = HandRelay()
    hand.relay.send_headers(hand.stream_id, OK, end_stream=True)
    hand.pump()

    assert [type(e) for e in hand.client_events][:1] == [SessionAccepted]
    [closed] = hand.got(SessionClosed)
    assert isinstance(closed, SessionClosed) and not closed.error
    assert state(hand) is ClientState.CLOSED


def test_capsules_before_the_session_opened_are_an_error() -> None:
    hand = HandRelay()
    with pytest.raises(SessionError):
        hand.session.send_capsules([ROUTES])
    hand.session.send_capsules([])  # nothing to send: no error
