"""Session limits: the admission count alone, then the relay core refusing past
--max-sessions (503) and --max-sessions-per-client (429), and closing connections that
hold no session, with engine client connections as in-memory peers on one fake clock."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any

import pytest

from zgate_lab.harness import QUIC_ENGINES, make_pki, relay_server_config
from zgate_pki import Identity, issue_certificate
from zgate_proto import session as cs
from zgate_proto.engines import get_engine
from zgate_proto.engines.base import Address, ClientConfig, QuicEngine
from zgate_proto.session import PacketMode
from zgate_relay.core import RelayCore
from zgate_relay.limits import (
    CLIENT_LIMIT,
    CLIENT_LIMIT_STATUS,
    RELAY_FULL,
    RELAY_FULL_STATUS,
    Admission,
    SessionLimits,
)
from zgate_relay.metrics import RelayMetrics
from zgate_relay.pool import AddressPool
from zgate_testkit.wire import ConnNode, Wire

RELAY: Address = ("192.0.2.1", 4433)
PACING = 0.005


def ident(name: str, kind: str = "client") -> Identity:
    return Identity(kind, name, None, (), 1)


# ------------------------------------------------------------------ the count alone


def test_admission_refuses_past_the_relay_limit_then_admits_after_a_close() -> None:
    admission = Admission(SessionLimits(max_sessions=2))
    for name in ("a", "b"):
        assert admission.check(ident(name)) is None
        admission.opened(ident(name))
    refusal = admission.check(ident("c"))
    assert refusal is not None
    assert (refusal.reason, refusal.status) == (RELAY_FULL, 503)
    assert "--max-sessions" in refusal.detail
    admission.closed(ident("a"))
    assert admission.check(ident("c")) is None


def test_admission_counts_each_identity_apart() -> None:
    admission = Admission(SessionLimits(max_sessions_per_client=2))
    for _ in range(2):
        admission.opened(ident("alice"))
    refusal = admission.check(ident("alice"))
    assert refusal is not None
    assert (refusal.reason, refusal.status) == (CLIENT_LIMIT, 429)
    assert "client alice holds 2 sessions" in refusal.detail
    assert admission.check(ident("bob")) is None
    # A connector of the same name is someone else.
    assert admission.check(ident("alice", "connector")) is None
    admission.closed(ident("alice"))
    admission.closed(ident("alice"))
    assert admission.held_by(ident("alice")) == 0
    assert admission.live == 0


def test_connectors_are_never_refused_but_count_toward_the_total() -> None:
    admission = Admission(SessionLimits(max_sessions=1, max_sessions_per_client=1))
    site = ident("site-a", "connector")
    for _ in range(3):
        assert admission.check(site) is None
        admission.opened(site)
    assert admission.live == 3
    refusal = admission.check(ident("alice"))
    assert refusal is not None and refusal.reason == RELAY_FULL


def test_zero_means_no_limit() -> None:
    admission = Admission(SessionLimits())
    for _ in range(1000):
        admission.opened(ident("alice"))
    assert admission.check(ident("alice")) is None


def test_the_relay_limit_is_checked_before_the_client_limit() -> None:
    # A full relay says so to everyone, even to a client at its own limit: the 503 is the
    # one that tells the operator to look at the relay.
    admission = Admission(SessionLimits(max_sessions=2, max_sessions_per_client=2))
    admission.opened(ident("alice"))
    admission.opened(ident("alice"))
    refusal = admission.check(ident("alice"))
    assert refusal is not None and refusal.reason == RELAY_FULL


# --------------------------------------------------------------- in the relay core


class _RelayNode:
    def __init__(self, core: RelayCore) -> None:
        self.core = core

    def datagram_received(self, data: bytes, addr: Address, now: float) -> None:
        self.core.datagram_received(data, addr, now)

    def flush(self, now: float) -> list[tuple[bytes, Address]]:
        self.core.take_egress()
        return self.core.flush(now)

    def deadline(self) -> float | None:
        return self.core.deadline()

    def handle_timer(self, now: float) -> None:
        self.core.handle_timer(now)


class _Client:
    def __init__(self, session: cs.ClientSession) -> None:
        self.session = session
        self.events: list[object] = []

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


class _Relay:
    """The relay core and client connections on zgate_testkit's wire."""

    def __init__(self, engine: QuicEngine, pki: Path, limits: SessionLimits) -> None:
        self.engine = engine
        self.pki = pki
        self.wire = Wire(now=1000.0)
        self.metrics = RelayMetrics()
        config = relay_server_config(pki, idle_timeout=30.0)
        engine.server_context(config)
        self.core = RelayCore(
            engine=engine,
            config=config,
            pool=AddressPool(ipaddress.IPv4Network("10.100.0.0/16")),
            metrics=self.metrics,
            limits=limits,
        )
        self.wire.add(RELAY, _RelayNode(self.core))
        self._port = 50000

    def connect(self, name: str, kind: str = "clients") -> _Client:
        config = ClientConfig(
            server_name="localhost",
            ca_file=self.pki / "ca.pem",
            cert_file=self.pki / kind / f"{name}.pem",
            key_file=self.pki / kind / f"{name}.key",
            max_datagram_size=1452,
        )
        self._port += 1
        quic = self.engine.connect(config, RELAY, self.wire.now)
        client = _Client(cs.ClientSession(quic, authority="localhost", mode=PacketMode.DATAGRAM))
        self.wire.add(
            ("198.51.100.7", self._port),
            ConnNode(quic, lambda e: client.events.extend(client.session.receive(e))),
        )
        self.wire.settle(horizon=PACING, max_steps=500)
        return client

    def refusals(self, reason: str) -> float:
        return float(self.metrics.refusals[reason]._value.get())


