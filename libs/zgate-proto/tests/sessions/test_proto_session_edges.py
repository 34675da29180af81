"""CONNECT-IP sessions at their edges: modes and fallback, refusals, malformed input,
resets, back-pressure and loss (zgate_proto.session)."""

from __future__ import annotations

import ipaddress

import pytest

from zgate_proto.capsules import AddressAssign, encode_raw_capsule
from zgate_proto.engines.base import DatagramReceived, SendStatus, StreamDataReceived
from zgate_proto.http3 import (
    ErrorCode,
    FrameType,
    H3Connection,
    Setting,
    StreamType,
    encode_frame,
)
from zgate_proto.request import build_connect_ip_request
from zgate_proto.session import (
    AddressesAssigned,
    ClientSession,
    ClientState,
    ConnectionClosed,
    DropReason,
    PacketDropped,
    PacketMode,
    PacketReceived,
    RequestRejected,
    ServerConnection,
    ServerSessionState,
    SessionAccepted,
    SessionClosed,
    SessionError,
    SessionRefused,
    SessionRequested,
)
from zgate_proto.varint import encode_varint
from zgate_testkit.memquic import (
    Link,
    MemoryLink,
    MemoryQuicConn,
    StopFrame,
    StreamFrame,
    memory_pair,
)
from zgate_testkit.sessions import ASSIGN, ROUTES, Peers, ipv4_packet


def memory_peers(
    mode: PacketMode = PacketMode.DATAGRAM,
    *,
    client_datagrams: bool = True,
    server_datagrams: bool = True,
    datagram_queue: int = 64,
    **options: object,
) -> tuple[Peers, MemoryQuicConn, MemoryQuicConn]:
    client, server = memory_pair(
        client_datagrams=client_datagrams,
        server_datagrams=server_datagrams,
        datagram_queue=datagram_queue,
    )
    peers = Peers(MemoryLink(client, server), mode=mode, **options)  # type: ignore[arg-type]
    return peers, client, server


class RawClient:
    """A second, hand-driven request on the client's HTTP/3 connection."""

    def __init__(self, peers: Peers, headers: list[tuple[bytes, bytes]]) -> None:
        self.h3: H3Connection = peers.client.h3
        self.stream_id = peers.client.quic.next_stream_id()
        self.h3.send_headers(self.stream_id, headers)


# ---- modes -------------------------------------------------------------------------------------


def test_stream_mode_when_asked() -> None:
    peers, _, _ = memory_peers(PacketMode.STREAM)
    peers.open()
    assert peers.server_got(SessionRequested)[0].mode is PacketMode.STREAM
    assert peers.client_got(SessionAccepted)[0].mode is PacketMode.STREAM
    assert peers.client.max_packet == 65535


def test_fallback_to_stream_when_the_relay_offers_no_datagrams() -> None:
    peers, _, _ = memory_peers(server_datagrams=False, server_options={"datagrams": False})
    peers.open()
    assert peers.client.mode is PacketMode.STREAM
    assert peers.server_got(SessionRequested)[0].mode is PacketMode.STREAM
    assert peers.client.send_packet(ipv4_packet()) is SendStatus.SENT
    peers.run()
    assert len(peers.server_got(PacketReceived)) == 1


def test_no_fallback_means_no_session() -> None:
    peers, _, _ = memory_peers(
        server_datagrams=False, server_options={"datagrams": False}, fallback=False
    )
    peers.run()
    [refused] = peers.client_got(SessionRefused)
    assert "datagrams" in refused.reason and refused.status == 0
    assert peers.client.state is ClientState.CLOSED
    assert not peers.server_got(SessionRequested)  # nothing was asked


