"""What every QUIC engine adapter must do, checked the same way for each: a client and a
server connection of one engine joined by an in-memory network and a fake clock, with real
certificates from zgate_pki."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from zgate_pki import (
    ChainVerifier,
    Identity,
    PkiPaths,
    init_pki,
    issue_certificate,
    revoke_certificate,
)
from zgate_proto.engines import get_engine
from zgate_proto.engines.base import (
    Address,
    ClientConfig,
    ConnectionIdIssued,
    ConnectionTerminated,
    DatagramReceived,
    HandshakeCompleted,
    QuicConn,
    QuicEngine,
    QuicEvent,
    SendStatus,
    ServerConfig,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)

CLIENT_ADDR: Address = ("198.51.100.7", 40000)
SERVER_ADDR: Address = ("203.0.113.1", 443)
CRYPTO_ERROR = 0x100
#: Timers due within this much of the fake clock fire while the network settles (ACK delays,
#: pacing); later ones (probe and idle timeouts) only when a test asks for them.
HORIZON = 0.2

# TLS alerts (RFC 8446 section 6.2)
CERTIFICATE_REVOKED = 44
CERTIFICATE_EXPIRED = 45
UNKNOWN_CA = 48
CERTIFICATE_REQUIRED = 116


# ---- the in-memory network -----------------------------------------------------------------


@dataclass
class Net:
    """One client connection, the server connection its first datagram made, a fake clock."""

    engine: QuicEngine
    server_config: ServerConfig
    client: QuicConn
    now: float
    server: QuicConn | None = None
    client_events: list[QuicEvent] = field(default_factory=list)
    server_events: list[QuicEvent] = field(default_factory=list)
    #: Datagrams to that side are lost while set.
    drop_to_server: bool = False
    drop_to_client: bool = False
    #: Every datagram the client sent (delivered or not).
    client_sent: list[bytes] = field(default_factory=list)

    @property
    def srv(self) -> QuicConn:
        assert self.server is not None, "the server connection was never made"
        return self.server

    def conns(self) -> list[QuicConn]:
        return [c for c in (self.client, self.server) if c is not None]

    def to_server(self, datagrams: list[tuple[bytes, Address]]) -> None:
        for data, addr in datagrams:
            assert addr == SERVER_ADDR
            self.client_sent.append(data)
            if self.drop_to_server:
                continue
            if self.server is None:
                self.server = self.engine.accept(self.server_config, data, CLIENT_ADDR, self.now)
                assert self.server is not None, "the engine refused a client's Initial"
            else:
                self.server.feed(data, CLIENT_ADDR, self.now)

    def exchange(self) -> bool:
        """Move what each side has to send once; True if anything was sent."""
        out = self.client.flush(self.now)
        self.to_server(out)
        moved = bool(out)
        if self.server is not None:
            back = self.server.flush(self.now)
            moved = moved or bool(back)
            for data, addr in back:
                assert addr == CLIENT_ADDR
                if not self.drop_to_client:
                    self.client.feed(data, SERVER_ADDR, self.now)
        self.collect()
        return moved

    def collect(self) -> None:
        while (event := self.client.next_event()) is not None:
            self.client_events.append(event)
        if self.server is not None:
            while (event := self.server.next_event()) is not None:
                self.server_events.append(event)

    def fire_timers(self, horizon: float) -> bool:
        """Advance the clock to the earliest deadline within ``horizon`` and fire it."""
        deadlines = [d for c in self.conns() if (d := c.deadline()) is not None]
        if not deadlines or min(deadlines) > self.now + horizon:
            return False
        self.now = max(self.now, min(deadlines))
        for conn in self.conns():
            at = conn.deadline()
            if at is not None and at <= self.now:
                conn.handle_timer(self.now)
        self.collect()
        return True

    def settle(
        self,
        until: Callable[[], bool] | None = None,
        *,
        horizon: float = HORIZON,
        max_steps: int = 5000,
    ) -> None:
        """Exchange datagrams (firing timers due within ``horizon`` when nothing moves) until
        ``until`` holds, or, without ``until``, until the network is quiet."""
        for _ in range(max_steps):
            if until is not None and until():
                return
            if self.exchange():
                continue
            if until is not None and until():
                return
            if self.fire_timers(horizon):
                continue
            if until is None:
                return
            break
        raise AssertionError(
            f"not reached; client events {self.client_events}, server events {self.server_events}"
        )

    # ---- reading the events

    def client_terminations(self) -> list[ConnectionTerminated]:
        return [e for e in self.client_events if isinstance(e, ConnectionTerminated)]

    def server_terminations(self) -> list[ConnectionTerminated]:
        return [e for e in self.server_events if isinstance(e, ConnectionTerminated)]

    def handshake_over(self) -> bool:
        client_done = any(isinstance(e, HandshakeCompleted) for e in self.client_events)
        server_done = any(isinstance(e, HandshakeCompleted) for e in self.server_events)
        return bool(self.client_terminations()) or (client_done and server_done)


def stream_data(events: list[QuicEvent], stream_id: int) -> tuple[bytes, bool]:
    """The bytes received on a stream, and whether its FIN came (last)."""
    parts = [e for e in events if isinstance(e, StreamDataReceived) and e.stream_id == stream_id]
    ended = [e.end_stream for e in parts]
    assert True not in ended[:-1], "data after FIN"
    return b"".join(e.data for e in parts), bool(ended and ended[-1])


def datagrams(events: list[QuicEvent]) -> list[bytes]:
    return [e.data for e in events if isinstance(e, DatagramReceived)]


# ---- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(params=["aioquic", "qh3"])
def engine(request: pytest.FixtureRequest) -> QuicEngine:
    if request.param == "qh3":
        pytest.importorskip("zgate_proto.engines._qh3", exc_type=ImportError)
    return get_engine(request.param)


@pytest.fixture
def pki(tmp_path: Path) -> PkiPaths:
    paths = init_pki(tmp_path / "pki")
    issue_certificate(paths.directory, "client", "alice", groups=["eng"])
    return paths


@dataclass
class Refusals:
    seen: list[tuple[str, str]] = field(default_factory=list)

    def __call__(self, reason: str, detail: str) -> None:
        self.seen.append((reason, detail))


def server_config(
    pki: PkiPaths,
    refusals: Refusals | None = None,
    *,
    max_datagram_frame_size: int = 65536,
    connection_id_length: int = 8,
) -> ServerConfig:
    return ServerConfig(
        cert_file=pki.relay_cert,
        key_file=pki.relay_key,
        verifier=ChainVerifier(pki.ca_cert, pki.crl),
        on_refused=refusals,
        max_datagram_frame_size=max_datagram_frame_size,
        connection_id_length=connection_id_length,
    )


def alice(pki: PkiPaths, *, datagram_queue: int = 512) -> ClientConfig:
    return ClientConfig(
        server_name="localhost",
        ca_file=pki.ca_cert,
        cert_file=pki.leaf_cert("client", "alice"),
        key_file=pki.leaf_key("client", "alice"),
        datagram_queue=datagram_queue,
    )


def dial(engine: QuicEngine, client: ClientConfig, server: ServerConfig) -> Net:
    """Start a connection and run its handshake (to completion or refusal), then settle."""
    now = 1.0
    net = Net(engine, server, engine.connect(client, SERVER_ADDR, now), now)
    net.settle(net.handshake_over)
    net.settle()
    return net


def connected(engine: QuicEngine, pki: PkiPaths, *, datagram_queue: int = 512) -> Net:
    net = dial(engine, alice(pki, datagram_queue=datagram_queue), server_config(pki))
    assert not net.client_terminations(), net.client_events
    assert net.client.handshake_done and net.srv.handshake_done
    return net


def pem_to_der(path: Path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(Encoding.DER)


# ---- handshakes ---------------------------------------------------------------------------------


def test_mutual_tls_handshake_names_the_client(engine: QuicEngine, pki: PkiPaths) -> None:
    refusals = Refusals()
    net = dial(engine, alice(pki), server_config(pki, refusals))

    assert [e for e in net.client_events if isinstance(e, HandshakeCompleted)] == [
        HandshakeCompleted("h3")
    ]
    assert [e for e in net.server_events if isinstance(e, HandshakeCompleted)] == [
        HandshakeCompleted("h3")
    ]
    identity = net.srv.peer_identity
    assert identity is not None
    assert (identity.kind, identity.ident, identity.groups) == ("client", "alice", ("eng",))
    assert net.srv.refusal is None and refusals.seen == []
    assert net.client.peer_identity is None and net.client.refusal is None
    assert not net.client.closed and not net.srv.closed
    assert not net.client_terminations() and not net.server_terminations()


def test_peer_chains_are_the_certificates_presented(engine: QuicEngine, pki: PkiPaths) -> None:
    net = connected(engine, pki)

    assert net.srv.peer_chain[0] == pem_to_der(pki.leaf_cert("client", "alice"))
    assert net.client.peer_chain[0] == pem_to_der(pki.relay_cert)
    leaf = x509.load_der_x509_certificate(net.srv.peer_chain[0])
    assert leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "alice"


def test_every_connection_id_the_client_uses_was_announced(
    engine: QuicEngine, pki: PkiPaths
) -> None:
    # The relay routes datagrams by destination connection ID: it knows the Initial's
    # (the original one) and must learn every other one from ConnectionIdIssued.
    net = connected(engine, pki)
    sid = net.client.next_stream_id()
    net.client.send_stream(sid, b"x" * 20000, end_stream=True)
    net.settle()

    issued = {e.connection_id for e in net.server_events if isinstance(e, ConnectionIdIssued)}
    used = {destination_cid(d, net.server_config.connection_id_length) for d in net.client_sent}
    original = destination_cid(net.client_sent[0], net.server_config.connection_id_length)
    assert used - {original} <= issued
    assert len(used) >= 2  # the client moved off the original ID


def destination_cid(datagram: bytes, short_length: int) -> bytes:
    if datagram[0] & 0x80:  # long header: version (4), then a length-prefixed ID
        return datagram[6 : 6 + datagram[5]]
    return datagram[1 : 1 + short_length]


# ---- refusals ----------------------------------------------------------------------------------


def assert_refused(net: Net, refusals: Refusals, reason: str, alert: int) -> None:
    assert net.srv.refusal is not None and net.srv.refusal[0] == reason
    assert [r for r, _ in refusals.seen] == [reason]
    assert net.srv.peer_identity is None
    [ended] = net.client_terminations()
    assert ended.error_code == CRYPTO_ERROR + alert
    assert ended.by_peer is True
    assert ended.handshake_done is False or net.client.handshake_done
    assert net.client.closed
    [server_end] = net.server_terminations()
    assert server_end.by_peer is False
    assert server_end.error_code == CRYPTO_ERROR + alert


def test_a_client_without_certificate_is_refused(engine: QuicEngine, pki: PkiPaths) -> None:
    refusals = Refusals()
    net = Net(engine, server_config(pki, refusals), _certificateless_client(pki), 1.0)
    net.settle(net.handshake_over)
    net.settle()

    assert_refused(net, refusals, "no_certificate", CERTIFICATE_REQUIRED)


def _certificateless_client(pki: PkiPaths) -> QuicConn:
    """A client that offers no certificate: ClientConfig cannot say that, so this one is
    aioquic's (the server engine under test is what must refuse it)."""
    import ssl

    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    from zgate_proto.engines._aioquic import AioquicConn

    configuration = QuicConfiguration(
        is_client=True,
        alpn_protocols=["h3"],
        server_name="localhost",
        verify_mode=ssl.CERT_REQUIRED,
        max_datagram_frame_size=65536,
    )
    configuration.load_verify_locations(cafile=str(pki.ca_cert))
    quic = QuicConnection(configuration=configuration)
    conn = AioquicConn(quic, SERVER_ADDR, 512)
    quic.connect(SERVER_ADDR, 1.0)
    return conn


