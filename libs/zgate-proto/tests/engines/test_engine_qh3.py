"""The qh3 adapter's own cases: its client-certificate shim (every refusal and its close code
at the client, identity only after Finished), DATAGRAM frames under congestion control, the
"packet builder capacity exhausted" recovery, interop with aioquic both ways, the version pin.

Two in-memory peers and a fake clock; no sockets. The shared behaviour of every engine is in
test_engine_conformance.py.
"""

from __future__ import annotations

import importlib.util
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import qh3
from aioquic.quic.configuration import QuicConfiguration as AioquicConfiguration
from aioquic.quic.connection import QuicConnection as AioquicConnection
from qh3 import tls
from qh3.quic.configuration import QuicConfiguration
from qh3.quic.connection import QuicConnection, QuicConnectionError
from qh3.quic.tls_bridge import QuicTlsBridge

from zgate_pki import (
    ChainVerifier,
    PkiError,
    PkiPaths,
    init_pki,
    issue_certificate,
    revoke_certificate,
)
from zgate_proto.engines import _qh3, _qh3_mtls, get_engine
from zgate_proto.engines._aioquic import AioquicConn
from zgate_proto.engines._qh3 import Qh3Conn, Qh3Engine
from zgate_proto.engines._qh3_mtls import ClientAuthenticator
from zgate_proto.engines.base import (
    Address,
    ClientConfig,
    ConnectionIdIssued,
    ConnectionTerminated,
    DatagramReceived,
    QuicConn,
    QuicEvent,
    SendStatus,
    ServerConfig,
    StreamDataReceived,
    require_version,
)
from zgate_testkit.pki import Refusals, make_pki, server_config
from zgate_testkit.qh3_tls import tls_contexts, tls_flight, tls_messages
from zgate_testkit.wire import CLIENT_ADDR, SERVER_ADDR, START, EnginePair

CRYPTO_ERROR = 0x100


def received(events: list[QuicEvent]) -> list[bytes]:
    return [e.data for e in events if isinstance(e, DatagramReceived)]


def stream_bytes(events: list[QuicEvent], stream_id: int) -> tuple[bytes, bool]:
    parts = [e for e in events if isinstance(e, StreamDataReceived) and e.stream_id == stream_id]
    return b"".join(e.data for e in parts), any(e.end_stream for e in parts)


# ---- fixtures and configurations -----------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> PkiPaths:
    return make_pki(tmp_path / "pki", groups=["eng"], connectors=["site-a"])


def client_config(
    pki: PkiPaths,
    cert: Path | None = None,
    key: Path | None = None,
    *,
    datagram_queue: int = 512,
    discipline: str = "fq-codel",
) -> ClientConfig:
    return ClientConfig(
        server_name="localhost",
        ca_file=pki.ca_cert,
        cert_file=cert or pki.leaf_cert("client", "alice"),
        key_file=key or pki.leaf_key("client", "alice"),
        datagram_queue=datagram_queue,
        datagram_discipline=discipline,
    )


def qh3_client_without_certificate(pki: PkiPaths) -> Qh3Conn:
    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=["h3"], server_name="localhost"
    )
    configuration.load_verify_locations(cafile=str(pki.ca_cert))
    quic = QuicConnection(configuration=configuration)
    quic.connect(SERVER_ADDR, START)
    return Qh3Conn(quic, SERVER_ADDR, 512)


class Tls12OnlyClient(QuicConnection):
    """A qh3 client whose TLS offers nothing but TLS 1.2."""

    def _create_tls(self, remote_source_cid: bytes | None) -> QuicTlsBridge:
        bridge = super()._create_tls(remote_source_cid)
        bridge.tls._supported_versions = [tls.TLS_VERSION_1_2]
        return bridge


def tls12_client(pki: PkiPaths) -> Qh3Conn:
    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=["h3"], server_name="localhost"
    )
    configuration.load_verify_locations(cafile=str(pki.ca_cert))
    configuration.load_cert_chain(pki.leaf_cert("client", "alice"), pki.leaf_key("client", "alice"))
    quic = Tls12OnlyClient(configuration=configuration)
    quic.connect(SERVER_ADDR, START)
    return Qh3Conn(quic, SERVER_ADDR, 512)


