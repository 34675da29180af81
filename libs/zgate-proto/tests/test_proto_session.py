"""CONNECT-IP sessions (zgate_proto.session) between a ClientSession and a ServerConnection:
over the in-memory QuicConn pair, and over real aioquic and qh3 connections in memory."""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from zgate_pki import PkiPaths
from zgate_proto.capsules import (
    AddressAssign,
    AddressRequest,
    AssignedAddress,
    IPAddressRange,
    RequestedAddress,
    RouteAdvertisement,
)
from zgate_proto.engines.base import QuicConn, SendStatus
from zgate_proto.session import (
    MODE_HEADER,
    AddressesAssigned,
    AddressRequested,
    ClientEvent,
    ClientSession,
    ClientState,
    ConnectionClosed,
    PacketMode,
    PacketReceived,
    RoutesAdvertised,
    ServerConnection,
    ServerEvent,
    SessionAccepted,
    SessionClosed,
    SessionRequested,
)

sys.path.insert(0, str(Path(__file__).parent))  # the in-memory links live beside this file
from test_proto_http3_memquic import (
    Link,
    MemoryLink,
    drain,
    engine_link,
    make_pki,
    memory_pair,
)

AGENT = ipaddress.ip_network("10.100.0.2/32")
EVERYWHERE = IPAddressRange(
    ipaddress.ip_address("0.0.0.0"), ipaddress.ip_address("255.255.255.255")
)
ASSIGN = AddressAssign((AssignedAddress(0, AGENT),))
ROUTES = RouteAdvertisement((EVERYWHERE,))


def ipv4_packet(size: int = 60, marker: int = 0) -> bytes:
    """Bytes that look enough like an IPv4 packet for the session layer (it never parses)."""
    body = bytes((marker + i) % 256 for i in range(size - 20))
    return b"\x45\x00" + size.to_bytes(2, "big") + bytes(16) + body


Answer = Callable[["Peers", SessionRequested], None]


def accept_all(peers: Peers, event: SessionRequested) -> None:
    """The relay's usual answer: 200, an address and the routes."""
    assert peers.server is not None
    peers.server.accept(event.stream_id, event.mode, [ASSIGN, ROUTES])


class Peers:
    """A ClientSession and the ServerConnection it reaches over ``link``; the server's
    caller answers each request with ``answer`` as soon as it is seen."""

    def __init__(
        self,
        link: Link,
        *,
        mode: PacketMode = PacketMode.DATAGRAM,
        answer: Answer = accept_all,
        server_options: dict[str, Any] | None = None,
        **client_options: Any,
    ) -> None:
        self.link = link
        self.answer = answer
        self.server_options = server_options or {}
        self.client = ClientSession(
            link.client, authority="relay.example", mode=mode, **client_options
        )
        self.server: ServerConnection | None = None
        self.client_events: list[ClientEvent] = []
        self.server_events: list[ServerEvent] = []
        self.collect()

    @property
    def srv(self) -> ServerConnection:
        assert self.server is not None, "the server connection was never made"
        return self.server

    @property
    def server_quic(self) -> QuicConn:
        assert self.link.server is not None
        return self.link.server

    def collect(self) -> None:
        drain(self.link.client, lambda e: self.client_events.extend(self.client.receive(e)))
        if self.server is None and self.link.server is not None:
            self.server = ServerConnection(self.link.server, **self.server_options)
        drain(self.link.server, self._server_event)

    def _server_event(self, event: Any) -> None:
        for out in self.srv.receive(event):
            self.server_events.append(out)
            if isinstance(out, SessionRequested):
                self.answer(self, out)

    def run(self, until: Callable[[], bool] | None = None, *, max_steps: int = 3000) -> None:
        """Move bytes (firing timers when nothing moves) until ``until`` holds, or until the
        link is quiet when there is no ``until``."""
        for _ in range(max_steps):
            if until is not None and until():
                return
            if self.link.exchange():
                self.collect()
                continue
            if self.link.advance():
                self.collect()
                continue
            if until is None or until():
                return
            break
        raise AssertionError(
            f"not reached: client {self.client_events[-5:]}, server {self.server_events[-5:]}"
        )

    def open(self) -> None:
        self.run(lambda: self.client.ready)
        self.run()

    # ---- reading the events

    def client_got(self, kind: type) -> list[Any]:
        return [e for e in self.client_events if isinstance(e, kind)]

    def server_got(self, kind: type) -> list[Any]:
        return [e for e in self.server_events if isinstance(e, kind)]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    return make_pki(tmp_path_factory.mktemp("pki") / "pki")


