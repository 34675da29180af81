"""The aioquic layer, between two in-memory peers (no sockets, a fake clock)."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from aioquic.h3.connection import H3Connection, Setting
from aioquic.h3.events import DatagramReceived, DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from zgate_proto.capsules import CapsuleType, DatagramCapsule
from zgate_proto.errors import DecodeError
from zgate_proto.h3 import ConnectIpH3Connection, ConnectIpStream, PacketMode, SendStatus
from zgate_proto.request import build_connect_ip_request, parse_connect_ip_request
from zgate_proto.varint import encode_varint

ADDR = ("127.0.0.1", 4433)


def self_signed() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


@dataclass
class Peers:
    """A client and a server H3 connection joined in memory."""

    client_quic: QuicConnection
    server_quic: QuicConnection
    client: H3Connection
    server: H3Connection
    now: float = 1.0
    client_events: list[H3Event] = field(default_factory=list)
    server_events: list[H3Event] = field(default_factory=list)

    def pump(self, until: Callable[[Peers], bool], steps: int = 50) -> None:
        """Exchange datagrams (advancing the clock when idle) until `until` holds."""
        for _ in range(steps):
            moved = False
            for data, _ in self.client_quic.datagrams_to_send(now=self.now):
                self.server_quic.receive_datagram(data, ADDR, now=self.now)
                moved = True
            for data, _ in self.server_quic.datagrams_to_send(now=self.now):
                self.client_quic.receive_datagram(data, ADDR, now=self.now)
                moved = True
            for quic, h3, events in (
                (self.client_quic, self.client, self.client_events),
                (self.server_quic, self.server, self.server_events),
            ):
                while (event := quic.next_event()) is not None:
                    events.extend(h3.handle_event(event))
            if until(self):
                return
            if not moved:
                self.now += 0.05
        raise AssertionError("the peers never reached the awaited state")


def make_peers(
    server_h3: type[H3Connection] = ConnectIpH3Connection,
    *,
    max_datagram_size: int = 1350,
    datagram_frames: bool = True,
) -> Peers:
    cert, key = self_signed()
    frame = 65536 if datagram_frames else None
    server_config = QuicConfiguration(
        is_client=False,
        alpn_protocols=["h3"],
        max_datagram_frame_size=frame,
        max_datagram_size=max_datagram_size,
    )
    server_config.certificate = cert
    server_config.private_key = key
    client_config = QuicConfiguration(
        is_client=True,
        alpn_protocols=["h3"],
        max_datagram_frame_size=65536,
        max_datagram_size=max_datagram_size,
        server_name="localhost",
    )
    client_config.load_verify_locations(cadata=cert.public_bytes(Encoding.PEM))
    client_quic = QuicConnection(configuration=client_config)
    server_quic = QuicConnection(
        configuration=server_config,
        original_destination_connection_id=client_quic.original_destination_connection_id,
    )
    client_quic.connect(ADDR, now=1.0)
    peers = Peers(
        client_quic, server_quic, ConnectIpH3Connection(client_quic), server_h3(server_quic)
    )
    peers.pump(
        lambda p: p.client.received_settings is not None and p.server.received_settings is not None
    )
    return peers


def open_stream(
    peers: Peers, mode: PacketMode, **kw: int
) -> tuple[ConnectIpStream, ConnectIpStream]:
    """A CONNECT-IP stream on both sides (the client's request, the server's 200)."""
    sid = peers.client_quic.get_next_available_stream_id()
    peers.client.send_headers(sid, build_connect_ip_request("localhost:4433"), end_stream=False)
    peers.pump(lambda p: any(isinstance(e, HeadersReceived) for e in p.server_events))
    request = next(e for e in peers.server_events if isinstance(e, HeadersReceived))
    assert parse_connect_ip_request(request.headers).ipproto is None
    assert isinstance(peers.server, ConnectIpH3Connection)
    peers.server.send_headers(sid, [(b":status", b"200"), (b"capsule-protocol", b"?1")])
    assert isinstance(peers.client, ConnectIpH3Connection)
    return (
        ConnectIpStream(peers.client, sid, mode, **kw),
        ConnectIpStream(peers.server, sid, mode, **kw),
    )


def test_both_sides_advertise_connect_and_datagrams_without_webtransport() -> None:
    peers = make_peers()
    for settings in (peers.client.received_settings, peers.server.received_settings):
        assert settings is not None
        assert settings[Setting.ENABLE_CONNECT_PROTOCOL] == 1
        assert settings[Setting.H3_DATAGRAM] == 1
        assert Setting.ENABLE_WEBTRANSPORT not in settings
    assert isinstance(peers.client, ConnectIpH3Connection)
    assert peers.client.peer_supports_extended_connect()
    assert peers.client.peer_supports_datagrams()


def test_a_plain_http3_peer_offers_neither() -> None:
    peers = make_peers(H3Connection, datagram_frames=False)
    assert isinstance(peers.client, ConnectIpH3Connection)
    assert peers.client.peer_settings_received
    assert not peers.client.peer_supports_datagrams()
    settings = peers.client.received_settings or {}
    # aioquic's own H3Connection sends ENABLE_CONNECT_PROTOCOL but no H3_DATAGRAM.
    assert settings.get(Setting.H3_DATAGRAM) != 1


def udp_packet(size: int) -> bytes:
    """Bytes that look like an IPv4 packet of `size` (the layer does not parse them)."""
    return b"\x45" + bytes(size - 1)


def test_datagram_mode_carries_packets_with_context_zero() -> None:
    peers = make_peers()
    client, _ = open_stream(peers, PacketMode.DATAGRAM)
    packet = udp_packet(1280)
    assert client.max_datagram_packet >= 1280  # a minimum-MTU IPv6 packet always fits
    assert client.send_packet(packet) is SendStatus.SENT
    peers.pump(lambda p: any(isinstance(e, DatagramReceived) for e in p.server_events))
    got = next(e for e in peers.server_events if isinstance(e, DatagramReceived))
    assert got.stream_id == client.stream_id
    assert got.data[0] == 0  # context ID 0
    assert ConnectIpStream.ip_packet_from_datagram(got.data) == packet


def test_datagram_too_big_for_the_path_is_refused_not_queued() -> None:
    peers = make_peers(max_datagram_size=1350)
    client, _ = open_stream(peers, PacketMode.DATAGRAM)
    limit = client.max_datagram_packet
    assert client.send_packet(udp_packet(limit + 1)) is SendStatus.TOO_BIG
    assert client.queue_depth == 0
    assert client.send_packet(udp_packet(limit)) is SendStatus.SENT
    # The largest accepted packet really fits: it leaves the queue.
    peers.pump(lambda p: any(isinstance(e, DatagramReceived) for e in p.server_events))
    assert client.queue_depth == 0


def test_datagram_queue_is_bounded() -> None:
    peers = make_peers()
    client, _ = open_stream(peers, PacketMode.DATAGRAM, max_queued=3)
    results = [client.send_packet(udp_packet(100)) for _ in range(5)]
    assert results == [SendStatus.SENT] * 3 + [SendStatus.QUEUE_FULL] * 2
    assert client.queue_depth == 3


def test_stream_mode_carries_packets_as_datagram_capsules() -> None:
    peers = make_peers()
    client, server = open_stream(peers, PacketMode.STREAM)
    packets = [udp_packet(n) for n in (40, 1400, 9000)]  # no path limit in stream mode
    for packet in packets:
        assert client.send_packet(packet) is SendStatus.SENT
    peers.pump(
        lambda p: (
            sum(len(e.data) for e in p.server_events if isinstance(e, DataReceived))
            >= sum(map(len, packets))
        )
    )
    capsules = []
    for event in peers.server_events:
        if isinstance(event, DataReceived):
            capsules += server.receive_data(event.data, event.stream_ended).capsules
    assert all(isinstance(c, DatagramCapsule) for c in capsules)
    got = [ConnectIpStream.ip_packet_from_capsule(c) for c in capsules]  # type: ignore[arg-type]
    assert got == packets


def test_stream_mode_backlog_is_bounded() -> None:
    peers = make_peers()
    client, _ = open_stream(peers, PacketMode.STREAM, max_stream_backlog=10_000)
    results = [client.send_packet(udp_packet(1000)) for _ in range(20)]
    # The first packets fill the backlog (nothing is sent while no one pumps); then drops.
    assert results[:10] == [SendStatus.SENT] * 10
    assert SendStatus.QUEUE_FULL in results[10:]
    assert client.stream_backlog <= 10_000 + 1100
    # Once the data leaves, the stream accepts packets again.
    peers.pump(lambda p: client.stream_backlog == 0)
    assert client.send_packet(udp_packet(1000)) is SendStatus.SENT


def test_a_capsule_cut_short_by_fin_is_malformed() -> None:
    peers = make_peers()
    _, server = open_stream(peers, PacketMode.STREAM)
    partial = encode_varint(CapsuleType.DATAGRAM) + encode_varint(100) + b"\x00" * 10
    assert server.receive_data(partial, stream_ended=False).capsules == []
    with pytest.raises(DecodeError):
        server.receive_data(b"", stream_ended=True)


def test_closed_stream_refuses_packets() -> None:
    peers = make_peers()
    client, _ = open_stream(peers, PacketMode.DATAGRAM)
    client.close()
    assert client.send_packet(udp_packet(100)) is SendStatus.CLOSED


def test_non_minimal_context_id_zero_is_still_ip() -> None:
    assert ConnectIpStream.ip_packet_from_datagram(b"\x40\x00" + b"\x45abc") == b"\x45abc"
    assert ConnectIpStream.ip_packet_from_datagram(b"\x02\x45abc") is None
    with pytest.raises(DecodeError):
        ConnectIpStream.ip_packet_from_datagram(b"")