def test_a_certificate_from_another_ca_is_refused(
    engine: QuicEngine, pki: PkiPaths, tmp_path: Path
) -> None:
    other = init_pki(tmp_path / "other")
    mallory = issue_certificate(other.directory, "client", "mallory")
    refusals = Refusals()
    client = ClientConfig(
        server_name="localhost",
        ca_file=pki.ca_cert,
        cert_file=mallory.cert_path,
        key_file=mallory.key_path,
    )
    net = dial(engine, client, server_config(pki, refusals))

    assert_refused(net, refusals, "unknown_ca", UNKNOWN_CA)


class TwoDaysLater(ChainVerifier):
    """Checks certificates as if it were two days from now."""

    def verify(
        self,
        leaf: x509.Certificate | None,
        intermediates: Sequence[x509.Certificate],
        now: datetime,
    ) -> Identity:
        return super().verify(leaf, intermediates, now + timedelta(days=2))


def test_an_expired_certificate_is_refused(engine: QuicEngine, pki: PkiPaths) -> None:
    brief = issue_certificate(pki.directory, "client", "brief", days=1)
    refusals = Refusals()
    config = ServerConfig(
        cert_file=pki.relay_cert,
        key_file=pki.relay_key,
        verifier=TwoDaysLater(pki.ca_cert, pki.crl),
        on_refused=refusals,
    )
    client = ClientConfig(
        server_name="localhost",
        ca_file=pki.ca_cert,
        cert_file=brief.cert_path,
        key_file=brief.key_path,
    )
    net = dial(engine, client, config)

    assert_refused(net, refusals, "expired", CERTIFICATE_EXPIRED)