LINKS = ["memory", "aioquic", "qh3"]


@pytest.fixture(params=LINKS)
def link(request: pytest.FixtureRequest, pki: PkiPaths) -> Link:
    if request.param == "memory":
        return MemoryLink(*memory_pair())
    return engine_link(request.param, pki)


def sent_packets(
    peers: Peers, count: int, *, size: int = 100, to_server: bool = True
) -> list[bytes]:
    packets = [ipv4_packet(size, i) for i in range(count)]
    for packet in packets:
        if to_server:
            assert peers.client.send_packet(packet) is SendStatus.SENT
        else:
            assert peers.srv.send_packet(peers.client.stream_id, packet) is SendStatus.SENT
    return packets


# ---- over every link ---------------------------------------------------------------------------


def test_extended_connect_opens_a_ready_session(link: Link) -> None:
    peers = Peers(link)
    assert peers.client.state is ClientState.WAITING_SETTINGS
    assert not peers.client.ready
    peers.open()

    [requested] = peers.server_got(SessionRequested)
    assert requested.mode is PacketMode.DATAGRAM
    assert (MODE_HEADER, b"datagram") in requested.headers
    assert (b":protocol", b"connect-ip") in requested.headers
    assert peers.srv.session_ids == (requested.stream_id,)
    assert peers.srv.mode(requested.stream_id) is PacketMode.DATAGRAM

    client = peers.client
    assert client.state is ClientState.OPEN and client.ready
    assert client.stream_id == requested.stream_id
    [accepted] = peers.client_got(SessionAccepted)
    assert accepted.mode is PacketMode.DATAGRAM
    assert (b":status", b"200") in accepted.headers and (
        MODE_HEADER,
        b"datagram",
    ) in accepted.headers
    assert peers.client_got(AddressesAssigned) == [AddressesAssigned((AGENT,))]
    assert peers.client_got(RoutesAdvertised) == [RoutesAdvertised(client.stream_id, (EVERYWHERE,))]
    assert client.addresses == (AGENT,) and client.routes == (EVERYWHERE,)
    assert 1000 < client.max_packet < 1200
    assert 1000 < peers.srv.max_packet(client.stream_id) < 1200
    assert not peers.client_got(ConnectionClosed) and not peers.server_got(ConnectionClosed)


@pytest.mark.parametrize("mode", list(PacketMode))
def test_packets_flow_both_ways(link: Link, mode: PacketMode) -> None:
    peers = Peers(link, mode=mode)
    peers.open()
    assert peers.client.mode is mode and peers.srv.mode(peers.client.stream_id) is mode
    sid = peers.client.stream_id

    up = sent_packets(peers, 20, size=900)
    down = sent_packets(peers, 20, size=700, to_server=False)
    peers.run(
        lambda: (
            len(peers.server_got(PacketReceived)) == 20
            and len(peers.client_got(PacketReceived)) == 20
        )
    )

    received_up = [e.packet for e in peers.server_got(PacketReceived)]
    received_down = [e.packet for e in peers.client_got(PacketReceived)]
    assert {e.stream_id for e in peers.server_got(PacketReceived)} == {sid}
    if mode is PacketMode.STREAM:  # reliable and ordered
        assert received_up == up and received_down == down
    else:
        assert sorted(received_up) == sorted(up) and sorted(received_down) == sorted(down)


def test_either_side_ending_the_stream_closes_the_session(link: Link) -> None:
    peers = Peers(link)
    peers.open()
    sid = peers.client.stream_id
    peers.client.close()
    assert peers.client.state is ClientState.CLOSED
    assert peers.client.send_packet(ipv4_packet()) is SendStatus.CLOSED
    peers.run()
    assert peers.server_got(SessionClosed) == [SessionClosed(sid, "peer ended the stream", False)]
    assert peers.srv.session_ids == ()
    assert peers.srv.send_packet(sid, ipv4_packet()) is SendStatus.CLOSED
    assert not peers.client_got(SessionClosed)  # our own close is no news to us


