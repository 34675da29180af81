"""Plain HTTP/3 requests beside a CONNECT-IP session, at the edges: bodies (and their
limits) both ways, trailers, interim and malformed responses, either side giving up on the
stream, the connection ending under a request, and the caller's mistakes.

Over the in-memory pair, where a test can write frames by hand on either side.
"""

from __future__ import annotations

import pytest

from zgate_proto.http3 import ErrorCode
from zgate_proto.session import (
    RequestFailed,
    RequestReceived,
    RequestRejected,
    ResponseReceived,
    SessionError,
)
from zgate_testkit.memquic import MemoryLink, StreamFrame, memory_pair
from zgate_testkit.sessions import Peers

GET = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"relay.example"),
    (b":path", b"/x"),
]


def serving(**server_options: object) -> tuple[Peers, MemoryLink]:
    link = MemoryLink(*memory_pair())
    peers = Peers(link, server_options={"requests": True, **server_options})
    peers.open()
    return peers, link


def asked(peers: Peers) -> RequestReceived:
    peers.run(lambda: bool(peers.server_got(RequestReceived)))
    [request] = peers.server_got(RequestReceived)
    assert isinstance(request, RequestReceived)
    return request


def answered(peers: Peers) -> ResponseReceived:
    peers.run(lambda: bool(peers.client_got(ResponseReceived)))
    [response] = peers.client_got(ResponseReceived)
    assert isinstance(response, ResponseReceived)
    return response


def failed(peers: Peers) -> RequestFailed:
    peers.run(lambda: bool(peers.client_got(RequestFailed)))
    [failure] = peers.client_got(RequestFailed)
    assert isinstance(failure, RequestFailed)
    return failure


def by_hand(peers: Peers, headers: list[tuple[bytes, bytes]], *, fin: bool = True) -> int:
    """A request written on the client's HTTP/3 connection directly (not through request())."""
    stream_id = peers.client.quic.next_stream_id()
    peers.client.h3.send_headers(stream_id, headers, end_stream=fin)
    peers.run()
    return stream_id


# ---- bodies --------------------------------------------------------------------------------------


def test_a_request_body_comes_with_the_request_once_the_stream_ends() -> None:
    peers, _ = serving()
    stream_id = peers.client.request("POST", "/in", [(b"content-type", b"text/plain")], b"hello")
    request = asked(peers)
    assert (request.stream_id, request.method, request.body) == (stream_id, "POST", b"hello")


def test_a_request_in_pieces_with_trailers_is_received_at_its_end() -> None:
    peers, _ = serving()
    stream_id = by_hand(peers, GET, fin=False)
    assert not peers.server_got(RequestReceived)
    peers.client.h3.send_data(stream_id, b"ab")
    peers.run()
    peers.client.h3.send_data(stream_id, b"cd")
    peers.client.h3.send_headers(stream_id, [(b"x-trailer", b"1")], end_stream=True)
    assert asked(peers).body == b"abcd"


def test_a_request_body_over_the_limit_is_refused_with_413() -> None:
    peers, _ = serving(max_request_body=4)
    stream_id = peers.client.request("POST", "/in", body=b"12345")
    response = answered(peers)
    assert (response.stream_id, response.status) == (stream_id, 413)
    [rejected] = peers.server_got(RequestRejected)
    assert (rejected.status, rejected.reason) == (413, "body_too_large")
    assert not peers.server_got(RequestReceived)


def test_a_request_body_passing_the_limit_midway_is_refused_and_the_rest_ignored() -> None:
    peers, _ = serving(max_request_body=4)
    stream_id = peers.client.quic.next_stream_id()
    peers.client.h3.send_headers(stream_id, GET)
    peers.client.h3.send_data(stream_id, b"12345")
    peers.client.h3.send_data(stream_id, b"more", end_stream=True)  # before the refusal
    peers.run()
    assert [(r.stream_id, r.status) for r in peers.server_got(RequestRejected)] == [
        (stream_id, 413)
    ]
    assert not peers.server_got(RequestReceived)
    assert len(peers.server_got(RequestRejected)) == 1


def test_a_response_in_pieces_with_trailers_is_whole_at_its_end() -> None:
    peers, _ = serving()
    stream_id = peers.client.request("GET", "/x")
    asked(peers)
    h3 = peers.srv.h3
    h3.send_headers(stream_id, [(b":status", b"103")])
    h3.send_headers(stream_id, [(b":status", b"200")])
    h3.send_data(stream_id, b"ab")
    peers.run()
    assert not peers.client_got(ResponseReceived)
    h3.send_data(stream_id, b"cd")
    h3.send_headers(stream_id, [(b"x-trailer", b"1")], end_stream=True)
    response = answered(peers)
    assert (response.status, response.body) == (200, b"abcd")


