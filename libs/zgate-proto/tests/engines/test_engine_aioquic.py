"""The aioquic engine adapter: its mTLS shim (an aioquic client and an MtlsServerConnection,
in memory, with a fake clock), its version pin, and what only aioquic does."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aioquic import tls
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, QuicEvent

from zgate_pki import (
    REFUSAL_REASONS,
    ChainVerifier,
    PkiError,
    PkiPaths,
    init_pki,
    issue_certificate,
    revoke_certificate,
)
from zgate_proto.engines import _aioquic_mtls as mtls
from zgate_proto.engines import base as engine_base
from zgate_proto.engines import get_engine
from zgate_proto.engines._aioquic import ENGINE, AioquicConn
from zgate_proto.engines._aioquic_mtls import MtlsServerConnection, build_server_configuration
from zgate_proto.engines.base import ClientConfig, QuicEngine, ServerConfig
from zgate_testkit.wire import CLIENT_ADDR, SERVER_ADDR, EnginePair

CRYPTO_ERROR = 0x100


# ---- a reusable in-memory pair ------------------------------------------------------------


@dataclass
class Pair:
    """A client and a server connection joined by an in-memory "network" and a fake clock."""

    client: QuicConnection
    server: MtlsServerConnection
    now: float = 1.0
    client_events: list[QuicEvent] = field(default_factory=list)
    server_events: list[QuicEvent] = field(default_factory=list)

    def client_saw(self, kind: type[QuicEvent]) -> bool:
        return any(isinstance(e, kind) for e in self.client_events)

    def server_saw(self, kind: type[QuicEvent]) -> bool:
        return any(isinstance(e, kind) for e in self.server_events)

    def client_termination(self) -> ConnectionTerminated:
        return next(e for e in self.client_events if isinstance(e, ConnectionTerminated))

    def _deliver(self) -> bool:
        moved = False
        for data, _ in self.client.datagrams_to_send(now=self.now):
            self.server.receive_datagram(data, CLIENT_ADDR, now=self.now)
            moved = True
        for data, _ in self.server.datagrams_to_send(now=self.now):
            self.client.receive_datagram(data, SERVER_ADDR, now=self.now)
            moved = True
        return moved

    def _collect(self) -> None:
        while (event := self.client.next_event()) is not None:
            self.client_events.append(event)
        while (event := self.server.next_event()) is not None:
            self.server_events.append(event)

    def _fire_next_timer(self) -> bool:
        timers = [
            (at, conn)
            for conn in (self.client, self.server)
            if (at := conn.get_timer()) is not None
        ]
        if not timers:
            return False
        at, conn = min(timers, key=lambda item: item[0])
        self.now = max(self.now, at)
        conn.handle_timer(now=self.now)
        return True

    def run(self, until: Callable[[Pair], bool], max_steps: int = 500) -> None:
        """Exchange datagrams, firing timers when the network is idle, until `until` holds."""
        for _ in range(max_steps):
            moved = self._deliver()
            self._collect()
            if until(self):
                return
            if not moved and not self._fire_next_timer():
                break
        raise AssertionError(f"condition not reached; client events: {self.client_events}")

    def handshake(self) -> None:
        """Run until both ends completed the handshake or the client saw the connection end."""
        self.client.connect(SERVER_ADDR, now=self.now)
        self.run(
            lambda p: (
                p.client_saw(ConnectionTerminated)
                or (p.client_saw(HandshakeCompleted) and p.server_saw(HandshakeCompleted))
            )
        )


# ---- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> PkiPaths:
    paths = init_pki(tmp_path / "pki")
    issue_certificate(paths.directory, "client", "alice", groups=["eng", "ops"])
    issue_certificate(paths.directory, "connector", "site-a")
    return paths


@pytest.fixture
def verifier(pki: PkiPaths) -> ChainVerifier:
    return ChainVerifier(pki.ca_cert, pki.crl)


def client_config(
    pki: PkiPaths, cert: Path | None = None, key: Path | None = None, alpn: str = "h3"
) -> QuicConfiguration:
    config = QuicConfiguration(is_client=True, alpn_protocols=[alpn], server_name="localhost")
    config.load_verify_locations(cafile=str(pki.ca_cert))
    if cert is not None:
        config.load_cert_chain(cert, key)
    return config


def make_pair(
    pki: PkiPaths,
    verifier: ChainVerifier,
    client_configuration: QuicConfiguration,
    *,
    client_class: type[QuicConnection] = QuicConnection,
    wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    refusals: list[tuple[str, str]] | None = None,
) -> Pair:
    client = client_class(configuration=client_configuration)
    server = MtlsServerConnection(
        configuration=build_server_configuration(pki.relay_cert, pki.relay_key),
        original_destination_connection_id=client.original_destination_connection_id,
        verifier=verifier,
        on_refused=(lambda r, d: refusals.append((r, d))) if refusals is not None else None,
        wall_clock=wall_clock,
    )
    return Pair(client, server)


def alice(pki: PkiPaths) -> QuicConfiguration:
    return client_config(pki, pki.leaf_cert("client", "alice"), pki.leaf_key("client", "alice"))


def assert_refused(pair: Pair, reason: str, alert: tls.AlertDescription) -> None:
    assert pair.server.refusal_reason == reason
    assert pair.server.peer_identity is None
    assert pair.client_saw(ConnectionTerminated)
    assert pair.client_termination().error_code == CRYPTO_ERROR + alert


# ---- handshakes that succeed -----------------------------------------------------------------


def test_valid_client_certificate_yields_identity(pki: PkiPaths, verifier: ChainVerifier) -> None:
    refusals: list[tuple[str, str]] = []
    pair = make_pair(pki, verifier, alice(pki), refusals=refusals)
    pair.handshake()

    assert pair.server_saw(HandshakeCompleted)
    assert not pair.client_saw(ConnectionTerminated)
    identity = pair.server.peer_identity
    assert identity is not None
    assert str(identity) == "client/alice"
    assert identity.groups == ("eng", "ops")
    assert identity.trust_domain == "zgate.local"
    assert pair.server.refusal_reason is None
    assert refusals == []


def test_connector_certificate_yields_connector_kind(
    pki: PkiPaths, verifier: ChainVerifier
) -> None:
    config = client_config(
        pki, pki.leaf_cert("connector", "site-a"), pki.leaf_key("connector", "site-a")
    )
    pair = make_pair(pki, verifier, config)
    pair.handshake()

    identity = pair.server.peer_identity
    assert identity is not None
    assert (identity.kind, identity.ident, identity.groups) == ("connector", "site-a", ())
    assert str(identity) == "connector/site-a"


def test_certificate_without_its_key_yields_no_identity(
    pki: PkiPaths, verifier: ChainVerifier
) -> None:
    # alice's (valid) certificate with another key: the chain verifies, CertificateVerify fails.
    config = client_config(
        pki, pki.leaf_cert("client", "alice"), pki.leaf_key("connector", "site-a")
    )
    pair = make_pair(pki, verifier, config)
    pair.handshake()

    assert_refused(pair, "handshake_failed", tls.AlertDescription.decrypt_error)


# ---- handshakes that are refused -------------------------------------------------------------


def test_no_client_certificate_is_refused(pki: PkiPaths, verifier: ChainVerifier) -> None:
    refusals: list[tuple[str, str]] = []
    pair = make_pair(pki, verifier, client_config(pki), refusals=refusals)
    pair.handshake()

    assert_refused(pair, "no_certificate", tls.AlertDescription.certificate_required)
    assert [r for r, _ in refusals] == ["no_certificate"]


def test_certificate_from_another_ca_is_refused(
    pki: PkiPaths, verifier: ChainVerifier, tmp_path: Path
) -> None:
    other = init_pki(tmp_path / "other")
    mallory = issue_certificate(other.directory, "client", "mallory")
    pair = make_pair(pki, verifier, client_config(pki, mallory.cert_path, mallory.key_path))
    pair.handshake()

    assert_refused(pair, "unknown_ca", tls.AlertDescription.unknown_ca)


def test_revoked_certificate_is_refused_after_crl_reload(
    pki: PkiPaths, verifier: ChainVerifier
) -> None:
    first = make_pair(pki, verifier, alice(pki))
    first.handshake()
    assert first.server.peer_identity is not None

    revoke_certificate(pki.directory, "alice")
    refusals: list[tuple[str, str]] = []
    second = make_pair(pki, verifier, alice(pki), refusals=refusals)  # same verifier object
    second.handshake()

    assert_refused(second, "revoked", tls.AlertDescription.certificate_revoked)
    assert first.server.peer_identity.serial in verifier.revoked_serials()
    assert len(refusals) == 1


def test_expired_certificate_is_refused(pki: PkiPaths, verifier: ChainVerifier) -> None:
    short = issue_certificate(pki.directory, "client", "brief", days=1)
    config = client_config(pki, short.cert_path, short.key_path)
    later = datetime.now(UTC) + timedelta(days=2)
    pair = make_pair(pki, verifier, config, wall_clock=lambda: later)
    pair.handshake()

    assert_refused(pair, "expired", tls.AlertDescription.certificate_expired)


class Tls12OnlyClient(QuicConnection):
    """A client whose ClientHello offers TLS 1.2 only."""

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        self.tls._supported_versions = [tls.TLS_VERSION_1_2]


def test_client_without_tls13_is_refused(pki: PkiPaths, verifier: ChainVerifier) -> None:
    refusals: list[tuple[str, str]] = []
    pair = make_pair(pki, verifier, alice(pki), client_class=Tls12OnlyClient, refusals=refusals)
    pair.handshake()

    assert_refused(pair, "tls_version", tls.AlertDescription.protocol_version)
    assert [r for r, _ in refusals] == ["tls_version"]


def test_other_handshake_failure_is_recorded(pki: PkiPaths, verifier: ChainVerifier) -> None:
    config = client_config(
        pki, pki.leaf_cert("client", "alice"), pki.leaf_key("client", "alice"), alpn="hq-29"
    )
    pair = make_pair(pki, verifier, config)
    pair.handshake()

    assert_refused(pair, "handshake_failed", tls.AlertDescription.no_application_protocol)


def test_client_alert_is_recorded_when_the_server_terminates(
    pki: PkiPaths, verifier: ChainVerifier, tmp_path: Path
) -> None:
    # The client trusts another CA, so it rejects the relay's certificate.
    other = init_pki(tmp_path / "other")
    config = client_config(other, pki.leaf_cert("client", "alice"), pki.leaf_key("client", "alice"))
    pair = make_pair(pki, verifier, config)
    pair.client.connect(SERVER_ADDR, now=pair.now)
    pair.run(lambda p: p.server_saw(ConnectionTerminated))

    assert pair.server.refusal_reason == "handshake_failed"
    assert pair.server.peer_identity is None
    assert pair.server.refusal_detail is not None


def test_failing_refusal_callback_does_not_break_the_refusal(
    pki: PkiPaths, verifier: ChainVerifier, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(reason: str, detail: str) -> None:
        raise RuntimeError("metrics backend down")

    client = QuicConnection(configuration=client_config(pki))
    server = MtlsServerConnection(
        configuration=build_server_configuration(pki.relay_cert, pki.relay_key),
        original_destination_connection_id=client.original_destination_connection_id,
        verifier=verifier,
        on_refused=broken,
    )
    pair = Pair(client, server)
    pair.handshake()

    assert_refused(pair, "no_certificate", tls.AlertDescription.certificate_required)
    assert "on_refused callback failed" in caplog.text


def test_broken_crl_on_disk_keeps_the_previous_trust(
    pki: PkiPaths, verifier: ChainVerifier, caplog: pytest.LogCaptureFixture
) -> None:
    pki.crl.write_text("not a CRL")
    pair = make_pair(pki, verifier, alice(pki))
    pair.handshake()

    assert pair.server.peer_identity is not None
    assert "keeping the previous CA certificate and CRL" in caplog.text


# ---- guards ----------------------------------------------------------------------------------


def test_other_aioquic_versions_are_rejected() -> None:
    mtls.check_aioquic_version(mtls.SUPPORTED_AIOQUIC_VERSION)
    with pytest.raises(ImportError, match=r"aioquic 1\.8\.0 is installed"):
        mtls.check_aioquic_version("1.8.0")


def test_a_context_offering_more_than_tls13_is_refused(
    pki: PkiPaths, verifier: ChainVerifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    original_init = tls.Context.__init__

    def init_with_tls12(context: tls.Context, *args: Any, **kwargs: Any) -> None:
        original_init(context, *args, **kwargs)
        context._supported_versions = [tls.TLS_VERSION_1_3, tls.TLS_VERSION_1_2]

    pair = make_pair(pki, verifier, alice(pki))
    monkeypatch.setattr(tls.Context, "__init__", init_with_tls12)
    with pytest.raises(RuntimeError, match=r"TLS 1\.3 only"):
        pair.handshake()


def test_server_configuration_rejects_a_mismatched_key(pki: PkiPaths) -> None:
    config = build_server_configuration(pki.relay_cert, pki.relay_key)
    assert config.is_client is False
    assert config.alpn_protocols == ["h3"]
    assert config.max_datagram_frame_size == 65536
    assert config.max_datagram_size == 1200
    tuned = build_server_configuration(
        pki.relay_cert, pki.relay_key, max_datagram_size=1350, idle_timeout=5.0
    )
    assert (tuned.max_datagram_size, tuned.idle_timeout) == (1350, 5.0)
    with pytest.raises(PkiError, match="does not match"):
        build_server_configuration(pki.relay_cert, pki.ca_key)
    with pytest.raises(PkiError, match="cannot load"):
        build_server_configuration(pki.directory / "missing.pem", pki.relay_key)


def test_client_configuration_is_refused(pki: PkiPaths, verifier: ChainVerifier) -> None:
    with pytest.raises(ValueError, match="server configuration"):
        MtlsServerConnection(configuration=client_config(pki), verifier=verifier)


def test_every_refusal_reason_is_listed() -> None:
    # A certificate's reasons, and the two the TLS code adds.
    expected = {*REFUSAL_REASONS, "tls_version", "handshake_failed"}
    assert set(mtls.HANDSHAKE_REFUSAL_REASONS) == expected


# ---- the engine adapter (zgate_proto.engines._aioquic) ----------------------------------------


def test_the_adapter_is_an_engine() -> None:
    engine: QuicEngine = get_engine("aioquic")
    assert engine is ENGINE
    assert (engine.name, engine.version) == ("aioquic", mtls.SUPPORTED_AIOQUIC_VERSION)


@pytest.mark.parametrize("module", ["_aioquic", "_aioquic_mtls"])
def test_the_adapter_refuses_to_load_on_another_aioquic_release(
    module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aioquic

    import zgate_proto.engines

    path = Path(zgate_proto.engines.__file__).parent / f"{module}.py"
    spec = importlib.util.spec_from_file_location(f"zgate_test_copy_of_{module}", path)
    assert spec is not None and spec.loader is not None
    monkeypatch.setattr(aioquic, "__version__", "1.8.0")
    with pytest.raises(ImportError, match=r"aioquic 1\.8\.0 is installed"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


def engine_pair(
    pki: PkiPaths,
    verifier: ChainVerifier,
    ca: Path | None = None,
    server: ServerConfig | None = None,
) -> EnginePair:
    """An aioquic client dialling an aioquic server on the wire (not yet run)."""
    client = ClientConfig(
        server_name="localhost",
        ca_file=ca or pki.ca_cert,
        cert_file=pki.leaf_cert("client", "alice"),
        key_file=pki.leaf_key("client", "alice"),
    )
    config = server or ServerConfig(
        cert_file=pki.relay_cert, key_file=pki.relay_key, verifier=verifier
    )
    return EnginePair(ENGINE, config, ENGINE.connect(client, SERVER_ADDR, 1.0))


def aioquic_conns(pair: EnginePair) -> tuple[AioquicConn, AioquicConn]:
    """The pair's client and server connections, as the aioquic adapter's own."""
    client, server = pair.client, pair.server
    assert isinstance(client, AioquicConn) and isinstance(server, AioquicConn)
    return client, server


def test_the_first_event_names_the_connection_id_it_chose(
    pki: PkiPaths, verifier: ChainVerifier
) -> None:
    pair = engine_pair(pki, verifier)
    pair.settle()
    client, server = aioquic_conns(pair)
    first_client, first_server = pair.client_events[0], pair.server_events[0]
    assert first_client == engine_base.ConnectionIdIssued(client._quic.host_cid)
    assert isinstance(first_server, engine_base.ConnectionIdIssued)
    # the server's first own ID, which the client switched to from the original one
    assert first_server.connection_id != server._quic.original_destination_connection_id


def test_a_tls_failure_ends_the_connection_without_waiting_for_the_closing_period(
    pki: PkiPaths, verifier: ChainVerifier, tmp_path: Path
) -> None:
    # The client trusts another CA: its TLS stack refuses the relay's certificate.
    other = init_pki(tmp_path / "other")
    pair = engine_pair(pki, verifier, ca=other.ca_cert)
    pair.settle(horizon=0.0)  # no timer fires: aioquic's closing period never ends

    [ended] = pair.client_terminations()
    assert ended.error_code == CRYPTO_ERROR + tls.AlertDescription.bad_certificate
    assert (ended.by_peer, ended.handshake_done) == (False, False)
    assert pair.server is not None
    [server_end] = pair.server_terminations()
    assert server_end.by_peer is True
    assert pair.server.refusal is not None
    assert pair.server.refusal[0] == "handshake_failed"
    # and aioquic's own late event does not come as a second one
    pair.settle(horizon=120.0)
    assert len(pair.client_terminations()) == 1
    assert len(pair.server_terminations()) == 1


def test_an_idle_connection_times_out_once(pki: PkiPaths, verifier: ChainVerifier) -> None:
    pair = engine_pair(pki, verifier)
    pair.settle()
    pair.settle(horizon=120.0)

    for terminations in (pair.client_terminations(), pair.server_terminations()):
        [ended] = terminations
        assert (ended.reason, ended.by_peer, ended.handshake_done) == ("Idle timeout", False, True)
    assert pair.client.closed
    assert pair.client.deadline() is None


def test_lost_packets_are_counted(pki: PkiPaths, verifier: ChainVerifier) -> None:
    pair = engine_pair(pki, verifier)
    pair.settle()
    assert pair.client.stats().packets_lost == 0
    pair.client.send_stream(0, b"lost", end_stream=True)
    assert pair.client.flush(pair.now)  # never delivered
    for _ in range(5):  # an ACK delay may come first, then the probe timeout
        at = pair.client.deadline()
        assert at is not None
        pair.now = at
        pair.client.handle_timer(at)
        pair.client.flush(pair.now)
        if pair.client.stats().packets_lost:
            break
    assert pair.client.stats().packets_lost >= 1


def test_accept_wants_an_initial(pki: PkiPaths, verifier: ChainVerifier) -> None:
    config = ServerConfig(cert_file=pki.relay_cert, key_file=pki.relay_key, verifier=verifier)
    assert ENGINE.accept(config, b"\x40" + bytes(1199), CLIENT_ADDR, 1.0) is None  # 1-RTT
    assert ENGINE.accept(config, b"\xc0\x00", CLIENT_ADDR, 1.0) is None  # cut short
    # A well-formed v1 Initial header whose payload does not decrypt.
    header = b"\xc3" + (1).to_bytes(4, "big") + b"\x08" + b"D" * 8 + b"\x00\x00"
    header += (0x4000 | (1200 - len(header) - 2)).to_bytes(2, "big")
    forged = header + bytes(1200 - len(header))
    assert ENGINE.accept(config, forged, CLIENT_ADDR, 1.0) is None


def test_the_server_context_is_loaded_once_and_reused(
    pki: PkiPaths, verifier: ChainVerifier
) -> None:
    config = ServerConfig(
        cert_file=pki.relay_cert,
        key_file=pki.relay_key,
        verifier=verifier,
        connection_id_length=16,
        max_datagram_size=1350,
    )
    context = ENGINE.server_context(config)
    assert (context.connection_id_length, context.max_datagram_size) == (16, 1350)
    pair = engine_pair(pki, verifier, server=config)
    pair.settle()
    _, server = aioquic_conns(pair)
    assert server._quic.configuration is context

    broken = ServerConfig(cert_file=pki.relay_cert, key_file=pki.ca_key, verifier=verifier)
    with pytest.raises(PkiError, match="does not match"):
        ENGINE.server_context(broken)


def test_unreadable_client_files_raise_os_or_value_errors(pki: PkiPaths) -> None:
    missing = ClientConfig(
        server_name="localhost",
        ca_file=pki.ca_cert,
        cert_file=pki.directory / "missing.pem",
        key_file=pki.leaf_key("client", "alice"),
    )
    with pytest.raises(OSError):
        ENGINE.connect(missing, SERVER_ADDR, 1.0)
    garbage = pki.directory / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises((OSError, ValueError)):
        ENGINE.connect(
            ClientConfig(
                server_name="localhost",
                ca_file=pki.ca_cert,
                cert_file=garbage,
                key_file=garbage,
            ),
            SERVER_ADDR,
            1.0,
        )