def test_the_relay_picks_stream_mode_for_a_client_without_datagrams() -> None:
    peers, _, _ = memory_peers(client_datagrams=False, datagrams=False)
    peers.open()
    assert peers.server_got(SessionRequested)[0].mode is PacketMode.STREAM
    assert peers.client.mode is PacketMode.STREAM  # the client fell back before asking
    sid = peers.client.stream_id
    with pytest.raises(SessionError):
        peers.srv.mode(sid + 4)
    assert peers.srv.max_packet(sid) == 65535


def test_the_client_follows_the_mode_the_relay_answers() -> None:
    def stream_anyway(peers: Peers, event: SessionRequested) -> None:
        peers.srv.accept(event.stream_id, PacketMode.STREAM, [ASSIGN, ROUTES])

    peers, _, _ = memory_peers(answer=stream_anyway)
    peers.open()
    assert peers.client.mode is PacketMode.STREAM
    assert peers.client_got(SessionAccepted)[0].mode is PacketMode.STREAM


def test_accept_and_reject_check_what_the_caller_asks() -> None:
    answered: list[SessionRequested] = []
    peers, _, _ = memory_peers(
        client_datagrams=False, datagrams=False, answer=lambda p, e: answered.append(e)
    )
    peers.run()
    [event] = answered
    with pytest.raises(SessionError):
        peers.srv.accept(event.stream_id, PacketMode.DATAGRAM)  # the client takes none
    with pytest.raises(SessionError):
        peers.srv.reject(event.stream_id, 200)
    peers.srv.accept(event.stream_id, PacketMode.STREAM)
    with pytest.raises(SessionError):
        peers.srv.accept(event.stream_id, PacketMode.STREAM)
    peers.srv.reject(event.stream_id + 400, 403)  # never requested: nothing to answer


# ---- refusals ----------------------------------------------------------------------------------


def test_a_refusing_status_is_a_refused_session(link: Link) -> None:
    peers = Peers(link, answer=lambda p, e: p.srv.reject(e.stream_id, 403))
    peers.run(lambda: bool(peers.client_got(SessionRefused)))
    peers.run()
    [refused] = peers.client_got(SessionRefused)
    assert refused.status == 403 and "403" in refused.reason
    assert peers.client.state is ClientState.CLOSED
    assert not peers.client_got(SessionClosed) and not peers.server_got(SessionClosed)
    assert peers.srv.session_ids == ()
    assert not link.client.closed


def test_a_malformed_request_is_answered_400(link: Link) -> None:
    peers = Peers(link)
    peers.open()
    no_capsule_protocol = build_connect_ip_request("relay.example")[:-1]
    raw = RawClient(peers, no_capsule_protocol)
    peers.run(lambda: bool(peers.server_got(RequestRejected)))
    [rejected] = peers.server_got(RequestRejected)
    assert (rejected.stream_id, rejected.status, rejected.reason) == (
        raw.stream_id,
        400,
        "malformed_request",
    )
    assert "capsule-protocol" in rejected.detail
    assert len(peers.server_got(SessionRequested)) == 1
    assert raw.stream_id not in peers.srv.session_ids


def test_a_relay_without_extended_connect_is_refused() -> None:
    quic = MemoryQuicConn(True)
    session = ClientSession(quic, authority="relay.example", mode=PacketMode.DATAGRAM)
    # The relay's control stream, hand-written: its SETTINGS lack ENABLE_CONNECT_PROTOCOL.
    settings = encode_varint(Setting.QPACK_MAX_TABLE_CAPACITY) + b"\x00"
    control = encode_varint(StreamType.CONTROL) + encode_frame(FrameType.SETTINGS, settings)
    events = session.receive(StreamDataReceived(3, control, False))
    [refused] = events
    assert isinstance(refused, SessionRefused) and "extended CONNECT" in refused.reason
    assert session.state is ClientState.CLOSED
    assert session.stream_id == -1  # no request was sent
    session.close()
    assert session.state is ClientState.CLOSED