def qh3_pair(
    pki: PkiPaths,
    client: ClientConfig | QuicConn | None = None,
    server: ServerConfig | None = None,
    *,
    engine: Qh3Engine | None = None,
) -> EnginePair:
    engine = engine or Qh3Engine()
    conn = client if isinstance(client, Qh3Conn) else None
    if conn is None:
        config = client if isinstance(client, ClientConfig) else client_config(pki)
        conn = engine.connect(config, SERVER_ADDR, START)
    wire = EnginePair(engine, server or server_config(pki), conn)
    wire.settle(wire.handshake_over)
    wire.settle()
    return wire


# ---- the handshake and client certificates ---------------------------------------------------


def test_a_verified_client_is_named_after_finished(pki: PkiPaths) -> None:
    refusals = Refusals()
    wire = qh3_pair(pki, server=server_config(pki, refusals))

    assert not wire.client_terminations()
    identity = wire.srv.peer_identity
    assert identity is not None and str(identity) == "client/alice"
    assert identity.groups == ("eng",)
    assert wire.srv.refusal is None and refusals.seen == []
    # The first event names the connection's own initial connection ID.
    first = wire.server_events[0]
    assert isinstance(first, ConnectionIdIssued)
    assert first.connection_id == wire.srv._quic.host_cid  # type: ignore[attr-defined]


def test_a_connector_certificate_is_a_connector(pki: PkiPaths) -> None:
    config = client_config(
        pki, pki.leaf_cert("connector", "site-a"), pki.leaf_key("connector", "site-a")
    )
    wire = qh3_pair(pki, config)

    identity = wire.srv.peer_identity
    assert identity is not None
    assert (identity.kind, identity.ident) == ("connector", "site-a")


def assert_refused(wire: EnginePair, refusals: Refusals, reason: str, alert: int) -> None:
    assert wire.srv.refusal is not None and wire.srv.refusal[0] == reason
    assert [r for r, _ in refusals.seen] == [reason]  # the callback ran once
    assert wire.srv.peer_identity is None and wire.srv.peer_chain == ()
    assert not wire.srv.handshake_done
    [ended] = wire.client_terminations()
    assert ended.error_code == CRYPTO_ERROR + alert
    assert ended.by_peer is True
    [ours] = wire.server_terminations()
    assert (ours.error_code, ours.by_peer, ours.handshake_done) == (
        CRYPTO_ERROR + alert,
        False,
        False,
    )


def test_no_certificate_is_certificate_required(pki: PkiPaths) -> None:
    refusals = Refusals()
    wire = qh3_pair(pki, qh3_client_without_certificate(pki), server_config(pki, refusals))

    assert_refused(wire, refusals, "no_certificate", tls.AlertDescription.certificate_required)


def test_another_ca_is_unknown_ca(pki: PkiPaths, tmp_path: Path) -> None:
    other = init_pki(tmp_path / "other")
    mallory = issue_certificate(other.directory, "client", "mallory")
    refusals = Refusals()
    config = client_config(pki, mallory.cert_path, mallory.key_path)
    wire = qh3_pair(pki, config, server_config(pki, refusals))

    assert_refused(wire, refusals, "unknown_ca", tls.AlertDescription.unknown_ca)


def test_an_expired_certificate_is_certificate_expired(pki: PkiPaths) -> None:
    brief = issue_certificate(pki.directory, "client", "brief", days=1)
    later = datetime.now(UTC) + timedelta(days=2)
    refusals = Refusals()
    wire = qh3_pair(
        pki,
        client_config(pki, brief.cert_path, brief.key_path),
        server_config(pki, refusals),
        engine=Qh3Engine(wall_clock=lambda: later),
    )

    assert_refused(wire, refusals, "expired", tls.AlertDescription.certificate_expired)


def test_a_revoked_certificate_is_refused_once_the_crl_changes(pki: PkiPaths) -> None:
    refusals = Refusals()
    config = server_config(pki, refusals)
    first = qh3_pair(pki, server=config)
    assert first.srv.peer_identity is not None

    revoke_certificate(pki.directory, "alice")  # the same verifier reloads the CRL
    second = qh3_pair(pki, server=config)

    assert_refused(second, refusals, "revoked", tls.AlertDescription.certificate_revoked)


