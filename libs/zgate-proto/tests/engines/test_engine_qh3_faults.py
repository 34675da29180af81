"""The qh3 adapter when things go wrong: a core that fails for a reason other than
back-pressure (INTERNAL_ERROR, flush never raises), input qh3 raises on (decode_error before
the handshake, dropped after it), DATAGRAM frames dropped when the path shrinks under them,
calls on a closed or never-started connection, and the client-certificate shim's answers to
messages out of order or in the wrong epoch, a crashing verifier and a client's alert.

Two in-memory peers and a fake clock, no sockets; the happy paths are in test_engine_qh3.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from qh3 import tls
from qh3._hazmat import Buffer
from qh3.quic.configuration import QuicConfiguration
from qh3.quic.connection import QuicConnection, QuicConnectionError
from qh3.quic.packet import QuicErrorCode

from zgate_pki import CertificateRefused, ChainVerifier, PkiPaths
from zgate_proto.engines import _qh3, _qh3_mtls
from zgate_proto.engines._qh3 import Qh3Conn, Qh3Engine
from zgate_proto.engines._qh3_mtls import ClientAuthenticator
from zgate_proto.engines.base import (
    ClientConfig,
    ConnectionTerminated,
    DatagramReceived,
    QuicEvent,
    SendStatus,
)
from zgate_testkit.pki import Refusals, make_pki, server_config
from zgate_testkit.qh3_tls import tls_contexts, tls_flight, tls_messages
from zgate_testkit.wire import CLIENT_ADDR, SERVER_ADDR, START, EnginePair

CRYPTO_ERROR = 0x100


@pytest.fixture
def pki(tmp_path: Path) -> PkiPaths:
    return make_pki(tmp_path / "pki", groups=["eng"], connectors=["site-a"])


def client_config(pki: PkiPaths) -> ClientConfig:
    return ClientConfig(
        server_name="localhost",
        ca_file=pki.ca_cert,
        cert_file=pki.leaf_cert("client", "alice"),
        key_file=pki.leaf_key("client", "alice"),
    )


def connected(pki: PkiPaths, refusals: Refusals | None = None) -> EnginePair:
    engine = Qh3Engine()
    conn = engine.connect(client_config(pki), SERVER_ADDR, START)
    wire = EnginePair(engine, server_config(pki, refusals), conn)
    wire.settle(wire.handshake_over)
    wire.settle()
    return wire


def quic_of(conn: object) -> Any:
    assert isinstance(conn, Qh3Conn)
    return conn._quic


def drain(conn: Qh3Conn) -> list[QuicEvent]:
    events: list[QuicEvent] = []
    while (event := conn.next_event()) is not None:
        events.append(event)
    return events


class BrokenCore:
    """qh3's core with a poll_transmit that fails the way a core bug would."""

    def __init__(self, core: Any, message: str) -> None:
        self._core = core
        self.message = message
        self.polls = 0

    def poll_transmit(self, now: float) -> Any:
        self.polls += 1
        raise RuntimeError(self.message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._core, name)


# ---- core failures -------------------------------------------------------------------------


def test_a_core_error_closes_with_internal_error_and_flush_does_not_raise(pki: PkiPaths) -> None:
    wire = connected(pki)
    client = wire.client
    assert isinstance(client, Qh3Conn)
    quic = quic_of(client)
    broken = BrokenCore(quic._core, "frame encoder exploded")
    quic._core = broken

    assert client.flush(wire.now) == []
    assert client.closed
    assert broken.polls == 1
    # Flushing again stays quiet (no second close) and still returns.
    assert client.flush(wire.now) == []
    [ended] = [e for e in drain(client) if isinstance(e, ConnectionTerminated)]
    assert ended.error_code == QuicErrorCode.INTERNAL_ERROR
    assert "frame encoder exploded" in ended.reason
    assert ended.by_peer is False and ended.handshake_done is True


