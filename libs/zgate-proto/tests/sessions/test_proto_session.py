"""CONNECT-IP sessions (zgate_proto.session) between a ClientSession and a ServerConnection:
over the in-memory QuicConn pair, and over real aioquic and qh3 connections in memory."""

from __future__ import annotations

import ipaddress

import pytest

from zgate_proto.capsules import (
    AddressAssign,
    AddressRequest,
    AssignedAddress,
    IPAddressRange,
    RequestedAddress,
    RouteAdvertisement,
)
from zgate_proto.engines.base import SendStatus
from zgate_proto.session import (
    MODE_HEADER,
    AddressesAssigned,
    AddressRequested,
    ClientState,
    ConnectionClosed,
    PacketMode,
    PacketReceived,
    RoutesAdvertised,
    SessionAccepted,
    SessionClosed,
    SessionRequested,
)
from zgate_testkit.memquic import Link
from zgate_testkit.sessions import (
    AGENT,
    EVERYWHERE,
    Peers,
    ipv4_packet,
)


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