def test_a_certificate_without_its_key_fails_certificate_verify(pki: PkiPaths) -> None:
    # alice's valid certificate with another key: the chain verifies, possession does not.
    refusals = Refusals()
    config = client_config(
        pki, pki.leaf_cert("client", "alice"), pki.leaf_key("connector", "site-a")
    )
    wire = qh3_pair(pki, config, server_config(pki, refusals))

    assert_refused(wire, refusals, "handshake_failed", tls.AlertDescription.decrypt_error)


def test_a_bad_certificate_is_bad_certificate(pki: PkiPaths, tmp_path: Path) -> None:
    # A CA-signed certificate whose identity zgate cannot use (no SAN, CN with a slash).
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "no/such id")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "odd.pem", tmp_path / "odd.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    refusals = Refusals()
    wire = qh3_pair(pki, client_config(pki, cert_path, key_path), server_config(pki, refusals))

    assert_refused(wire, refusals, "bad_certificate", tls.AlertDescription.bad_certificate)


def test_a_client_without_tls13_is_tls_version(pki: PkiPaths) -> None:
    refusals = Refusals()
    wire = qh3_pair(pki, tls12_client(pki), server_config(pki, refusals))

    assert_refused(wire, refusals, "tls_version", tls.AlertDescription.protocol_version)


def test_a_client_that_rejects_the_relay_is_handshake_failed(pki: PkiPaths, tmp_path: Path) -> None:
    # The client trusts another CA: it sends the alert, the relay records why.
    other = init_pki(tmp_path / "other")
    refusals = Refusals()
    config = ClientConfig(
        server_name="localhost",
        ca_file=other.ca_cert,
        cert_file=pki.leaf_cert("client", "alice"),
        key_file=pki.leaf_key("client", "alice"),
    )
    wire = qh3_pair(pki, config, server_config(pki, refusals))

    assert [r for r, _ in refusals.seen] == ["handshake_failed"]
    assert "from the client" in refusals.seen[0][1]
    [ours] = wire.server_terminations()
    assert ours.by_peer is True and ours.handshake_done is False
    assert wire.srv.peer_identity is None


def test_no_session_ticket_is_offered(pki: PkiPaths) -> None:
    tickets: list[object] = []
    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=["h3"], server_name="localhost"
    )
    configuration.load_verify_locations(cafile=str(pki.ca_cert))
    configuration.load_cert_chain(pki.leaf_cert("client", "alice"), pki.leaf_key("client", "alice"))
    quic = QuicConnection(configuration=configuration, session_ticket_handler=tickets.append)
    quic.connect(SERVER_ADDR, START)
    wire = qh3_pair(pki, Qh3Conn(quic, SERVER_ADDR, 512))

    assert wire.srv.peer_identity is not None
    assert tickets == []  # nothing to resume: every handshake carries the certificate


# ---- identity only after Finished, at the TLS level ---------------------------------------


def state_of(context: tls.Context) -> tls.State:
    """The context's state, read through a call (mypy would narrow the attribute)."""
    return context.state


def test_identity_waits_for_the_clients_finished(pki: PkiPaths) -> None:
    client, server = tls_contexts(pki)
    auth = ClientAuthenticator(ChainVerifier(pki.ca_cert, pki.crl))
    auth.attach(server)

    hello = tls_flight(client, b"", tls.Epoch.INITIAL)[tls.Epoch.INITIAL]
    answer = tls_flight(server, hello, tls.Epoch.INITIAL)
    kinds = [m[0] for m in tls_messages(answer[tls.Epoch.HANDSHAKE])]
    assert kinds[:2] == [
        tls.HandshakeType.ENCRYPTED_EXTENSIONS,
        tls.HandshakeType.CERTIFICATE_REQUEST,
    ]
    tls_flight(client, answer[tls.Epoch.INITIAL], tls.Epoch.INITIAL)
    second = tls_flight(client, answer[tls.Epoch.HANDSHAKE], tls.Epoch.HANDSHAKE)
    certificate, verify, finished = tls_messages(second[tls.Epoch.HANDSHAKE])
    assert finished[0] == tls.HandshakeType.FINISHED

    # Certificate (split across two CRYPTO frames) and CertificateVerify: verified, not exposed.
    tls_flight(server, certificate[:100], tls.Epoch.HANDSHAKE)
    tls_flight(server, certificate[100:] + verify, tls.Epoch.HANDSHAKE)
    assert auth.identity is None and not auth.done
    assert state_of(server) is tls.State.SERVER_EXPECT_FINISHED

    tls_flight(server, finished, tls.Epoch.HANDSHAKE)
    assert state_of(server) is tls.State.SERVER_POST_HANDSHAKE
    assert auth.identity is not None and str(auth.identity) == "client/alice"
    assert auth.chain[0] == client.certificate.public_bytes()


