"""Our HTTP/3 against aioquic's own (aioquic.h3.connection.H3Connection), both directions,
over raw aioquic QuicConnections joined in memory: the proof that the wire format is right."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from ipaddress import ip_network
from typing import Any, cast

import pytest
from aioquic.h3 import connection as aioquic_h3
from aioquic.h3 import events as aioquic_events
from aioquic.quic import events as quic_events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from zgate_proto.capsules import AddressAssign, AssignedAddress, CapsuleDecoder
from zgate_proto.engines.base import (
    DatagramReceived,
    QuicConn,
    QuicEvent,
    SendStatus,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)
from zgate_proto.http3 import (
    DataReceived,
    H3Connection,
    H3Event,
    HeadersReceived,
    Setting,
    SettingsReceived,
    StreamWasReset,
)
from zgate_proto.request import build_connect_ip_request
from zgate_proto.session import (
    PacketMode,
    PacketReceived,
    ServerConnection,
    ServerEvent,
    SessionRequested,
)

ADDR = ("127.0.0.1", 4433)
RESPONSE = [(b":status", b"200"), (b"capsule-protocol", b"?1"), (b"x-long", b"v" * 300)]


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


class RawAioquic:
    """Just the part of QuicConn our H3Connection uses, over a raw aioquic connection (the
    engine adapter is not under test here)."""

    def __init__(self, quic: QuicConnection) -> None:
        self.quic = quic
        self.is_client = quic.configuration.is_client

    @property
    def peer_max_datagram_frame_size(self) -> int:
        return self.quic._remote_max_datagram_frame_size or 0

    def next_stream_id(self, unidirectional: bool = False) -> int:
        return self.quic.get_next_available_stream_id(is_unidirectional=unidirectional)

    def send_stream(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        self.quic.send_stream_data(stream_id, data, end_stream)

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        self.quic.reset_stream(stream_id, error_code)

    def stop_stream(self, stream_id: int, error_code: int) -> None:
        self.quic.stop_stream(stream_id, error_code)

    def close(self, error_code: int = 0, reason: str = "") -> None:
        self.quic.close(error_code=error_code, reason_phrase=reason)

    # ---- for the session layer
    max_datagram_payload = 1000  # ample for the packets sent here

    def send_datagram(self, payload: bytes, now: float | None = None, flow: int = 0) -> SendStatus:
        self.quic.send_datagram_frame(payload)
        return SendStatus.SENT

    def stream_backlog(self, stream_id: int) -> int:
        return 0

    @staticmethod
    def translate(event: quic_events.QuicEvent) -> QuicEvent | None:
        if isinstance(event, quic_events.DatagramFrameReceived):
            return DatagramReceived(event.data)
        if isinstance(event, quic_events.StreamDataReceived):
            return StreamDataReceived(event.stream_id, event.data, event.end_stream)
        if isinstance(event, quic_events.StreamReset):
            return StreamReset(event.stream_id, event.error_code)
        if isinstance(event, quic_events.StopSendingReceived):
            return StopSendingReceived(event.stream_id, event.error_code)
        return None


class Interop:
    """One side speaks our HTTP/3, the other aioquic's."""

    def __init__(self, *, ours_is_client: bool) -> None:
        cert, key = self_signed()
        client_config = QuicConfiguration(
            is_client=True, alpn_protocols=["h3"], max_datagram_frame_size=65536
        )
        client_config.load_verify_locations(cadata=cert.public_bytes(Encoding.PEM))
        server_config = QuicConfiguration(
            is_client=False, alpn_protocols=["h3"], max_datagram_frame_size=65536
        )
        server_config.certificate = cert
        server_config.private_key = key
        self.client_quic = QuicConnection(configuration=client_config)
        self.server_quic = QuicConnection(
            configuration=server_config,
            original_destination_connection_id=self.client_quic.original_destination_connection_id,
        )
        self.now = 1.0
        self.client_quic.connect(ADDR, now=self.now)
        self.ours_quic = self.client_quic if ours_is_client else self.server_quic
        self.theirs_quic = self.server_quic if ours_is_client else self.client_quic
        self.raw = RawAioquic(self.ours_quic)
        self.ours: H3Connection | None = None
        self.ours_is_client = ours_is_client
        self.ours_events: list[H3Event] = []
        self.theirs_events: list[aioquic_events.H3Event] = []
        # enable_webtransport makes aioquic offer H3_DATAGRAM as well (it ignores the rest).
        self.theirs = aioquic_h3.H3Connection(self.theirs_quic, enable_webtransport=True)
        #: Set for a session-level test: our ServerConnection instead of a bare H3Connection.
        self.relay: ServerConnection | None = None
        self.relay_events: list[ServerEvent] = []

    def _relay_events(self) -> None:
        assert self.relay is not None
        while (event := self.ours_quic.next_event()) is not None:
            translated = RawAioquic.translate(event)
            if translated is None:
                continue
            for out in self.relay.receive(translated):
                self.relay_events.append(out)
                if isinstance(out, SessionRequested):
                    assign = AddressAssign((AssignedAddress(0, ip_network("10.100.0.2/32")),))
                    self.relay.accept(out.stream_id, out.mode, [assign])
        while (event := self.theirs_quic.next_event()) is not None:
            self.theirs_events += self.theirs.handle_event(event)

    def run(self, until: Callable[[], bool] | None = None) -> None:
        for _ in range(200):
            moved = False
            for src, dst in (
                (self.client_quic, self.server_quic),
                (self.server_quic, self.client_quic),
            ):
                for data, _ in src.datagrams_to_send(now=self.now):
                    dst.receive_datagram(data, ADDR, now=self.now)
                    moved = True
            self._events()
            if until is not None and until():
                return
            if not moved and not self._fire_timers() and until is None:
                return
        raise AssertionError(f"not reached: ours {self.ours_events}, theirs {self.theirs_events}")

    def _fire_timers(self, horizon: float = 0.2) -> bool:
        """Advance the fake clock to a timer due soon (pacing, ACK delay) and fire it."""
        timers = [(t, q) for q in (self.client_quic, self.server_quic) if (t := q.get_timer())]
        due = [(t, q) for t, q in timers if t <= self.now + horizon]
        if not due:
            return False
        at, quic = min(due, key=lambda item: item[0])
        self.now = max(self.now, at)
        quic.handle_timer(now=self.now)
        self._events()
        return True

    def _events(self) -> None:
        if self.relay is not None:
            self._relay_events()
            return
        while (event := self.ours_quic.next_event()) is not None:
            if isinstance(event, quic_events.HandshakeCompleted) and self.ours is None:
                self.ours = H3Connection(cast(QuicConn, self.raw), is_client=self.ours_is_client)
            translated = RawAioquic.translate(event)
            if translated is not None and self.ours is not None:
                self.ours_events += self.ours.handle_event(translated)
        while (event := self.theirs_quic.next_event()) is not None:
            self.theirs_events += self.theirs.handle_event(event)

    @property
    def h3(self) -> H3Connection:
        assert self.ours is not None
        return self.ours

    def theirs_got(self, kind: type) -> list[Any]:
        return [e for e in self.theirs_events if isinstance(e, kind)]