@pytest.fixture(params=QUIC_ENGINES)
def engine(request: pytest.FixtureRequest) -> QuicEngine:
    return get_engine(request.param)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    directory = make_pki(tmp_path / "pki", ["alice", "bob", "carol"])
    issue_certificate(directory, "connector", "site-a")
    return directory


def refused_with(client: _Client, status: int) -> bool:
    """The session was refused (the client may see the relay's STOP_SENDING before the
    status, RFC 9114 §4.1.1: then it reports the stop, not the status)."""
    if client.session.ready or client.of(cs.SessionAccepted):
        return False
    return client.session.state is cs.ClientState.CLOSED and all(
        r.status == status for r in client.of(cs.SessionRefused)
    )


def test_past_max_sessions_the_next_request_gets_503(
    engine: QuicEngine, pki: Path, caplog: pytest.LogCaptureFixture
) -> None:
    relay = _Relay(engine, pki, SessionLimits(max_sessions=2))
    assert relay.connect("alice").session.ready
    assert relay.connect("bob").session.ready
    with caplog.at_level(logging.WARNING, logger="zgate.relay"):
        carol = relay.connect("carol")
    assert refused_with(carol, RELAY_FULL_STATUS)
    assert any(r.status == 503 for r in carol.of(cs.SessionRefused))
    assert relay.refusals("relay_full") == 1
    assert [s.identity.ident for s in relay.core.sessions] == ["alice", "bob"]
    [line] = [r for r in caplog.records if r.getMessage() == "request refused"]
    assert line.__dict__["reason"] == "relay_full" and line.__dict__["status"] == 503
    # A connector still gets in: its site must come back however full the relay is.
    assert relay.connect("site-a", kind="connectors").session.ready


def test_a_closed_session_makes_room_again(engine: QuicEngine, pki: Path) -> None:
    relay = _Relay(engine, pki, SessionLimits(max_sessions=1))
    alice = relay.connect("alice")
    assert refused_with(relay.connect("bob"), 503)
    alice.session.close()
    relay.wire.settle(horizon=PACING, max_steps=500)
    assert relay.core.sessions == []
    assert relay.core.admission.live == 0
    assert relay.connect("bob").session.ready