def _client_flight(
    pki: PkiPaths, refusals: Refusals
) -> tuple[tls.Context, ClientAuthenticator, list[bytes]]:
    """A server context with its authenticator, and the client's Certificate,
    CertificateVerify and Finished, not yet given to the server."""
    client, server = tls_contexts(pki)
    auth = ClientAuthenticator(ChainVerifier(pki.ca_cert, pki.crl), refusals)
    auth.attach(server)
    answer = tls_flight(
        server, tls_flight(client, b"", tls.Epoch.INITIAL)[tls.Epoch.INITIAL], tls.Epoch.INITIAL
    )
    tls_flight(client, answer[tls.Epoch.INITIAL], tls.Epoch.INITIAL)
    flight = tls_flight(client, answer[tls.Epoch.HANDSHAKE], tls.Epoch.HANDSHAKE)
    return server, auth, tls_messages(flight[tls.Epoch.HANDSHAKE])


def test_finished_without_certificate_verify_is_refused(pki: PkiPaths) -> None:
    refusals = Refusals()
    server, auth, [certificate, _verify, finished] = _client_flight(pki, refusals)

    with pytest.raises(tls.AlertUnexpectedMessage):
        tls_flight(server, certificate + finished, tls.Epoch.HANDSHAKE)
    assert auth.identity is None
    assert [r for r, _ in refusals.seen] == ["handshake_failed"]


def _resized(message: bytes, by: int) -> bytes:
    """A handshake message whose body gains a stray zero byte (``by`` 1) or loses its last
    byte (``by`` -1), its length field following."""
    body = message[4:] + b"\x00" if by > 0 else message[4:-1]
    return message[:1] + len(body).to_bytes(3, "big") + body


@pytest.mark.parametrize(
    ("index", "by", "error"),
    [
        # A stray byte: qh3's own block check (inside the pull) says so first.
        (0, 1, "extra bytes at the end"),
        (0, -1, "malformed Certificate message"),
        (1, 1, "extra bytes at the end"),
        (1, -1, "malformed CertificateVerify message"),
    ],
)
def test_a_client_message_of_the_wrong_size_is_a_decode_error(
    pki: PkiPaths, index: int, by: int, error: str
) -> None:
    refusals = Refusals()
    server, auth, messages = _client_flight(pki, refusals)
    messages[index] = _resized(messages[index], by)

    with pytest.raises(tls.AlertDecodeError, match=error):
        tls_flight(server, b"".join(messages), tls.Epoch.HANDSHAKE)
    assert auth.identity is None
    assert [r for r, _ in refusals.seen] == ["handshake_failed"]


# ---- DATAGRAM frames ------------------------------------------------------------------------


def watch_overshoot(wire: EnginePair) -> list[int]:
    """bytes_in_flight - cwnd of the client right after each of its flushes, from now on."""
    overshoot: list[int] = []

    def watch(source: Address, out: list[tuple[bytes, Address]]) -> None:
        if source == CLIENT_ADDR:
            stats = wire.client.stats()
            overshoot.append(stats.bytes_in_flight - stats.cwnd)

    wire.watch = watch
    return overshoot


def test_datagrams_leave_within_the_congestion_window(pki: PkiPaths) -> None:
    wire = qh3_pair(pki, client_config(pki, datagram_queue=5000))
    client = wire.client
    overshoot = watch_overshoot(wire)
    payloads = [i.to_bytes(4, "big") * 275 for i in range(5000)]  # 1100 bytes each
    assert all(client.send_datagram(p) is SendStatus.SENT for p in payloads)
    assert client.datagrams_queued == 5000
    wire.settle(lambda: client.datagrams_queued == 0)
    wire.settle()

    assert max(overshoot) <= 1200  # never more than one packet past the window
    assert received(wire.server_events) == payloads  # all of them, in order