def test_our_client_against_aioquics_server() -> None:
    net = Interop(ours_is_client=True)
    net.run(lambda: net.ours is not None and net.h3.peer_settings is not None)
    net.run()
    # aioquic's settings reach us, ours reach aioquic.
    [settings] = [e for e in net.ours_events if isinstance(e, SettingsReceived)]
    assert settings.settings[Setting.ENABLE_CONNECT_PROTOCOL] == 1
    assert settings.settings[Setting.QPACK_MAX_TABLE_CAPACITY] > 0  # aioquic's own table
    assert net.h3.peer_supports_extended_connect() and net.h3.peer_supports_datagrams()
    theirs = net.theirs.received_settings
    assert theirs is not None
    assert theirs[Setting.ENABLE_CONNECT_PROTOCOL] == 1 and theirs[Setting.H3_DATAGRAM] == 1
    assert theirs[Setting.QPACK_MAX_TABLE_CAPACITY] == 0

    request = build_connect_ip_request("localhost", extra_headers=[(b"x-long", b"q" * 300)])
    sid = net.raw.next_stream_id()
    net.h3.send_headers(sid, request)
    net.h3.send_data(sid, b"capsules " * 2000)
    net.run()
    [headers] = net.theirs_got(aioquic_events.HeadersReceived)
    assert headers.stream_id == sid and headers.headers == request
    data = b"".join(e.data for e in net.theirs_got(aioquic_events.DataReceived))
    assert data == b"capsules " * 2000

    net.theirs.send_headers(sid, RESPONSE)
    net.theirs.send_data(sid, b"reply " * 3000, end_stream=True)
    net.run()
    [response] = [e for e in net.ours_events if isinstance(e, HeadersReceived)]
    assert response.headers == RESPONSE
    body = [e for e in net.ours_events if isinstance(e, DataReceived)]
    assert b"".join(e.data for e in body) == b"reply " * 3000
    assert body[-1].stream_ended
    assert net.client_quic._close_event is None and net.server_quic._close_event is None