def test_an_interim_response_comes_before_the_final_one() -> None:
    def early_hints_then_accept(peers: Peers, event: SessionRequested) -> None:
        peers.srv.h3.send_headers(event.stream_id, [(b":status", b"103")])
        peers.srv.accept(event.stream_id, event.mode, [ASSIGN, ROUTES])

    peers, _, _ = memory_peers(answer=early_hints_then_accept)
    peers.open()
    assert peers.client.ready
    assert len(peers.client_got(SessionAccepted)) == 1


# ---- malformed input ---------------------------------------------------------------------------

#: ADDRESS_ASSIGN whose one address claims IP version 5.
BAD_CAPSULE = encode_raw_capsule(0x01, b"\x00\x05" + bytes(4) + b"\x20")


def test_a_malformed_capsule_ends_only_its_session(link: Link) -> None:
    peers = Peers(link)
    peers.open()
    first = peers.client.stream_id
    second = RawClient(peers, build_connect_ip_request("relay.example"))
    peers.run(lambda: len(peers.server_got(SessionRequested)) == 2)
    peers.run()

    second.h3.send_data(first, BAD_CAPSULE)
    peers.run(
        lambda: bool(peers.server_got(SessionClosed)) and bool(peers.client_got(SessionClosed))
    )
    peers.run()
    [closed] = peers.server_got(SessionClosed)
    assert closed.stream_id == first and closed.error and "malformed capsule" in closed.reason
    [client_closed] = peers.client_got(SessionClosed)
    assert client_closed.error and f"0x{ErrorCode.H3_MESSAGE_ERROR:x}" in client_closed.reason
    assert peers.client.state is ClientState.CLOSED

    # The other session on the connection still carries packets.
    assert peers.srv.session_ids == (second.stream_id,)
    assert peers.srv.send_packet(second.stream_id, ipv4_packet(80, 7)) is SendStatus.SENT
    second.h3.send_data(second.stream_id, encode_raw_capsule(0, b"\x00" + ipv4_packet(80, 9)))
    peers.run()
    assert PacketReceived(second.stream_id, ipv4_packet(80, 9)) in peers.server_events
    assert not link.client.closed and not peers.server_quic.closed


def test_a_malformed_capsule_from_the_relay_ends_the_session(link: Link) -> None:
    peers = Peers(link)
    peers.open()
    sid = peers.client.stream_id
    peers.srv.h3.send_data(sid, BAD_CAPSULE)
    peers.run(lambda: bool(peers.server_got(SessionClosed)))
    peers.run()
    [closed] = peers.client_got(SessionClosed)
    assert closed.error and "malformed capsule" in closed.reason
    [server_closed] = peers.server_got(SessionClosed)
    assert server_closed.error and f"0x{ErrorCode.H3_MESSAGE_ERROR:x}" in server_closed.reason
    assert not link.client.closed


def test_a_capsule_cut_by_fin_is_malformed() -> None:
    peers, client, _ = memory_peers()
    peers.open()
    sid = peers.client.stream_id
    client.send_stream(sid, encode_frame(FrameType.DATA, b"\x00\x10\x00"), end_stream=True)
    peers.run()
    [closed] = peers.server_got(SessionClosed)
    assert closed.error and "malformed capsule" in closed.reason


def test_too_large_capsules_are_malformed() -> None:
    peers, _, _ = memory_peers(PacketMode.STREAM, server_options={"max_capsule_size": 1000})
    peers.open()
    assert peers.client.send_packet(ipv4_packet(1200)) is SendStatus.SENT
    peers.run()
    [closed] = peers.server_got(SessionClosed)
    assert closed.error and not peers.server_got(PacketReceived)