def test_capacity_exhausted_is_back_pressure_not_a_failure(pki: PkiPaths) -> None:
    wire = connected(pki)
    client = wire.client
    assert isinstance(client, Qh3Conn)
    quic = quic_of(client)
    quic._core = BrokenCore(quic._core, _qh3._CAPACITY_EXHAUSTED)

    assert client.flush(wire.now) == []
    assert not client.closed
    assert client.send_datagram(b"still open") is SendStatus.SENT


def test_a_timer_failure_closes_with_internal_error(
    pki: PkiPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    wire = connected(pki)
    client = wire.client
    assert isinstance(client, Qh3Conn)

    def fail(now: float) -> None:
        raise QuicConnectionError(QuicErrorCode.PROTOCOL_VIOLATION, None, "timer broke")

    monkeypatch.setattr(quic_of(client), "handle_timer", fail)
    client.handle_timer(wire.now)

    assert client.closed
    assert client.send_datagram(b"late") is SendStatus.CLOSED
    [ended] = [e for e in drain(client) if isinstance(e, ConnectionTerminated)]
    assert (ended.error_code, ended.reason) == (QuicErrorCode.INTERNAL_ERROR, "timer broke")


# ---- input qh3 raises on ---------------------------------------------------------------------


def test_input_raising_before_the_handshake_is_decode_error(
    pki: PkiPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = Qh3Engine().connect(client_config(pki), SERVER_ADDR, START)

    def choke(data: bytes, addr: object, now: float) -> None:
        raise ValueError("unparsable ServerHello")

    monkeypatch.setattr(client._quic, "receive_datagram", choke)
    client.feed(b"\xc0" + b"\x00" * 1199, SERVER_ADDR, START)

    assert client.closed
    [ended] = [e for e in drain(client) if isinstance(e, ConnectionTerminated)]
    assert ended.error_code == CRYPTO_ERROR + tls.AlertDescription.decode_error
    assert ended.handshake_done is False


def test_input_raising_after_the_handshake_is_dropped(
    pki: PkiPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    wire = connected(pki)
    client = wire.client
    assert isinstance(client, Qh3Conn)
    calls: list[int] = []

    def choke(batch: list[bytes], addr: object, now: float) -> None:
        calls.append(len(batch))
        raise ValueError("corrupt")

    monkeypatch.setattr(client._quic, "receive_many_datagrams", choke)
    client.feed(b"a", SERVER_ADDR, wire.now)
    client.feed(b"b", SERVER_ADDR, wire.now)
    # A datagram from another address hands the first batch on before it is collected.
    client.feed(b"c", ("192.0.2.9", 443), wire.now)
    assert calls == [2]
    assert client.deadline() is not None  # hands on the rest
    assert calls == [2, 1]

    monkeypatch.undo()
    assert not client.closed
    assert client.send_datagram(b"alive") is SendStatus.SENT
    wire.settle()
    assert DatagramReceived(b"alive") in wire.server_events


# ---- DATAGRAM frames and the path ------------------------------------------------------------


def test_frames_too_big_for_a_shrunken_path_are_dropped_and_counted(
    pki: PkiPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    wire = connected(pki)
    client = wire.client
    assert isinstance(client, Qh3Conn)
    assert client.send_datagram(b"L" * 1000) is SendStatus.SENT
    assert client.send_datagram(b"s" * 10) is SendStatus.SENT
    # The path shrinks before the frames leave.
    monkeypatch.setattr(_qh3, "_max_payload", lambda size, peer: 100)
    wire.settle()

    assert [e.data for e in wire.server_events if isinstance(e, DatagramReceived)] == [b"s" * 10]
    assert client._dropped_frames == 1
    assert client.datagrams_queued == 0


def test_stats_before_and_after_the_handshake(pki: PkiPaths) -> None:
    wire = connected(pki)
    stats = wire.client.stats()
    assert stats.rtt > 0 and stats.cwnd > 0 and stats.packets_lost == 0
    assert wire.client.send_datagram(b"q") is SendStatus.SENT
    assert wire.client.stats().datagrams_queued == 1


def test_a_connection_whose_core_never_started(pki: PkiPaths) -> None:
    # A server connection qh3 did not start (no Initial accepted yet): every call is inert.
    configuration = _qh3_mtls.build_server_configuration(pki.relay_cert, pki.relay_key)
    conn = Qh3Conn(
        QuicConnection(configuration=configuration, original_destination_connection_id=b"8bytes!!"),
        SERVER_ADDR,
        4,
    )
    assert quic_of(conn)._core is None
    assert conn.send_datagram(b"x") is SendStatus.TOO_BIG
    stats = conn.stats()
    assert (stats.rtt, stats.cwnd, stats.bytes_in_flight, stats.packets_lost) == (0.0, 0, 0, 0)
    assert conn.flush(START) == []
    conn.ping()
    conn.close(1, "never started")
    assert not conn.closed
    assert conn.max_datagram_payload == 0


def test_closing_before_the_handshake(pki: PkiPaths) -> None:
    client = Qh3Engine().connect(client_config(pki), SERVER_ADDR, START)
    client.close(0x10C, "changed my mind")

    assert client.closed and not client.handshake_done
    assert client.send_datagram(b"x") is SendStatus.CLOSED
    [ended] = [e for e in drain(client) if isinstance(e, ConnectionTerminated)]
    assert (ended.error_code, ended.reason, ended.handshake_done) == (
        0x10C,
        "changed my mind",
        False,
    )
    assert client.next_event() is None  # nothing after the termination


def test_stream_calls_on_bad_or_closed_streams(pki: PkiPaths) -> None:
    wire = connected(pki)
    client = wire.client
    # A server-initiated unidirectional stream is not ours to send on or reset; our own
    # unidirectional stream has no receiving side to stop.
    with pytest.raises(ValueError):
        client.send_stream(3, b"x")
    with pytest.raises(ValueError):
        client.reset_stream(3, 0)
    assert client.stream_backlog(3) == 0
    sid = client.next_stream_id(unidirectional=True)
    client.send_stream(sid, b"x")
    with pytest.raises(ValueError):
        client.stop_stream(sid, 0)

    client.close(0, "")
    # Once closing, stream calls are ignored rather than raised.
    client.send_stream(3, b"x")
    client.reset_stream(3, 0)
    client.stop_stream(sid, 0)
    client.ping()
    assert client.closed


# ---- the client-certificate shim at the TLS level -------------------------------------------


def client_flight(pki: PkiPaths, auth: ClientAuthenticator) -> tuple[tls.Context, list[bytes]]:
    """The server context with ``auth`` attached, and the client's Certificate,
    CertificateVerify and Finished, not yet given to it."""
    client, server = tls_contexts(pki)
    auth.attach(server)
    answer = tls_flight(
        server, tls_flight(client, b"", tls.Epoch.INITIAL)[tls.Epoch.INITIAL], tls.Epoch.INITIAL
    )
    tls_flight(client, answer[tls.Epoch.INITIAL], tls.Epoch.INITIAL)
    flight = tls_flight(client, answer[tls.Epoch.HANDSHAKE], tls.Epoch.HANDSHAKE)
    return server, tls_messages(flight[tls.Epoch.HANDSHAKE])


def authenticator(pki: PkiPaths, refusals: Refusals) -> ClientAuthenticator:
    return ClientAuthenticator(ChainVerifier(pki.ca_cert, pki.crl), refusals)


def test_the_client_flight_in_the_wrong_epoch_is_unexpected_message(pki: PkiPaths) -> None:
    refusals = Refusals()
    auth = authenticator(pki, refusals)
    server, [certificate, _verify, _finished] = client_flight(pki, auth)

    with pytest.raises(tls.AlertUnexpectedMessage, match="outside the Handshake epoch"):
        tls_flight(server, certificate, tls.Epoch.ONE_RTT)
    assert auth.identity is None and auth.chain == ()
    assert [r for r, _ in refusals.seen] == ["handshake_failed"]


def test_finished_first_is_no_certificate(pki: PkiPaths) -> None:
    refusals = Refusals()
    auth = authenticator(pki, refusals)
    server, [_certificate, _verify, finished] = client_flight(pki, auth)

    with pytest.raises(tls.Alert) as raised:
        tls_flight(server, finished, tls.Epoch.HANDSHAKE)
    assert raised.value.description == tls.AlertDescription.certificate_required
    assert auth.refusal is not None and auth.refusal[0] == "no_certificate"
    assert [r for r, _ in refusals.seen] == ["no_certificate"]


@pytest.mark.parametrize("twice", ["certificate", "verify"])
def test_a_repeated_message_is_unexpected_message(pki: PkiPaths, twice: str) -> None:
    refusals = Refusals()
    auth = authenticator(pki, refusals)
    server, [certificate, verify, _finished] = client_flight(pki, auth)
    data = certificate + certificate if twice == "certificate" else certificate + verify + verify

    with pytest.raises(tls.AlertUnexpectedMessage):
        tls_flight(server, data, tls.Epoch.HANDSHAKE)
    assert auth.identity is None
    assert [r for r, _ in refusals.seen] == ["handshake_failed"]


def test_an_unexpected_message_kind_is_unexpected_message(pki: PkiPaths) -> None:
    refusals = Refusals()
    auth = authenticator(pki, refusals)
    server, _ = client_flight(pki, auth)
    key_update = bytes([tls.HandshakeType.KEY_UPDATE]) + b"\x00\x00\x01\x00"

    with pytest.raises(tls.AlertUnexpectedMessage):
        tls_flight(server, key_update, tls.Epoch.HANDSHAKE)
    assert [r for r, _ in refusals.seen] == ["handshake_failed"]


def _certificate_message(context: bytes, ders: list[bytes]) -> bytes:
    entries = b"".join(len(d).to_bytes(3, "big") + d + b"\x00\x00" for d in ders)
    body = bytes([len(context)]) + context + len(entries).to_bytes(3, "big") + entries
    return bytes([tls.HandshakeType.CERTIFICATE]) + len(body).to_bytes(3, "big") + body


def test_a_certificate_request_context_is_illegal_parameter(pki: PkiPaths) -> None:
    refusals = Refusals()
    auth = authenticator(pki, refusals)
    server, _ = client_flight(pki, auth)
    leaf = pki.leaf_cert("client", "alice")
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    der = x509.load_pem_x509_certificate(leaf.read_bytes()).public_bytes(Encoding.DER)

    with pytest.raises(tls.AlertIllegalParameter, match="certificate_request_context"):
        tls_flight(server, _certificate_message(b"ctx", [der]), tls.Epoch.HANDSHAKE)
    assert [r for r, _ in refusals.seen] == ["handshake_failed"]


def test_an_empty_certificate_is_certificate_required(pki: PkiPaths) -> None:
    refusals = Refusals()
    auth = authenticator(pki, refusals)
    server, _ = client_flight(pki, auth)

    with pytest.raises(tls.Alert) as raised:
        tls_flight(server, _certificate_message(b"", []), tls.Epoch.HANDSHAKE)
    assert raised.value.description == tls.AlertDescription.certificate_required
    assert [r for r, _ in refusals.seen] == ["no_certificate"]


def test_an_unparsable_certificate_is_bad_certificate(pki: PkiPaths) -> None:
    refusals = Refusals()
    auth = authenticator(pki, refusals)
    server, _ = client_flight(pki, auth)

    with pytest.raises(tls.Alert) as raised:
        tls_flight(server, _certificate_message(b"", [b"\x30\x03junk"]), tls.Epoch.HANDSHAKE)
    assert raised.value.description == tls.AlertDescription.bad_certificate
    assert [r for r, _ in refusals.seen] == ["bad_certificate"]
    assert auth.chain == ()


def test_a_crashing_verifier_is_bad_certificate(
    pki: PkiPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    refusals = Refusals()
    verifier = ChainVerifier(pki.ca_cert, pki.crl)

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyError("verifier bug")

    monkeypatch.setattr(verifier, "verify", crash)
    auth = ClientAuthenticator(verifier, refusals)
    server, [certificate, verify, finished] = client_flight(pki, auth)

    with pytest.raises(tls.Alert) as raised:
        tls_flight(server, certificate + verify + finished, tls.Epoch.HANDSHAKE)
    assert raised.value.description == tls.AlertDescription.bad_certificate
    assert [r for r, _ in refusals.seen] == ["bad_certificate"]
    assert auth.identity is None


def test_a_trust_reload_failure_refuses(pki: PkiPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    refusals = Refusals()
    verifier = ChainVerifier(pki.ca_cert, pki.crl)

    def unreadable(*args: object, **kwargs: object) -> None:
        raise CertificateRefused("bad_certificate", "cannot reload the CRL")

    monkeypatch.setattr(verifier, "verify", unreadable)
    auth = ClientAuthenticator(verifier, refusals)
    server, [certificate, _verify, _finished] = client_flight(pki, auth)

    with pytest.raises(tls.Alert) as raised:
        tls_flight(server, certificate, tls.Epoch.HANDSHAKE)
    assert raised.value.description == tls.AlertDescription.bad_certificate
    assert refusals.seen == [("bad_certificate", "cannot reload the CRL")]


def test_a_scheme_not_offered_is_illegal_parameter(pki: PkiPaths) -> None:
    refusals = Refusals()
    auth = authenticator(pki, refusals)
    server, [certificate, verify, _finished] = client_flight(pki, auth)
    # RSA_PKCS1_SHA1 (0x0201) is not among CLIENT_SIGNATURE_ALGORITHMS.
    forged = verify[:4] + b"\x02\x01" + verify[6:]

    with pytest.raises(tls.AlertIllegalParameter, match="did not offer"):
        tls_flight(server, certificate + forged, tls.Epoch.HANDSHAKE)
    assert auth.identity is None
    assert [r for r, _ in refusals.seen] == ["handshake_failed"]


def test_attach_refuses_a_used_or_tls12_context(pki: PkiPaths) -> None:
    auth = authenticator(pki, Refusals())
    client, server = tls_contexts(pki)
    tls_flight(
        server, tls_flight(client, b"", tls.Epoch.INITIAL)[tls.Epoch.INITIAL], tls.Epoch.INITIAL
    )
    with pytest.raises(RuntimeError, match="fresh server TLS context"):
        auth.attach(server)

    _, fresh = tls_contexts(pki)
    fresh._supported_versions = [tls.TLS_VERSION_1_3, tls.TLS_VERSION_1_2]
    with pytest.raises(RuntimeError, match=r"TLS 1\.3 only"):
        auth.attach(fresh)


def test_a_client_alert_after_the_handshake_is_not_a_refusal(pki: PkiPaths) -> None:
    refusals = Refusals()
    wire = connected(pki, refusals)
    assert wire.srv.peer_identity is not None

    wire.client.close(CRYPTO_ERROR + tls.AlertDescription.bad_certificate, "late")
    wire.settle()
    assert wire.srv.refusal is None and refusals.seen == []
    [ended] = wire.server_terminations()
    assert ended.by_peer and ended.handshake_done


def test_a_handshake_message_qh3_cannot_parse_is_a_refusal(
    pki: PkiPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    refusals = Refusals()
    engine = Qh3Engine()
    conn = engine.connect(client_config(pki), SERVER_ADDR, START)
    wire = EnginePair(engine, server_config(pki, refusals), conn)
    while wire.server is None:
        assert wire.exchange()

    def choke(data: bytes, addr: object, now: float) -> None:
        raise ValueError("qh3 parser bug")

    monkeypatch.setattr(quic_of(wire.srv), "receive_datagram", choke)
    wire.settle(horizon=1.0)

    assert wire.srv.refusal is not None and wire.srv.refusal[0] == "handshake_failed"
    assert "malformed handshake message" in wire.srv.refusal[1]
    assert [r for r, _ in refusals.seen] == ["handshake_failed"]
    [ours] = wire.server_terminations()
    assert ours.error_code == CRYPTO_ERROR + tls.AlertDescription.decode_error
    assert wire.srv.peer_identity is None


def test_the_certificate_request_writer_is_installed_once() -> None:
    installed = tls.push_encrypted_extensions
    _qh3_mtls._install_certificate_request_writer()
    assert tls.push_encrypted_extensions is installed  # never two CertificateRequests


def test_a_qh3_change_that_skips_the_certificate_request_fails_closed(
    pki: PkiPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrapped = tls.push_encrypted_extensions

    def route_around(buf: Buffer, extensions: Any) -> None:
        armed, _qh3_mtls._ARMED.buffer = _qh3_mtls._ARMED.buffer, None
        try:
            wrapped(buf, extensions)
        finally:
            _qh3_mtls._ARMED.buffer = armed

    monkeypatch.setattr(tls, "push_encrypted_extensions", route_around)
    refusals = Refusals()
    auth = authenticator(pki, refusals)
    client, server = tls_contexts(pki)
    auth.attach(server)
    hello = tls_flight(client, b"", tls.Epoch.INITIAL)[tls.Epoch.INITIAL]

    with pytest.raises(tls.AlertInternalError, match="could not request a client certificate"):
        tls_flight(server, hello, tls.Epoch.INITIAL)
    assert [r for r, _ in refusals.seen] == ["handshake_failed"]


def test_a_server_connection_needs_a_server_configuration(pki: PkiPaths) -> None:
    with pytest.raises(ValueError, match="server configuration"):
        _qh3_mtls.MtlsServerConnection(
            configuration=QuicConfiguration(is_client=True),
            original_destination_connection_id=b"8bytes!!",
            authenticator=authenticator(pki, Refusals()),
        )


def test_after_the_handshake_a_malformed_message_is_no_refusal(pki: PkiPaths) -> None:
    refusals = Refusals()
    auth = authenticator(pki, refusals)
    server, [certificate, verify, finished] = client_flight(pki, auth)
    tls_flight(server, certificate + verify + finished, tls.Epoch.HANDSHAKE)
    assert auth.done and auth.identity is not None

    auth.refuse_malformed("late garbage")
    auth.note_termination(CRYPTO_ERROR + tls.AlertDescription.decode_error)
    assert auth.refusal is None and refusals.seen == []
    assert auth.identity is not None


# ---- what the relay's socket receives from strangers -------------------------------------------


def test_accept_makes_no_connection_from_junk(pki: PkiPaths) -> None:
    engine = Qh3Engine()
    config = server_config(pki)
    client = engine.connect(client_config(pki), SERVER_ADDR, START)
    initial = client.flush(START)[0][0]  # the first datagram holds the Initial
    assert len(initial) >= 1200
    short_header = bytes([0x40]) + bytes(8) + b"\x00" * 40

    assert engine.accept(config, b"\x00", CLIENT_ADDR, START) is None  # no header at all
    assert engine.accept(config, short_header, CLIENT_ADDR, START) is None  # not an Initial
    # An Initial cut below 1200 bytes: qh3 starts no connection from it (RFC 9000 14.1).
    assert engine.accept(config, initial[:1000], CLIENT_ADDR, START) is None
    # The whole Initial does make one.
    assert engine.accept(config, initial, CLIENT_ADDR, START) is not None


def test_the_backlog_of_an_impossible_stream_is_zero(pki: PkiPaths) -> None:
    wire = connected(pki)
    assert wire.client.stream_backlog(1 << 62) == 0


def test_a_missing_client_certificate_file_fails_at_connect(pki: PkiPaths, tmp_path: Path) -> None:
    config = ClientConfig(
        server_name="localhost",
        ca_file=pki.ca_cert,
        cert_file=tmp_path / "missing.pem",
        key_file=tmp_path / "missing.key",
    )
    with pytest.raises(OSError):
        Qh3Engine().connect(config, SERVER_ADDR, START)