def test_a_revoked_certificate_is_refused(engine: QuicEngine, pki: PkiPaths) -> None:
    revoke_certificate(pki.directory, "alice")
    refusals = Refusals()
    net = dial(engine, alice(pki), server_config(pki, refusals))

    assert_refused(net, refusals, "revoked", CERTIFICATE_REVOKED)


# ---- streams -----------------------------------------------------------------------------------


def test_stream_data_flows_both_ways_with_fin(engine: QuicEngine, pki: PkiPaths) -> None:
    net = connected(engine, pki)
    sid = net.client.next_stream_id()
    request = bytes(range(256)) * 300  # several packets
    net.client.send_stream(sid, request[:1000])
    net.client.send_stream(sid, request[1000:], end_stream=True)
    net.settle()

    assert stream_data(net.server_events, sid) == (request, True)
    net.srv.send_stream(sid, b"answer", end_stream=True)
    net.settle()
    assert stream_data(net.client_events, sid) == (b"answer", True)
    assert net.client.next_stream_id() == sid + 4


def test_streams_can_be_reset_and_stopped(engine: QuicEngine, pki: PkiPaths) -> None:
    net = connected(engine, pki)
    sid = net.client.next_stream_id()
    net.client.send_stream(sid, b"request")
    net.settle()
    net.client.reset_stream(sid, 0x10C)
    net.srv.stop_stream(sid, 0x10D)
    net.settle()

    assert StreamReset(sid, 0x10C) in net.server_events
    assert StopSendingReceived(sid, 0x10D) in net.client_events
    assert not net.client.closed and not net.srv.closed


