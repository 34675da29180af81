"""Plain HTTP/3 requests beside a CONNECT-IP session (ClientSession.request, RequestReceived,
ServerConnection.respond, ResponseReceived), over the in-memory pair and real aioquic and
qh3 connections."""

from __future__ import annotations

from zgate_proto.engines.base import SendStatus
from zgate_proto.session import (
    ClientState,
    RequestReceived,
    RequestRejected,
    ResponseReceived,
    ServerSessionState,
)
from zgate_testkit.memquic import Link
from zgate_testkit.sessions import Peers, ipv4_packet

WHY = "/.well-known/zgate/why?target=tcp%3A%2F%2Fdb%3A5432"


def serving(link: Link) -> Peers:
    """An open session whose relay takes plain requests."""
    peers = Peers(link, server_options={"requests": True})
    peers.open()
    return peers


def test_a_get_beside_the_session_is_answered_on_its_own_stream(link: Link) -> None:
    peers = serving(link)
    stream_id = peers.client.request("GET", WHY, [(b"accept", b"application/json")])
    assert stream_id != peers.client.stream_id
    peers.run(lambda: bool(peers.server_got(RequestReceived)))

    [asked] = peers.server_got(RequestReceived)
    assert (asked.stream_id, asked.method, asked.path, asked.body) == (stream_id, "GET", WHY, b"")
    assert (b":authority", b"relay.example") in asked.headers
    assert (b"accept", b"application/json") in asked.headers
    body = b'{"verdict": "deny"}'
    peers.srv.respond(stream_id, 200, [(b"content-type", b"application/json")], body)
    peers.run(lambda: bool(peers.client_got(ResponseReceived)))

    [answer] = peers.client_got(ResponseReceived)
    assert (answer.stream_id, answer.status, answer.body) == (stream_id, 200, body)
    assert (b"content-type", b"application/json") in answer.headers
    assert (b"content-length", str(len(body)).encode()) in answer.headers
    # The session carries on beside it.
    session = peers.client.stream_id
    assert peers.client.state is ClientState.OPEN
    assert peers.srv.state(session) is ServerSessionState.OPEN
    assert peers.client.send_packet(ipv4_packet()) is SendStatus.SENT


def test_an_empty_answer_ends_the_stream_with_its_headers(link: Link) -> None:
    peers = serving(link)
    stream_id = peers.client.request("GET", "/nothing")
    peers.run(lambda: bool(peers.server_got(RequestReceived)))
    peers.srv.respond(stream_id, 404)
    peers.run(lambda: bool(peers.client_got(ResponseReceived)))
    [answer] = peers.client_got(ResponseReceived)
    assert (answer.status, answer.body) == (404, b"")


def test_a_relay_that_takes_no_requests_still_refuses_them_with_405(link: Link) -> None:
    peers = Peers(link)
    peers.open()
    stream_id = peers.client.request("GET", WHY)
    peers.run(lambda: bool(peers.client_got(ResponseReceived)))
    [answer] = peers.client_got(ResponseReceived)
    assert (answer.stream_id, answer.status) == (stream_id, 405)
    assert (b"allow", b"CONNECT") in answer.headers
    [rejected] = peers.server_got(RequestRejected)
    assert (rejected.stream_id, rejected.status, rejected.reason) == (stream_id, 405, "bad_method")
    assert not peers.server_got(RequestReceived)


def test_several_requests_are_answered_each_on_its_stream(link: Link) -> None:
    count = 3
    peers = serving(link)
    streams = [peers.client.request("GET", f"/q/{i}") for i in range(count)]
    peers.run(lambda: len(peers.server_got(RequestReceived)) == count)
    for asked in reversed(peers.server_got(RequestReceived)):
        peers.srv.respond(asked.stream_id, 200, body=asked.path.encode())
    peers.run(lambda: len(peers.client_got(ResponseReceived)) == count)
    answers = {a.stream_id: a.body for a in peers.client_got(ResponseReceived)}
    assert answers == {s: f"/q/{i}".encode() for i, s in enumerate(streams)}


def test_a_refused_request_with_a_body_gets_its_answer(link: Link) -> None:
    peers = Peers(link)  # takes no plain requests: 405, and STOP_SENDING for the rest
    peers.open()
    stream_id = peers.client.request("POST", "/x", body=b"body")
    peers.run(lambda: bool(peers.client_got(ResponseReceived)))
    peers.run()
    [answer] = peers.client_got(ResponseReceived)
    assert (answer.stream_id, answer.status) == (stream_id, 405)
    assert peers.client.state is ClientState.OPEN