def test_lost_datagram_frames_shrink_the_window_and_are_counted(pki: PkiPaths) -> None:
    wire = qh3_pair(pki, client_config(pki, datagram_queue=5000))
    client = wire.client
    overshoot = watch_overshoot(wire)
    wire.lose = lambda source, seq, data: source == CLIENT_ADDR and seq % 7 == 0
    payloads = [i.to_bytes(4, "big") * 275 for i in range(5000)]
    assert all(client.send_datagram(p) is SendStatus.SENT for p in payloads)
    wire.settle(lambda: client.datagrams_queued == 0, horizon=5.0)
    wire.lose = None
    wire.settle(horizon=5.0)

    got = received(wire.server_events)
    # Each 1100-byte frame fills a packet: a lost datagram that big took exactly one frame.
    lost_frames = [d for d in wire.lost if len(d) > 1100]
    assert len(got) + len(lost_frames) == 5000
    arrived = set(got)
    assert got == [p for p in payloads if p in arrived]  # in order, no duplicates
    assert client.stats().packets_lost >= len(lost_frames) - 5  # the core counted them
    assert client.stats().cwnd < 200_000  # losses kept the window small
    assert max(overshoot) <= 1200


def test_raw_qh3_would_ignore_the_window(pki: PkiPaths) -> None:
    # Why the gate exists (and a check that it still does): the core alone sends them all.
    wire = qh3_pair(pki)
    quic = wire.client._quic  # type: ignore[attr-defined]
    for _ in range(500):
        quic.send_datagram_frame(b"x" * 1100)
    quic.datagrams_to_send(wire.now)
    assert quic._core.bytes_in_flight > 10 * quic._core.congestion_window


def test_too_big_past_one_packet_and_the_largest_does_not_wedge(pki: PkiPaths) -> None:
    wire = qh3_pair(pki)
    for sender, events in ((wire.client, wire.server_events), (wire.srv, wire.client_events)):
        largest = sender.max_datagram_payload
        assert largest == 1200 - _qh3.DATAGRAM_PACKET_OVERHEAD - 3
        assert sender.send_datagram(b"x" * (largest + 1)) is SendStatus.TOO_BIG
        assert sender.send_datagram(b"y" * largest) is SendStatus.SENT
        assert sender.send_datagram(b"z") is SendStatus.SENT
        wire.settle()
        assert received(events)[-2:] == [b"y" * largest, b"z"]


def test_too_big_before_the_handshake(pki: PkiPaths) -> None:
    client = Qh3Engine().connect(client_config(pki), SERVER_ADDR, START)

    assert client.max_datagram_payload == 0
    assert client.send_datagram(b"early") is SendStatus.TOO_BIG


def test_queue_full_past_the_configured_fifo_queue(pki: PkiPaths) -> None:
    wire = qh3_pair(pki, client_config(pki, datagram_queue=3, discipline="fifo"))

    statuses = [wire.client.send_datagram(b"%d" % i) for i in range(4)]
    assert statuses == [SendStatus.SENT] * 3 + [SendStatus.QUEUE_FULL]
    wire.settle()
    assert received(wire.server_events) == [b"0", b"1", b"2"]


def test_stream_data_is_not_starved_by_a_datagram_flood(pki: PkiPaths) -> None:
    wire = qh3_pair(pki, client_config(pki, datagram_queue=5000))
    sid = wire.client.next_stream_id()
    for _ in range(3000):
        wire.client.send_datagram(b"d" * 1100)
    wire.client.send_stream(sid, b"s" * 50_000, end_stream=True)
    wire.tick = 0.001  # qh3 paces stream data (not datagrams): let its pacer run
    wire.settle(lambda: stream_bytes(wire.server_events, sid)[1])

    # The stream finished while most datagrams were still waiting.
    assert len(received(wire.server_events)) < 1500
    wire.settle(lambda: wire.client.datagrams_queued == 0)
    wire.settle()
    assert len(received(wire.server_events)) == 3000


# ---- "packet builder capacity exhausted" ----------------------------------------------------


def aioquic_client(pki: PkiPaths) -> QuicConn:
    return get_engine("aioquic").connect(client_config(pki), SERVER_ADDR, START)