def test_a_response_body_over_the_limit_fails_the_request_and_cancels_the_stream() -> None:
    link = MemoryLink(*memory_pair())
    peers = Peers(link, server_options={"requests": True}, max_response_body=3)
    peers.open()
    stream_id = peers.client.request("GET", "/x")
    asked(peers)
    peers.srv.respond(stream_id, 200, body=b"1234")
    failure = failed(peers)
    assert failure.stream_id == stream_id and "over 3 bytes" in failure.reason
    assert link.mem_client.reset_calls[-1] == (stream_id, ErrorCode.H3_REQUEST_CANCELLED)
    assert not peers.client_got(ResponseReceived)


# ---- malformed exchanges ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        [*GET, (b":protocol", b"connect-ip")],
        [(b":method", b"GET"), (b":authority", b"relay.example"), (b":path", b"/x")],
        [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"x")],
        [(b":method", b"G T"), (b":scheme", b"https"), (b":path", b"/x")],
        [(b":method", b"GET"), (b":scheme", b"https"), (b":path", "/é".encode())],
    ],
    ids=["protocol", "no-scheme", "relative-path", "bad-method", "non-ascii-path"],
)
def test_a_malformed_plain_request_is_refused_with_400(headers: list[tuple[bytes, bytes]]) -> None:
    peers, _ = serving()
    stream_id = by_hand(peers, headers)
    [rejected] = peers.server_got(RequestRejected)
    assert (rejected.stream_id, rejected.status, rejected.reason) == (
        stream_id,
        400,
        "malformed_request",
    )
    assert not peers.server_got(RequestReceived)


def test_a_malformed_request_still_sending_is_refused_and_its_rest_ignored() -> None:
    peers, _ = serving()
    stream_id = peers.client.quic.next_stream_id()
    peers.client.h3.send_headers(stream_id, [*GET, (b":protocol", b"x")])
    peers.client.h3.send_data(stream_id, b"ignored", end_stream=True)  # before the refusal
    peers.run()
    assert [r.status for r in peers.server_got(RequestRejected)] == [400]


def test_a_response_without_a_valid_status_fails_the_request() -> None:
    peers, _ = serving()
    stream_id = peers.client.request("GET", "/x")
    asked(peers)
    peers.srv.h3.send_headers(stream_id, [(b":status", b"2x0")])
    peers.srv.h3.send_data(stream_id, b"what follows is ignored", end_stream=True)
    failure = failed(peers)
    assert (failure.stream_id, failure.reason) == (stream_id, "a response without a valid :status")


def test_a_stream_ended_after_an_interim_response_fails_the_request() -> None:
    peers, _ = serving()
    stream_id = peers.client.request("GET", "/x")
    asked(peers)
    peers.srv.h3.send_headers(stream_id, [(b":status", b"100")], end_stream=True)
    assert failed(peers).reason == "the stream ended without a final response"


# ---- either side giving up ----------------------------------------------------------------------


def test_a_reset_from_the_relay_fails_the_request() -> None:
    peers, _ = serving()
    stream_id = peers.client.request("GET", "/x")
    asked(peers)
    peers.server_quic.reset_stream(stream_id, ErrorCode.H3_INTERNAL_ERROR)
    assert failed(peers).reason == "the relay reset the stream (error 0x102)"


def test_stop_sending_with_an_error_from_the_relay_fails_the_request() -> None:
    peers, link = serving()
    stream_id = peers.client.request("GET", "/x")
    asked(peers)
    peers.server_quic.stop_stream(stream_id, ErrorCode.H3_REQUEST_REJECTED)
    failure = failed(peers)
    assert failure.reason == "the relay refused the request (error 0x10b)"
    assert (stream_id, ErrorCode.H3_REQUEST_CANCELLED) in link.mem_client.reset_calls