def test_stream_backlog_grows_while_the_peer_does_not_ack(
    engine: QuicEngine, pki: PkiPaths
) -> None:
    net = connected(engine, pki)
    sid = net.client.next_stream_id()
    assert net.client.stream_backlog(sid) == 0  # not opened yet
    net.drop_to_server = True
    net.client.send_stream(sid, b"a" * 300_000)
    for _ in range(5):
        net.exchange()
    first = net.client.stream_backlog(sid)
    assert 0 < first <= 300_000
    net.client.send_stream(sid, b"b" * 100_000, end_stream=True)
    net.exchange()
    assert net.client.stream_backlog(sid) >= first + 100_000 - 20_000

    net.drop_to_server = False
    net.settle(lambda: stream_data(net.server_events, sid)[1], horizon=30.0)
    assert stream_data(net.server_events, sid) == (b"a" * 300_000 + b"b" * 100_000, True)
    assert net.client.stream_backlog(sid) == 0


def test_a_lost_flight_is_sent_again_at_the_deadline(engine: QuicEngine, pki: PkiPaths) -> None:
    net = connected(engine, pki)

    def at_deadline() -> list[tuple[bytes, Address]]:
        at = net.client.deadline()
        assert at is not None and at >= net.now
        net.now = at
        net.client.handle_timer(net.now)
        return net.client.flush(net.now)

    sid = net.client.next_stream_id()
    net.client.send_stream(sid, b"hello", end_stream=True)
    lost = net.client.flush(net.now)
    for _ in range(5):  # an engine may pace even the first packet
        if lost:
            break
        lost = at_deadline()
    assert lost  # and never delivered

    for _ in range(10):
        net.to_server(at_deadline())
        net.collect()
        if stream_data(net.server_events, sid)[1]:
            break
    assert stream_data(net.server_events, sid) == (b"hello", True)


# ---- DATAGRAM frames ---------------------------------------------------------------------------


def test_datagrams_flow_both_ways(engine: QuicEngine, pki: PkiPaths) -> None:
    net = connected(engine, pki)
    assert net.client.peer_max_datagram_frame_size == 65536
    assert net.srv.peer_max_datagram_frame_size == 65536

    assert net.client.send_datagram(b"up") is SendStatus.SENT
    assert net.srv.send_datagram(b"down") is SendStatus.SENT
    net.settle()
    assert datagrams(net.server_events) == [b"up"]
    assert datagrams(net.client_events) == [b"down"]