def test_raw_qh3_raises_capacity_exhausted_for_an_aioquic_client(pki: PkiPaths) -> None:
    # The bug the adapter works around (if qh3 fixes it, this test says so).
    configuration = AioquicConfiguration(
        is_client=True, alpn_protocols=["h3"], server_name="localhost"
    )
    configuration.load_verify_locations(cafile=str(pki.ca_cert))
    configuration.load_cert_chain(pki.leaf_cert("client", "alice"), pki.leaf_key("client", "alice"))
    client = AioquicConnection(configuration=configuration)
    client.connect(SERVER_ADDR, START)
    [(initial, _)] = client.datagrams_to_send(START)
    server = QuicConnection(
        configuration=_qh3_mtls.build_server_configuration(pki.relay_cert, pki.relay_key),
        original_destination_connection_id=client.original_destination_connection_id,
    )
    server.receive_datagram(initial, CLIENT_ADDR, START)

    with pytest.raises(QuicConnectionError, match="capacity exhausted"):
        server.datagrams_to_send(START)


def test_a_qh3_server_completes_an_aioquic_handshake_at_once(pki: PkiPaths) -> None:
    wire = EnginePair(Qh3Engine(), server_config(pki), aioquic_client(pki))
    wire.settle(wire.handshake_over, horizon=0.001)  # no probe timeout may fire

    assert not wire.client_terminations() and not wire.server_terminations()
    assert wire.srv.peer_identity is not None
    assert wire.now - START < 0.01


# ---- interop with aioquic -------------------------------------------------------------------


def exercise(wire: EnginePair) -> None:
    """Datagrams and stream data both ways, then a close from the client."""
    assert wire.client.send_datagram(b"up") is SendStatus.SENT
    assert wire.srv.send_datagram(b"down") is SendStatus.SENT
    sid = wire.client.next_stream_id()
    wire.client.send_stream(sid, b"request" * 1000, end_stream=True)
    wire.settle(lambda: stream_bytes(wire.server_events, sid)[1])
    wire.srv.send_stream(sid, b"response" * 1000, end_stream=True)
    wire.settle(lambda: stream_bytes(wire.client_events, sid)[1])
    wire.settle()

    assert received(wire.server_events) == [b"up"]
    assert received(wire.client_events) == [b"down"]
    assert stream_bytes(wire.server_events, sid) == (b"request" * 1000, True)
    assert stream_bytes(wire.client_events, sid) == (b"response" * 1000, True)

    wire.client.close(0x100, "done")
    wire.settle()
    assert wire.client_terminations() == [ConnectionTerminated(0x100, "done", False, True)]
    assert wire.server_terminations() == [ConnectionTerminated(0x100, "done", True, True)]


def test_aioquic_client_and_qh3_server(pki: PkiPaths) -> None:
    wire = EnginePair(Qh3Engine(), server_config(pki), aioquic_client(pki))
    wire.settle(wire.handshake_over)
    assert isinstance(wire.client, AioquicConn) and isinstance(wire.srv, Qh3Conn)
    assert wire.srv.peer_identity is not None

    exercise(wire)


def test_qh3_client_and_aioquic_server(pki: PkiPaths) -> None:
    client = Qh3Engine().connect(client_config(pki), SERVER_ADDR, START)
    wire = EnginePair(get_engine("aioquic"), server_config(pki), client)
    wire.settle(wire.handshake_over)
    assert isinstance(wire.srv, AioquicConn)
    assert wire.srv.peer_identity is not None and str(wire.srv.peer_identity) == "client/alice"
    assert isinstance(wire.client, Qh3Conn)
    relay_leaf = wire.client._quic.get_peercert()
    assert relay_leaf is not None and wire.client.peer_chain[0] == relay_leaf.public_bytes()

    exercise(wire)