def test_a_request_the_agent_stops_reading_is_not_answered() -> None:
    peers, link = serving()
    stream_id = peers.client.request("GET", "/x")
    asked(peers)
    peers.client.quic.stop_stream(stream_id, ErrorCode.H3_REQUEST_CANCELLED)
    peers.run()
    peers.srv.respond(stream_id, 200, body=b"late")  # nothing: the request was withdrawn
    peers.run()
    answers = [
        f
        for f in link.mem_server.take()
        if isinstance(f, StreamFrame) and f.stream_id == stream_id and f.data
    ]
    assert answers == []
    assert (stream_id, ErrorCode.H3_REQUEST_CANCELLED) in link.mem_server.reset_calls


def test_a_request_the_agent_resets_midway_is_forgotten() -> None:
    peers, _ = serving()
    stream_id = by_hand(peers, GET, fin=False)
    peers.client.quic.reset_stream(stream_id, ErrorCode.H3_REQUEST_CANCELLED)
    peers.run()
    assert not peers.server_got(RequestReceived)
    peers.srv.respond(stream_id, 200)  # nothing to answer any more: no error either


def test_the_connection_ending_fails_every_pending_request() -> None:
    peers, _ = serving()
    first = peers.client.request("GET", "/a")
    second = peers.client.request("GET", "/b")
    peers.run(lambda: len(peers.server_got(RequestReceived)) == 2)
    peers.server_quic.close(0, "bye")
    peers.run(lambda: len(peers.client_got(RequestFailed)) == 2)
    failures = {f.stream_id: f.reason for f in peers.client_got(RequestFailed)}
    assert failures == {first: "the connection ended: bye", second: "the connection ended: bye"}
    with pytest.raises(SessionError, match="connection has ended"):
        peers.client.request("GET", "/c")


# ---- the caller's mistakes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("CONNECT", "/x", []),
        ("G T", "/x", []),
        ("GET", "x", []),
        ("GET", "/a b", []),
        ("GET", "/x", [(b":status", b"1")]),
        ("GET", "/x", [(b"X-Upper", b"1")]),
    ],
)
def test_request_refuses_what_it_cannot_send(
    method: str, path: str, headers: list[tuple[bytes, bytes]]
) -> None:
    peers, _ = serving()
    with pytest.raises(SessionError):
        peers.client.request(method, path, headers)


def test_respond_refuses_a_request_not_yet_received() -> None:
    peers, _ = serving()
    stream_id = by_hand(peers, GET, fin=False)
    with pytest.raises(SessionError, match="not been received"):
        peers.srv.respond(stream_id, 200)
    peers.client.h3.send_data(stream_id, b"", end_stream=True)
    assert asked(peers).stream_id == stream_id


def test_respond_refuses_bad_answers_and_answers_once() -> None:
    peers, _ = serving()
    stream_id = peers.client.request("GET", "/x")
    asked(peers)
    with pytest.raises(SessionError, match="200 to 599"):
        peers.srv.respond(stream_id, 103)
    with pytest.raises(SessionError, match="bad header name"):
        peers.srv.respond(stream_id, 200, [(b":path", b"/")])
    peers.srv.respond(stream_id, 204)
    peers.srv.respond(stream_id, 204)  # answered already: nothing more
    peers.srv.respond(4000, 200)  # never asked: nothing
    assert answered(peers).status == 204


def test_stop_sending_without_an_error_from_the_relay_still_awaits_the_answer() -> None:
    peers, _ = serving()
    stream_id = peers.client.request("GET", "/x")
    asked(peers)
    peers.server_quic.stop_stream(stream_id, ErrorCode.H3_NO_ERROR)
    peers.run()
    assert not peers.client_got(RequestFailed)
    peers.srv.respond(stream_id, 200, body=b"ok")
    assert answered(peers).body == b"ok"


def test_a_refused_request_still_sending_its_body_gets_its_answer_and_a_stop() -> None:
    link = MemoryLink(*memory_pair())
    peers = Peers(link)  # takes no plain requests
    peers.open()
    stream_id = peers.client.request("POST", "/x", body=b"body")
    response = answered(peers)
    assert (response.stream_id, response.status) == (stream_id, 405)
    assert (stream_id, ErrorCode.H3_NO_ERROR) in link.mem_server.stop_calls
    assert not peers.client_got(RequestFailed)


def test_the_body_of_a_request_the_agent_withdrew_is_ignored() -> None:
    peers, _ = serving()
    stream_id = by_hand(peers, GET, fin=False)
    peers.client.quic.stop_stream(stream_id, ErrorCode.H3_REQUEST_CANCELLED)
    peers.client.h3.send_data(stream_id, b"still coming", end_stream=True)
    peers.run()
    assert not peers.server_got(RequestReceived)