def test_aioquics_client_against_our_server() -> None:
    net = Interop(ours_is_client=False)
    net.run(lambda: net.ours is not None and net.h3.peer_settings is not None)
    net.run()
    assert net.h3.peer_supports_extended_connect() and net.h3.peer_supports_datagrams()
    theirs = net.theirs.received_settings
    assert theirs is not None and theirs[Setting.ENABLE_CONNECT_PROTOCOL] == 1

    request = build_connect_ip_request("localhost")
    sid = net.theirs_quic.get_next_available_stream_id()
    net.theirs.send_headers(sid, request)
    net.theirs.send_data(sid, b"up " * 4000, end_stream=False)
    net.run()
    [headers] = [e for e in net.ours_events if isinstance(e, HeadersReceived)]
    assert headers.stream_id == sid and headers.headers == request
    data = [e for e in net.ours_events if isinstance(e, DataReceived)]
    assert b"".join(e.data for e in data) == b"up " * 4000

    net.h3.send_headers(sid, RESPONSE)
    net.h3.send_data(sid, b"down " * 4000)
    net.h3.send_headers(sid, [(b"x-trailer", b"done")], end_stream=True)
    net.run()
    got = net.theirs_got(aioquic_events.HeadersReceived)
    assert [h.headers for h in got] == [RESPONSE, [(b"x-trailer", b"done")]]
    assert got[-1].stream_ended
    body = b"".join(e.data for e in net.theirs_got(aioquic_events.DataReceived))
    assert body == b"down " * 4000

    # A reset from aioquic's side reaches us as an event.
    sid2 = net.theirs_quic.get_next_available_stream_id()
    net.theirs.send_headers(sid2, request)
    net.run()
    net.theirs_quic.reset_stream(sid2, 0x10C)
    net.run()
    assert StreamWasReset(sid2, 0x10C) in net.ours_events
    assert net.client_quic._close_event is None and net.server_quic._close_event is None


@pytest.mark.parametrize("ours_is_client", [True, False])
def test_aioquic_closes_on_our_protocol_error_with_the_right_code(ours_is_client: bool) -> None:
    # The other direction of the proof: aioquic agrees a second SETTINGS is H3_FRAME_UNEXPECTED.
    net = Interop(ours_is_client=ours_is_client)
    net.run(lambda: net.ours is not None and net.h3.peer_settings is not None)
    net.run()
    control = 2 if ours_is_client else 3
    net.raw.send_stream(control, b"\x04\x00")
    net.run(lambda: net.theirs_quic._close_event is not None)
    assert net.theirs_quic._close_event is not None
    assert net.theirs_quic._close_event.error_code == 0x105


def test_an_aioquic_client_opens_a_session_on_our_relay_and_datagrams_flow() -> None:
    # The HTTP datagram framing (quarter stream ID, context ID) against an independent
    # implementation: aioquic's H3Connection.send_datagram and its DatagramReceived.
    net = Interop(ours_is_client=False)
    net.run(lambda: net.theirs_quic._handshake_complete)
    net.relay = ServerConnection(cast(QuicConn, net.raw))
    net.run()
    # Two sessions, so that the second's quarter stream ID (1) differs from its stream ID (4).
    for _ in range(2):
        sid = net.theirs_quic.get_next_available_stream_id()
        net.theirs.send_headers(sid, build_connect_ip_request("localhost"))
    assert sid == 4
    net.run(lambda: len(net.theirs_got(aioquic_events.DataReceived)) == 2)

    requested = [e for e in net.relay_events if isinstance(e, SessionRequested)]
    assert [(e.stream_id, e.mode) for e in requested] == [
        (0, PacketMode.DATAGRAM),
        (4, PacketMode.DATAGRAM),
    ]
    for response in net.theirs_got(aioquic_events.HeadersReceived):
        assert (b":status", b"200") in response.headers
    data = [e.data for e in net.theirs_got(aioquic_events.DataReceived) if e.stream_id == sid]
    capsules = CapsuleDecoder().feed(b"".join(data))
    assert capsules == [AddressAssign((AssignedAddress(0, ip_network("10.100.0.2/32")),))]

    net.theirs.send_datagram(sid, b"\x00" + b"packet up")
    assert net.relay.send_packet(sid, b"packet down") is SendStatus.SENT
    net.run(lambda: bool(net.theirs_got(aioquic_events.DatagramReceived)))
    net.run()
    assert PacketReceived(sid, b"packet up") in net.relay_events
    [down] = net.theirs_got(aioquic_events.DatagramReceived)
    assert (down.stream_id, down.data) == (sid, b"\x00" + b"packet down")