def test_a_datagram_past_the_path_is_too_big(engine: QuicEngine, pki: PkiPaths) -> None:
    # The relay's 20-byte connection IDs (QUIC's longest) leave the least room in a packet.
    net = dial(engine, alice(pki), server_config(pki, connection_id_length=20))
    assert not net.client_terminations()
    for sender, receiver_events in ((net.client, net.server_events), (net.srv, net.client_events)):
        largest = sender.max_datagram_payload
        assert 1100 < largest < 1200

        assert sender.send_datagram(b"x" * (largest + 1)) is SendStatus.TOO_BIG
        assert sender.send_datagram(b"y" * largest) is SendStatus.SENT
        assert sender.send_datagram(b"z") is SendStatus.SENT
        net.settle()
        # The largest one fits a packet: it left, and did not hold up the one behind it.
        assert datagrams(receiver_events) == [b"y" * largest, b"z"]
        assert sender.datagrams_queued == 0


def test_no_datagrams_to_a_peer_that_takes_none(engine: QuicEngine, pki: PkiPaths) -> None:
    net = dial(engine, alice(pki), server_config(pki, max_datagram_frame_size=0))

    assert net.client.peer_max_datagram_frame_size == 0
    assert net.client.max_datagram_payload == 0
    assert net.client.send_datagram(b"x") is SendStatus.TOO_BIG


def test_a_full_datagram_queue_refuses_more(engine: QuicEngine, pki: PkiPaths) -> None:
    net = connected(engine, pki, datagram_queue=4)

    statuses = [net.client.send_datagram(bytes([i])) for i in range(5)]
    assert statuses == [SendStatus.SENT] * 4 + [SendStatus.QUEUE_FULL]
    assert net.client.datagrams_queued == 4
    assert net.client.stats().datagrams_queued == 4
    net.settle()
    assert net.client.datagrams_queued == 0
    assert datagrams(net.server_events) == [bytes([i]) for i in range(4)]
    assert net.client.send_datagram(b"again") is SendStatus.SENT


def test_the_datagram_queue_drains_within_the_congestion_window(
    engine: QuicEngine, pki: PkiPaths
) -> None:
    net = connected(engine, pki, datagram_queue=64)
    payloads = [bytes([i]) * 1100 for i in range(64)]
    assert all(net.client.send_datagram(p) is SendStatus.SENT for p in payloads)

    cwnd = net.client.stats().cwnd
    first = net.client.flush(net.now)
    assert sum(len(d) for d, _ in first) <= cwnd + 1200
    assert 0 < net.client.datagrams_queued < 64  # the rest waits for ACKs
    net.to_server(first)
    net.settle(lambda: net.client.datagrams_queued == 0)
    net.settle()
    assert datagrams(net.server_events) == payloads


# ---- closing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("closer", ["client", "server"])
def test_close_ends_both_sides_once(engine: QuicEngine, pki: PkiPaths, closer: str) -> None:
    net = connected(engine, pki)
    ours, theirs = (net.client, net.srv) if closer == "client" else (net.srv, net.client)
    our_events, their_events = (
        (net.client_events, net.server_events)
        if closer == "client"
        else (net.server_events, net.client_events)
    )

    ours.close(0x10C, "going away")
    assert ours.closed
    assert ours.next_event() == ConnectionTerminated(0x10C, "going away", False, True)
    assert ours.send_datagram(b"late") is SendStatus.CLOSED
    net.settle()
    assert theirs.closed
    assert [e for e in their_events if isinstance(e, ConnectionTerminated)] == [
        ConnectionTerminated(0x10C, "going away", True, True)
    ]
    # Through the closing period and beyond: nothing more, and no second termination.
    net.settle(horizon=120.0)
    assert not any(isinstance(e, ConnectionTerminated) for e in our_events)
    assert len([e for e in their_events if isinstance(e, ConnectionTerminated)]) == 1
    assert theirs.send_datagram(b"late") is SendStatus.CLOSED


def test_stats_describe_the_path(engine: QuicEngine, pki: PkiPaths) -> None:
    net = connected(engine, pki)
    stats = net.client.stats()
    assert stats.rtt >= 0.0
    assert stats.cwnd >= 2 * 1200
    assert stats.bytes_in_flight >= 0
    assert stats.datagrams_queued == 0
    net.client.ping()
    assert net.client.flush(net.now)
