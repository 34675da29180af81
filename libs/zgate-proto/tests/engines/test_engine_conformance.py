"""What every QUIC engine adapter must do, checked the same way for each: a client and a
server connection of one engine joined by an in-memory network and a fake clock, with real
certificates from zgate_pki."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
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
from zgate_testkit.pki import Refusals, client_config, make_pki, server_config
from zgate_testkit.wire import CLIENT_ADDR, SERVER_ADDR, START, EnginePair

CRYPTO_ERROR = 0x100

# TLS alerts (RFC 8446 section 6.2)
CERTIFICATE_REVOKED = 44
CERTIFICATE_EXPIRED = 45
UNKNOWN_CA = 48
CERTIFICATE_REQUIRED = 116


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
    return make_pki(tmp_path / "pki", groups=["eng"])


def dial(engine: QuicEngine, client: ClientConfig, server: ServerConfig) -> EnginePair:
    """Start a connection and run its handshake (to completion or refusal), then settle."""
    net = EnginePair(engine, server, engine.connect(client, SERVER_ADDR, START))
    net.settle(net.handshake_over)
    net.settle()
    return net


def connected(
    engine: QuicEngine, pki: PkiPaths, *, datagram_queue: int = 512, discipline: str = "fq-codel"
) -> EnginePair:
    config = replace(
        client_config(pki, datagram_queue=datagram_queue), datagram_discipline=discipline
    )
    net = dial(engine, config, server_config(pki))
    assert not net.client_terminations(), net.client_events
    assert net.client.handshake_done and net.srv.handshake_done
    return net


def pem_to_der(path: Path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(Encoding.DER)


# ---- handshakes ---------------------------------------------------------------------------------


def test_mutual_tls_handshake_names_the_client(engine: QuicEngine, pki: PkiPaths) -> None:
    refusals = Refusals()
    net = dial(engine, client_config(pki), server_config(pki, refusals))

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
    used = {
        destination_cid(d, net.server_config.connection_id_length) for d in net.sent[CLIENT_ADDR]
    }
    original = destination_cid(net.sent[CLIENT_ADDR][0], net.server_config.connection_id_length)
    assert used - {original} <= issued
    assert len(used) >= 2  # the client moved off the original ID


def destination_cid(datagram: bytes, short_length: int) -> bytes:
    if datagram[0] & 0x80:  # long header: version (4), then a length-prefixed ID
        return datagram[6 : 6 + datagram[5]]
    return datagram[1 : 1 + short_length]


# ---- refusals ----------------------------------------------------------------------------------


def assert_refused(net: EnginePair, refusals: Refusals, reason: str, alert: int) -> None:
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
    net = EnginePair(engine, server_config(pki, refusals), _certificateless_client(pki))
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
    net = dial(engine, client_config(pki), server_config(pki, refusals))

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
    net.cut.add(SERVER_ADDR)
    net.client.send_stream(sid, b"a" * 300_000)
    for _ in range(5):
        net.exchange()
    first = net.client.stream_backlog(sid)
    assert 0 < first <= 300_000
    net.client.send_stream(sid, b"b" * 100_000, end_stream=True)
    net.exchange()
    assert net.client.stream_backlog(sid) >= first + 100_000 - 20_000

    net.cut.discard(SERVER_ADDR)
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
        net.deliver(CLIENT_ADDR, at_deadline())
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
    net = dial(engine, client_config(pki), server_config(pki, connection_id_length=20))
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
    net = dial(engine, client_config(pki), server_config(pki, max_datagram_frame_size=0))

    assert net.client.peer_max_datagram_frame_size == 0
    assert net.client.max_datagram_payload == 0
    assert net.client.send_datagram(b"x") is SendStatus.TOO_BIG


def test_a_full_fifo_datagram_queue_refuses_more(engine: QuicEngine, pki: PkiPaths) -> None:
    net = connected(engine, pki, datagram_queue=4, discipline="fifo")

    statuses = [net.client.send_datagram(bytes([i])) for i in range(5)]
    assert statuses == [SendStatus.SENT] * 4 + [SendStatus.QUEUE_FULL]
    assert net.client.datagrams_queued == 4
    assert net.client.stats().datagrams_queued == 4
    net.settle()
    assert net.client.datagrams_queued == 0
    assert datagrams(net.server_events) == [bytes([i]) for i in range(4)]
    assert net.client.send_datagram(b"again") is SendStatus.SENT


def test_a_full_fq_codel_queue_drops_from_the_fattest_flow(
    engine: QuicEngine, pki: PkiPaths
) -> None:
    net = connected(engine, pki, datagram_queue=4)
    fat, thin = 1, 2

    statuses = [net.client.send_datagram(bytes([i]), net.now, fat) for i in range(4)]
    statuses.append(net.client.send_datagram(b"thin", net.now, thin))
    assert statuses == [SendStatus.SENT] * 5
    assert net.client.datagrams_queued == 4
    assert net.client.stats().datagrams_dropped_overflow == 1
    net.settle()
    # The arriving flow's frame got in; the fat flow lost its oldest.
    assert sorted(datagrams(net.server_events)) == [bytes([1]), bytes([2]), bytes([3]), b"thin"]


def test_fq_codel_serves_a_new_flow_before_a_backlog(engine: QuicEngine, pki: PkiPaths) -> None:
    net = connected(engine, pki, datagram_queue=512)
    for i in range(300):  # far more than one congestion window of 1100-byte frames
        assert net.client.send_datagram(bytes([i % 256]) * 1100, net.now, 1) is SendStatus.SENT
    net.exchange()  # the first window's worth leaves
    assert net.client.send_datagram(b"ping", net.now, 2) is SendStatus.SENT
    net.settle()
    got = datagrams(net.server_events)
    assert len(got) == 301
    # The ping left with the next window, ahead of the backlog still queued.
    assert got.index(b"ping") < 150


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
    net.deliver(CLIENT_ADDR, first)
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