def test_a_client_with_an_empty_connection_id_is_served_by_aioquic(pki: PkiPaths) -> None:
    # RFC 9000 section 5.1 allows an empty connection ID (quic-go's clients use one by
    # default); qh3 2.1.0's core would keep answering to the client's original destination
    # ID, so the qh3 engine hands such a client to the aioquic engine.
    configuration = AioquicConfiguration(
        is_client=True,
        alpn_protocols=["h3"],
        server_name="localhost",
        verify_mode=ssl.CERT_REQUIRED,
        connection_id_length=0,
    )
    configuration.load_verify_locations(cafile=str(pki.ca_cert))
    configuration.load_cert_chain(pki.leaf_cert("client", "alice"), pki.leaf_key("client", "alice"))
    quic = AioquicConnection(configuration=configuration)
    quic.connect(SERVER_ADDR, START)
    assert quic.host_cid == b""
    wire = EnginePair(Qh3Engine(), server_config(pki), AioquicConn(quic, SERVER_ADDR, 512))
    wire.settle(wire.handshake_over)

    assert isinstance(wire.srv, AioquicConn)
    assert wire.srv.peer_identity is not None and str(wire.srv.peer_identity) == "client/alice"
    # (Past the handshake this aioquic client sends NEW_CONNECTION_ID frames with empty IDs,
    # which RFC 9000 section 19.15 forbids; tests/interop runs quic-go's empty-ID client.)


def test_an_aioquic_client_without_certificate_is_refused_by_qh3(pki: PkiPaths) -> None:
    configuration = AioquicConfiguration(
        is_client=True,
        alpn_protocols=["h3"],
        server_name="localhost",
        verify_mode=ssl.CERT_REQUIRED,
    )
    configuration.load_verify_locations(cafile=str(pki.ca_cert))
    quic = AioquicConnection(configuration=configuration)
    quic.connect(SERVER_ADDR, START)
    refusals = Refusals()
    wire = EnginePair(
        Qh3Engine(), server_config(pki, refusals), AioquicConn(quic, SERVER_ADDR, 512)
    )
    wire.settle(wire.handshake_over)
    wire.settle()

    assert_refused(wire, refusals, "no_certificate", tls.AlertDescription.certificate_required)


# ---- the version pin ---------------------------------------------------------------------------


def test_the_engine_names_its_version() -> None:
    engine = get_engine("qh3")
    assert (engine.name, engine.version) == ("qh3", "2.1.0")
    assert engine.version == qh3.__version__


@pytest.mark.parametrize("module", ["_qh3_mtls", "_qh3"])
def test_another_qh3_release_refuses_to_load(module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qh3, "__version__", "2.1.1")
    path = Path(_qh3.__file__).with_name(f"{module}.py")
    spec = importlib.util.spec_from_file_location(f"zgate_pin_check_{module}", path)
    assert spec is not None and spec.loader is not None
    copy = importlib.util.module_from_spec(spec)

    with pytest.raises(ImportError, match=r"qh3==2\.1\.0"):
        spec.loader.exec_module(copy)
    with pytest.raises(ImportError, match=r"2\.1\.1"):
        require_version("qh3", qh3.__version__, _qh3_mtls.SUPPORTED_QH3_VERSION)


def test_a_client_can_turn_datagrams_off(pki: PkiPaths) -> None:
    config = ClientConfig(
        server_name="localhost",
        ca_file=pki.ca_cert,
        cert_file=pki.leaf_cert("client", "alice"),
        key_file=pki.leaf_key("client", "alice"),
        max_datagram_frame_size=0,
    )
    wire = qh3_pair(pki, config)

    assert wire.srv.peer_max_datagram_frame_size == 0
    assert wire.srv.send_datagram(b"x") is SendStatus.TOO_BIG
    assert wire.client.peer_max_datagram_frame_size == 65536


def test_unusable_client_files_fail_at_connect(pki: PkiPaths, tmp_path: Path) -> None:
    engine = Qh3Engine()
    with pytest.raises(OSError):
        engine.connect(
            ClientConfig(
                server_name="localhost",
                ca_file=tmp_path / "missing.pem",
                cert_file=pki.leaf_cert("client", "alice"),
                key_file=pki.leaf_key("client", "alice"),
            ),
            SERVER_ADDR,
            START,
        )
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises((OSError, ValueError)):
        engine.connect(client_config(pki, garbage, garbage), SERVER_ADDR, START)


def test_a_relay_key_that_does_not_match_is_refused_at_load(pki: PkiPaths) -> None:
    config = ServerConfig(
        cert_file=pki.relay_cert,
        key_file=pki.leaf_key("client", "alice"),
        verifier=ChainVerifier(pki.ca_cert, pki.crl),
    )
    with pytest.raises(PkiError, match="does not match"):
        Qh3Engine().server_context(config)