def test_past_the_per_client_limit_the_client_gets_429_and_others_get_in(
    engine: QuicEngine, pki: Path
) -> None:
    relay = _Relay(engine, pki, SessionLimits(max_sessions=10, max_sessions_per_client=2))
    assert relay.connect("alice").session.ready
    assert relay.connect("alice").session.ready
    third = relay.connect("alice")
    assert refused_with(third, CLIENT_LIMIT_STATUS)
    assert any(r.status == 429 for r in third.of(cs.SessionRefused))
    assert relay.refusals("client_limit") == 1
    assert relay.refusals("relay_full") == 0
    assert relay.connect("bob").session.ready
    assert relay.core.admission.held_by(ident("alice")) == 2


def test_a_connection_that_holds_no_session_is_closed_after_the_timeout(
    engine: QuicEngine, pki: Path
) -> None:
    relay = _Relay(engine, pki, SessionLimits(max_sessions=1, bare_connection_timeout=3.0))
    alice = relay.connect("alice")
    bob = relay.connect("bob")  # refused: its connection stays, holding nothing
    assert refused_with(bob, 503)
    relay.core.tick(relay.wire.now)  # first seen bare
    relay.wire.advance(2.0, horizon=PACING)
    relay.core.tick(relay.wire.now)
    assert len(relay.core._conns) == 2  # within the timeout
    relay.wire.advance(1.5, horizon=PACING)
    relay.core.tick(relay.wire.now)
    relay.wire.settle(horizon=PACING, max_steps=500)
    assert bob.of(cs.ConnectionClosed)
    assert not alice.of(cs.ConnectionClosed)
    assert relay.refusals("bare_connection") == 1
    assert [s.identity.ident for s in relay.core.sessions] == ["alice"]


def test_without_a_bare_timeout_such_connections_stay(engine: QuicEngine, pki: Path) -> None:
    relay = _Relay(engine, pki, SessionLimits(max_sessions=1))
    relay.connect("alice")
    bob = relay.connect("bob")
    for _ in range(5):
        relay.wire.advance(2.0, horizon=PACING)
        relay.core.tick(relay.wire.now)
    assert not bob.of(cs.ConnectionClosed)
    assert relay.refusals("bare_connection") == 0


# ------------------------------------------------------------------------ settings


def test_limits_come_from_yaml_env_and_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zgate_host.settings import load_settings
    from zgate_relay.cli import build_parser
    from zgate_relay.settings import RelaySettings

    defaults = load_settings(RelaySettings, None, {})
    assert (defaults.max_sessions, defaults.max_sessions_per_client) == (5000, 8)
    assert defaults.bare_connection_timeout == 10.0
    config = tmp_path / "relay.yaml"
    config.write_text("max_sessions: 300\nmax_sessions_per_client: 3\n")
    monkeypatch.setenv("ZGATE_RELAY_MAX_SESSIONS_PER_CLIENT", "4")
    args = ["--max-sessions", "200", "--bare-connection-timeout", "0"]
    flags = {
        k: v
        for k, v in vars(build_parser().parse_args(args)).items()
        if k not in ("config", "debug")
    }
    settings = load_settings(RelaySettings, config, flags)
    assert settings.max_sessions == 200  # flag over YAML
    assert settings.max_sessions_per_client == 4  # env over YAML
    assert settings.bare_connection_timeout == 0.0


def test_a_negative_limit_is_one_clear_line_and_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from zgate_relay.cli import main

    assert main(["--max-sessions-per-client", "-1"]) == 2
    err = capsys.readouterr().err
    assert "max_sessions_per_client" in err and err.count("\n") == 1


def test_help_names_the_limits(capsys: pytest.CaptureFixture[str]) -> None:
    from zgate_relay.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for text in ("--max-sessions ", "503", "--max-sessions-per-client", "429", "[5000]", "[8]"):
        assert text in out