def test_the_relay_ending_the_stream_closes_the_session(link: Link) -> None:
    peers = Peers(link)
    peers.open()
    sid = peers.client.stream_id
    peers.srv.close_session(sid)
    peers.run()
    assert peers.client_got(SessionClosed) == [
        SessionClosed(sid, "the relay ended the CONNECT-IP stream", False)
    ]
    assert peers.client.state is ClientState.CLOSED
    assert not peers.server_got(SessionClosed)


def test_closing_the_connection_closes_each_session_first(link: Link) -> None:
    peers = Peers(link)
    peers.open()
    sid = peers.client.stream_id
    link.client.close(0x100, "agent stopping")
    peers.run(lambda: bool(peers.server_got(ConnectionClosed)))
    peers.run(lambda: bool(peers.client_got(ConnectionClosed)))

    assert peers.server_events[-2:] == [
        SessionClosed(sid, "agent stopping", False),
        ConnectionClosed(0x100, "agent stopping", True, True),
    ]
    assert peers.client_events[-2:] == [
        SessionClosed(sid, "agent stopping", False),
        ConnectionClosed(0x100, "agent stopping", False, True),
    ]
    assert peers.client.state is ClientState.CLOSED
    assert peers.srv.session_ids == ()


def test_address_request_and_route_advertisement_reach_the_relay(link: Link) -> None:
    peers = Peers(link)
    peers.open()
    sid = peers.client.stream_id
    request = AddressRequest((RequestedAddress(1, ipaddress.ip_network("10.100.0.9/32")),))
    site = RouteAdvertisement(
        (IPAddressRange.from_network(ipaddress.ip_network("192.168.1.0/24")),)
    )
    peers.client.send_capsules([request, site])
    peers.run()
    assert peers.server_got(AddressRequested) == [AddressRequested(sid, request)]
    assert peers.server_got(RoutesAdvertised) == [RoutesAdvertised(sid, site.ranges)]

    reassigned = AddressAssign((AssignedAddress(1, ipaddress.ip_network("10.100.0.9/32")),))
    peers.srv.send_capsules(sid, [reassigned])
    peers.run()
    assert peers.client_got(AddressesAssigned)[-1] == AddressesAssigned(
        (ipaddress.ip_network("10.100.0.9/32"),)
    )
    assert peers.client.addresses == (ipaddress.ip_network("10.100.0.9/32"),)


def test_the_largest_packet_fits_one_datagram_and_one_byte_more_does_not(link: Link) -> None:
    peers = Peers(link)
    peers.open()
    sid = peers.client.stream_id
    up, down = peers.client.max_packet, peers.srv.max_packet(sid)
    assert up > 1000 and down > 1000
    assert peers.client.send_packet(bytes(up + 1)) is SendStatus.TOO_BIG
    assert peers.srv.send_packet(sid, bytes(down + 1)) is SendStatus.TOO_BIG
    assert peers.client.send_packet(b"\x45" * up) is SendStatus.SENT
    assert peers.srv.send_packet(sid, b"\x46" * down) is SendStatus.SENT
    peers.run(lambda: bool(peers.server_got(PacketReceived) and peers.client_got(PacketReceived)))
    assert peers.server_got(PacketReceived) == [PacketReceived(sid, b"\x45" * up)]
    assert peers.client_got(PacketReceived) == [PacketReceived(sid, b"\x46" * down)]


def test_a_client_reset_closes_the_session_on_the_relay(link: Link) -> None:
    peers = Peers(link)
    peers.open()
    sid = peers.client.stream_id
    link.client.reset_stream(sid, 0x10C)
    peers.run(lambda: bool(peers.server_got(SessionClosed)))
    assert peers.server_got(SessionClosed) == [
        SessionClosed(sid, "peer reset the stream (error 0x10c)", True)
    ]
    assert peers.srv.session_ids == ()