def test_unknown_contexts_and_malformed_datagrams_are_dropped_and_reported() -> None:
    peers, client, server = memory_peers()
    peers.open()
    sid = peers.client.stream_id
    quarter = encode_varint(sid // 4)
    for payload in (quarter + b"\x05" + ipv4_packet(), quarter, b"", b"\x7f", b"\x02\x00x"):
        client.send_datagram(payload)
    for payload in (quarter + b"\x05" + ipv4_packet(), quarter, b"", b"\x07\x00x"):
        server.send_datagram(payload)
    # A datagram's context ID may be encoded in more bytes than needed (RFC 9000 §16).
    client.send_datagram(quarter + b"\x40\x00" + b"long-zero")
    server.send_datagram(b"\x40" + quarter + b"\x00" + b"long-quarter")
    peers.run()

    assert [e for e in peers.server_events if isinstance(e, PacketDropped | PacketReceived)] == [
        PacketDropped(sid, DropReason.UNKNOWN_CONTEXT),
        PacketDropped(sid, DropReason.MALFORMED_DATAGRAM),
        PacketDropped(-1, DropReason.MALFORMED_DATAGRAM),
        PacketDropped(-1, DropReason.MALFORMED_DATAGRAM),
        PacketDropped(8, DropReason.UNKNOWN_STREAM),
        PacketReceived(sid, b"long-zero"),
    ]
    assert [e for e in peers.client_events if isinstance(e, PacketDropped | PacketReceived)] == [
        PacketDropped(sid, DropReason.UNKNOWN_CONTEXT),
        PacketDropped(sid, DropReason.MALFORMED_DATAGRAM),
        PacketDropped(-1, DropReason.MALFORMED_DATAGRAM),
        PacketDropped(28, DropReason.UNKNOWN_STREAM),
        PacketReceived(sid, b"long-quarter"),
    ]
    assert not client.closed and not server.closed


def test_capsules_with_an_unknown_context_are_dropped_both_ways() -> None:
    peers, _, _ = memory_peers(PacketMode.STREAM)
    peers.open()
    sid = peers.client.stream_id
    odd = encode_raw_capsule(0, b"\x05" + ipv4_packet()) + encode_raw_capsule(0, b"")
    peers.client.h3.send_data(sid, odd)
    peers.srv.h3.send_data(sid, odd)
    peers.run()
    expected = [
        PacketDropped(sid, DropReason.UNKNOWN_CONTEXT),
        PacketDropped(sid, DropReason.MALFORMED_DATAGRAM),
    ]
    assert peers.server_got(PacketDropped) == expected
    assert peers.client_got(PacketDropped) == expected
    assert not peers.client_got(SessionClosed)


def test_trailers_are_ignored() -> None:
    peers, _, _ = memory_peers()
    peers.open()
    sid = peers.client.stream_id
    before = len(peers.server_events)
    peers.client.h3.send_headers(sid, [(b"x-trailer", b"1")])
    peers.srv.h3.send_headers(sid, [(b"x-trailer", b"2")])
    peers.run()
    assert len(peers.server_events) == before and peers.client.state is ClientState.OPEN
    peers.client.close()
    peers.run()
    assert peers.server_got(SessionClosed) == [SessionClosed(sid, "peer ended the stream", False)]
    assert len(peers.server_got(SessionRequested)) == 1


# ---- resets --------------------------------------------------------------------------------------


def test_a_reset_from_either_side_closes_the_session(link: Link) -> None:
    peers = Peers(link)
    peers.open()
    sid = peers.client.stream_id
    peers.srv.close_session(sid, error_code=ErrorCode.H3_REQUEST_CANCELLED)
    peers.run()
    [closed] = peers.client_got(SessionClosed)
    assert closed.error and "0x10c" in closed.reason
    assert not peers.server_got(SessionClosed)


def test_a_reset_with_no_error_is_a_normal_end() -> None:
    peers, client, _ = memory_peers()
    peers.open()
    sid = peers.client.stream_id
    client.reset_stream(sid, ErrorCode.H3_NO_ERROR)
    peers.run()
    assert peers.server_got(SessionClosed) == [
        SessionClosed(sid, "peer reset the stream (error 0x100)", False)
    ]


def test_stop_sending_from_the_client_closes_the_session() -> None:
    peers, client, server = memory_peers()
    peers.open()
    sid = peers.client.stream_id
    client.stop_stream(sid, ErrorCode.H3_REQUEST_CANCELLED)
    peers.run()
    [closed] = peers.server_got(SessionClosed)
    assert closed.error and "stopped reading" in closed.reason
    assert (sid, ErrorCode.H3_REQUEST_CANCELLED) in server.reset_calls


def test_a_request_ended_before_the_answer_is_reset_not_answered() -> None:
    answered: list[SessionRequested] = []
    peers, _, server = memory_peers(answer=lambda p, e: answered.append(e))
    peers.run()
    sid = peers.client.stream_id
    peers.client.close()
    peers.run()
    assert peers.server_got(SessionClosed) == [SessionClosed(sid, "peer ended the stream", False)]
    assert (sid, ErrorCode.H3_REQUEST_CANCELLED) in server.reset_calls
    peers.srv.accept(sid, PacketMode.DATAGRAM)  # too late: nothing happens
    peers.run()
    assert peers.client_got(SessionAccepted) == []


def test_connection_close_before_the_answer() -> None:
    peers, client, _ = memory_peers(answer=lambda p, e: None)
    peers.run()
    sid = peers.client.stream_id
    assert peers.client.state is ClientState.REQUESTED
    client.close(0x10C, "gave up")
    peers.run()
    assert peers.server_events[-2:] == [
        SessionClosed(sid, "gave up", True),
        ConnectionClosed(0x10C, "gave up", True, True),
    ]
    assert peers.client_events == [
        SessionClosed(sid, "gave up", True),
        ConnectionClosed(0x10C, "gave up", False, True),
    ]


def test_an_h3_protocol_error_closes_every_session() -> None:
    peers, client, _ = memory_peers()
    peers.open()
    sid = peers.client.stream_id
    client.send_stream(
        2, encode_frame(FrameType.SETTINGS, b"")
    )  # SETTINGS again, on the control stream
    peers.run()
    assert peers.server_events[-2:] == [
        SessionClosed(sid, "second SETTINGS frame", True),
        ConnectionClosed(ErrorCode.H3_FRAME_UNEXPECTED, "second SETTINGS frame", False, True),
    ]
    assert peers.client_events[-1] == ConnectionClosed(
        ErrorCode.H3_FRAME_UNEXPECTED, "second SETTINGS frame", True, True
    )


# ---- back-pressure and loss ----------------------------------------------------------------------


def test_a_packet_too_big_for_one_datagram_frame() -> None:
    peers, _, _ = memory_peers()
    peers.open()
    sid = peers.client.stream_id
    largest = peers.client.max_packet
    assert largest == 1200 - 2 and peers.srv.max_packet(sid) == largest
    assert peers.client.send_packet(bytes(largest + 1)) is SendStatus.TOO_BIG
    assert peers.srv.send_packet(sid, bytes(largest + 1)) is SendStatus.TOO_BIG
    assert peers.client.send_packet(bytes(largest)) is SendStatus.SENT
    peers.run()
    assert peers.server_got(PacketReceived) == [PacketReceived(sid, bytes(largest))]


def test_the_datagram_queue_is_bounded() -> None:
    peers, _, _ = memory_peers(datagram_queue=3)
    peers.open()
    sid = peers.client.stream_id
    statuses = [peers.srv.send_packet(sid, ipv4_packet()) for _ in range(4)]
    assert statuses == [SendStatus.SENT] * 3 + [SendStatus.QUEUE_FULL]
    peers.run()
    assert len(peers.client_got(PacketReceived)) == 3


def test_the_stream_backlog_is_bounded() -> None:
    peers, client, server = memory_peers(
        PacketMode.STREAM,
        max_stream_backlog=1000,
        server_options={"max_stream_backlog": 1000},
    )
    peers.open()
    sid = peers.client.stream_id
    client.hold_streams = server.hold_streams = True
    up = [peers.client.send_packet(ipv4_packet(400)) for _ in range(4)]
    down = [peers.srv.send_packet(sid, ipv4_packet(400)) for _ in range(4)]
    assert up == down == [SendStatus.SENT] * 3 + [SendStatus.QUEUE_FULL]
    client.hold_streams = server.hold_streams = False
    peers.run()
    assert len(peers.server_got(PacketReceived)) == len(peers.client_got(PacketReceived)) == 3
    assert peers.client.send_packet(ipv4_packet(400)) is SendStatus.SENT


def test_lost_datagrams_are_just_gone() -> None:
    peers, _, _ = memory_peers()
    peers.open()
    peers.link.lose_datagrams(True)
    assert peers.client.send_packet(ipv4_packet(100, 1)) is SendStatus.SENT
    peers.run()
    peers.link.lose_datagrams(False)
    assert peers.client.send_packet(ipv4_packet(100, 2)) is SendStatus.SENT
    peers.run()
    assert [e.packet for e in peers.server_got(PacketReceived)] == [ipv4_packet(100, 2)]
    assert peers.client.state is ClientState.OPEN


def test_sending_before_the_session_is_open_says_closed() -> None:
    peers, _, _ = memory_peers(answer=lambda p, e: None)
    assert peers.client.send_packet(ipv4_packet()) is SendStatus.CLOSED
    assert peers.client.max_packet == 0
    peers.run()
    assert peers.client.state is ClientState.REQUESTED
    with pytest.raises(SessionError):
        peers.client.send_capsules([ASSIGN])
    assert peers.srv.send_packet(peers.client.stream_id, ipv4_packet()) is SendStatus.CLOSED


def test_address_assign_replaces_the_addresses() -> None:
    peers, _, _ = memory_peers()
    peers.open()
    peers.srv.send_capsules(peers.client.stream_id, [AddressAssign(())])
    peers.run()
    assert peers.client_got(AddressesAssigned)[-1] == AddressesAssigned(())
    assert peers.client.addresses == ()
    assert ipaddress.ip_network("10.100.0.2/32") not in peers.client.addresses


# ---- STOP_SENDING overtaking the answer (as real engines deliver it) ------------------------


def stop_first(peers: Peers) -> None:
    """Move the relay's last STOP_SENDING ahead of everything else it has to send."""
    quic = peers.server_quic
    assert isinstance(quic, MemoryQuicConn)
    stops = [f for f in quic.outbox if isinstance(f, StopFrame)]
    quic.outbox = stops + [f for f in quic.outbox if not isinstance(f, StopFrame)]


def test_a_refusal_overtaken_by_its_stop_sending_is_still_a_refusal() -> None:
    def reject(peers: Peers, event: SessionRequested) -> None:
        peers.srv.reject(event.stream_id, 403)
        stop_first(peers)

    peers, client, _ = memory_peers(answer=reject)
    peers.run()
    assert [type(e) for e in peers.client_events] == [SessionRefused]
    assert peers.client_got(SessionRefused)[0].status == 403
    assert (peers.client.stream_id, ErrorCode.H3_NO_ERROR) in client.reset_calls


def test_an_acceptance_after_stop_sending_closes_at_once() -> None:
    def accept_but_stop(peers: Peers, event: SessionRequested) -> None:
        peers.srv.accept(event.stream_id, event.mode, [ASSIGN, ROUTES])
        peers.server_quic.stop_stream(event.stream_id, ErrorCode.H3_NO_ERROR)
        stop_first(peers)

    peers, _, _ = memory_peers(answer=accept_but_stop)
    peers.run()
    kinds = [type(e) for e in peers.client_events]
    assert kinds[:2] == [SessionAccepted, SessionClosed]
    assert peers.client.state is ClientState.CLOSED


def test_a_stream_reset_under_the_session_makes_sending_report_closed() -> None:
    peers, _, server = memory_peers(PacketMode.STREAM)
    peers.open()
    sid = peers.client.stream_id
    server.stop_stream(sid, ErrorCode.H3_REQUEST_CANCELLED)
    peers.link.exchange()  # the client's engine has reset its side; the event waits
    assert peers.client.state is ClientState.OPEN
    assert peers.client.send_packet(ipv4_packet()) is SendStatus.CLOSED
    peers.client.send_capsules([ASSIGN])  # quietly nothing
    peers.run()
    [closed] = peers.client_got(SessionClosed)
    assert closed.error and "stopped reading" in closed.reason


def test_the_relay_answers_a_fin_with_its_own_and_then_forgets_the_stream() -> None:
    peers, client, server = memory_peers()
    peers.open()
    sid = peers.client.stream_id
    assert peers.srv.state(sid) is ServerSessionState.OPEN
    peers.client.close()
    peers.run()
    assert server.stream_finished(sid) and client.stream_finished(sid)
    assert peers.srv.state(sid) is ServerSessionState.CLOSED
    assert peers.srv.receive(DatagramReceived(b"\x00\x00x")) == [
        PacketDropped(sid, DropReason.UNKNOWN_STREAM)
    ]


def test_a_session_closed_by_the_relay_ignores_what_still_arrives() -> None:
    peers, client, _ = memory_peers(PacketMode.STREAM)
    peers.open()
    sid = peers.client.stream_id
    peers.srv.close_session(sid)
    client.send_stream(sid, encode_frame(FrameType.DATA, encode_raw_capsule(0, b"\x00late")))
    peers.run()
    assert not peers.server_got(PacketReceived) and not peers.server_got(SessionClosed)
    assert peers.srv.state(sid) is ServerSessionState.CLOSED
    assert peers.srv.session_ids == ()


def client_streams_first(peers: Peers, stream_id: int) -> None:
    """Deliver what the client has for ``stream_id`` ahead of the rest (a lost packet)."""
    quic = peers.link.client
    assert isinstance(quic, MemoryQuicConn)
    first = [f for f in quic.outbox if isinstance(f, StreamFrame) and f.stream_id == stream_id]
    quic.outbox = first + [f for f in quic.outbox if f not in first]


def test_a_request_that_overtakes_the_clients_settings_waits_for_them() -> None:
    client, server = memory_pair()
    link = MemoryLink(client, server)
    # The server's SETTINGS reach the client; the client's control stream is held back.
    peers = Peers(link)
    client.hold_streams = True
    peers.run()
    client.hold_streams = False
    assert peers.client.state is ClientState.REQUESTED
    client_streams_first(peers, peers.client.stream_id)
    frames = client.take()
    request, rest = frames[:1], frames[1:]
    for frame in request:
        server.arrive(frame, None)
    peers.collect()
    assert not peers.server_got(SessionRequested)  # parked until the SETTINGS come
    for frame in rest:
        server.arrive(frame, None)
    peers.collect()
    [requested] = peers.server_got(SessionRequested)
    assert requested.mode is PacketMode.DATAGRAM
    peers.open()
    assert peers.client.mode is PacketMode.DATAGRAM and peers.client.ready


def test_a_client_that_never_sends_settings_gets_stream_mode_after_a_while() -> None:
    quic = MemoryQuicConn(False)
    relay = ServerConnection(quic)
    head = MemoryQuicConn(True)
    H3Connection(head, is_client=True).send_headers(0, build_connect_ip_request("relay.example"))
    request = head.outbox[-1]
    assert isinstance(request, StreamFrame)
    assert relay.receive(StreamDataReceived(0, request.data, False)) == []
    filler = encode_frame(FrameType.DATA, encode_raw_capsule(0x29, bytes(70_000)))
    events = relay.receive(StreamDataReceived(0, filler, False))
    assert [type(e) for e in events] == [SessionRequested]
    assert events[0].mode is PacketMode.STREAM  # type: ignore[union-attr]
