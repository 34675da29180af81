"""The relay core without I/O: the core and client connections (an engine's client
QuicConn and a ClientSession) as two in-memory peers, datagrams moved by hand, one fake
clock. Runs once per QUIC engine."""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from zgate_lab.harness import INTERNET, QUIC_ENGINES, make_pki, relay_server_config, udp4
from zgate_pki import issue_certificate, revoke_certificate
from zgate_policy.audit import AuditEvent, AuthRefused, SessionClosed, SessionOpened
from zgate_proto import session as cs
from zgate_proto.capsules import CapsuleType, IPAddressRange
from zgate_proto.engines import get_engine
from zgate_proto.engines.base import Address, ClientConfig, QuicConn, QuicEngine
from zgate_proto.ip import parse_packet
from zgate_proto.quic_header import QUIC_V1, parse_header
from zgate_proto.session import PacketMode
from zgate_proto.varint import encode_varint
from zgate_relay.core import RelayCore
from zgate_relay.metrics import RelayMetrics
from zgate_relay.pool import AddressPool
from zgate_relay.session import FULL_ROUTES
from zgate_relay.sites import SiteRoutes
from zgate_testkit.wire import ConnNode, Wire

RELAY: Address = ("192.0.2.1", 4433)
SITE = ipaddress.ip_network("192.168.50.0/24")
PACING = 0.005  # timers this close are fired by run(): pacing, not the passing of time
WALL = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


@pytest.fixture(params=QUIC_ENGINES)
def engine(request: pytest.FixtureRequest) -> QuicEngine:
    return get_engine(request.param)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    directory = make_pki(tmp_path / "pki", ["alice", "bob", "carol"])
    issue_certificate(directory, "connector", "site-a")
    return directory


@dataclass
class Client:
    """One client connection and its CONNECT-IP session, with what it has heard."""

    name: str
    addr: Address
    quic: QuicConn
    session: cs.ClientSession
    events: list[object] = field(default_factory=list)

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def packets(self) -> list[bytes]:
        return [e.packet for e in self.of(cs.PacketReceived)]


class RelayNode:
    """The relay core on the wire; what it writes to its egress device is kept."""

    def __init__(self, core: RelayCore) -> None:
        self.core = core
        self.egress: list[bytes] = []

    def datagram_received(self, data: bytes, addr: Address, now: float) -> None:
        self.core.datagram_received(data, addr, now)

    def flush(self, now: float) -> list[tuple[bytes, Address]]:
        self.egress.extend(self.core.take_egress())
        return self.core.flush(now)

    def deadline(self) -> float | None:
        return self.core.deadline()

    def handle_timer(self, now: float) -> None:
        self.core.handle_timer(now)


class Peers:
    """The relay core and its clients on zgate_testkit's wire (one fake clock)."""

    def __init__(self, engine: QuicEngine, pki: Path, **core_kw: Any) -> None:
        self.engine = engine
        self.pki = pki
        self.wire = Wire(now=1000.0)
        self.audit: list[AuditEvent] = []
        self.metrics = RelayMetrics()
        options: dict[str, Any] = {
            "pool": AddressPool(
                ipaddress.IPv4Network("10.100.0.0/16"), ipaddress.IPv6Network("fd7a:7a67::/64")
            ),
            **core_kw,
        }
        config = relay_server_config(pki, idle_timeout=10.0)
        engine.server_context(config)
        self.core = RelayCore(
            engine=engine,
            config=config,
            metrics=self.metrics,
            audit=self.audit.append,
            relay_name="r1",
            wall_clock=lambda: WALL,
            **options,
        )
        self.relay = RelayNode(self.core)
        self.wire.add(RELAY, self.relay)
        self.clients: dict[Address, Client] = {}

    @property
    def now(self) -> float:
        return self.wire.now

    @now.setter
    def now(self, value: float) -> None:
        self.wire.now = value

    @property
    def egress(self) -> list[bytes]:
        """The packets the relay wrote to its egress device."""
        return self.relay.egress

    def connect(
        self,
        name: str,
        mode: PacketMode = PacketMode.DATAGRAM,
        *,
        kind: str = "clients",
        cert: tuple[Path, Path] | None = None,
    ) -> Client:
        cert_file, key_file = cert or (
            self.pki / kind / f"{name}.pem",
            self.pki / kind / f"{name}.key",
        )
        config = ClientConfig(
            server_name="localhost",
            ca_file=self.pki / "ca.pem",
            cert_file=cert_file,
            key_file=key_file,
            max_datagram_size=1452,
        )
        addr = ("198.51.100.7", 50000 + len(self.clients))
        quic = self.engine.connect(config, RELAY, self.now)
        client = Client(name, addr, quic, cs.ClientSession(quic, authority="localhost", mode=mode))
        self.clients[addr] = client
        self.wire.add(
            addr, ConnNode(quic, lambda e: client.events.extend(client.session.receive(e)))
        )
        self.run()
        return client

    def forget(self, client: Client) -> None:
        """The client vanishes without a word: it sends nothing more and hears nothing."""
        del self.clients[client.addr]
        self.wire.remove(client.addr)

    def run(self, rounds: int = 500) -> None:
        """Move datagrams both ways until neither side has anything to send; timers due
        within a few milliseconds (pacing) fire on the way."""
        self.wire.settle(horizon=PACING, max_steps=rounds)

    def advance(self, seconds: float) -> None:
        """Let time pass, firing the relay's and the clients' timers on the way."""
        self.wire.advance(seconds, horizon=PACING)

    def send(self, client: Client, packet: bytes) -> None:
        client.session.send_packet(packet)
        self.run()

    def audit_of(self, kind: type) -> list[Any]:
        return [e for e in self.audit if isinstance(e, kind)]


@pytest.fixture
def peers(engine: QuicEngine, pki: Path) -> Peers:
    return Peers(engine, pki)


def address4(client: Client) -> str:
    return next(str(a.network_address) for a in client.session.addresses if a.version == 4)


def assert_refused(client: Client, status: int) -> None:
    """The client's session ended without opening. (The relay answers ``status`` and asks
    the client to stop sending, RFC 9114 §4.1.1; a client may see the STOP_SENDING before
    the response, so the status itself is not always what it reports.)"""
    assert not client.session.ready
    assert client.session.state is cs.ClientState.CLOSED
    assert not client.of(cs.SessionAccepted)
    refusals = client.of(cs.SessionRefused)
    assert all(r.status == status for r in refusals)


# ------------------------------------------------------------------------- sessions


@pytest.mark.parametrize("mode", [PacketMode.DATAGRAM, PacketMode.STREAM])
def test_a_client_is_accepted_with_addresses_and_routes(peers: Peers, mode: PacketMode) -> None:
    alice = peers.connect("alice", mode)
    assert alice.session.ready
    assert alice.session.mode is mode
    addresses = {str(a) for a in alice.session.addresses}
    assert any(a.startswith("10.100.") for a in addresses)
    assert any(a.startswith("fd7a:7a67::") for a in addresses)
    assert tuple(alice.session.routes) == FULL_ROUTES  # no routes configured: everything
    [session] = peers.core.sessions
    assert str(session.identity) == "client/alice"
    assert session.mode is mode
    assert peers.metrics.sessions._value.get() == 1
    [opened] = peers.audit_of(SessionOpened)
    assert opened.client == "client/alice" and opened.ts == WALL and opened.mode == mode.value
    status = peers.core.status()
    assert status["count"] == 1
    assert status["sessions"][0]["opened_at"] == WALL.timestamp()  # type: ignore[index]


def test_agents_are_told_the_configured_routes_and_connectors_the_pool(
    engine: QuicEngine, pki: Path
) -> None:
    peers = Peers(
        engine,
        pki,
        routes=[ipaddress.ip_network("203.0.113.0/24")],
        sites=SiteRoutes({"site-a": [SITE]}),
    )
    alice = peers.connect("alice")
    site = peers.connect("site-a", kind="connectors")
    assert {str(n) for r in alice.session.routes for n in r.networks()} == {"203.0.113.0/24"}
    assert {str(n) for r in site.session.routes for n in r.networks()} == {
        "10.100.0.0/16",
        "fd7a:7a67::/64",
    }


def test_a_full_pool_refuses_with_503(engine: QuicEngine, pki: Path) -> None:
    # A /30: the relay takes .1, one agent gets .2, the next finds nothing.
    peers = Peers(engine, pki, pool=AddressPool(ipaddress.IPv4Network("10.9.0.0/30")))
    alice = peers.connect("alice")
    assert alice.session.ready
    bob = peers.connect("bob")
    assert_refused(bob, 503)
    assert peers.metrics.refusals["pool_exhausted"]._value.get() == 1
    assert [str(s.identity) for s in peers.core.sessions] == ["client/alice"]


class _Anonymous:
    """An engine connection that reports no verified identity (an engine bug, or a
    future engine that lets certificate-less clients through): the core must refuse."""

    def __init__(self, inner: QuicConn) -> None:
        self._inner = inner

    @property
    def peer_identity(self) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _AnonymousEngine:
    def __init__(self, inner: QuicEngine) -> None:
        self._inner = inner
        self.name = inner.name
        self.version = inner.version

    def accept(self, *args: Any, **kwargs: Any) -> Any:
        conn = self._inner.accept(*args, **kwargs)
        return None if conn is None else _Anonymous(conn)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_a_connection_without_identity_gets_403(engine: QuicEngine, pki: Path) -> None:
    peers = Peers(_AnonymousEngine(engine), pki)
    alice = peers.connect("alice")
    assert_refused(alice, 403)
    assert peers.metrics.refusals["no_certificate"]._value.get() == 1
    assert peers.core.sessions == []


def test_a_certificate_of_another_ca_is_refused_and_audited(peers: Peers, tmp_path: Path) -> None:
    other = make_pki(tmp_path / "other", ["alice"])
    mallory = peers.connect(
        "alice", cert=(other / "clients" / "alice.pem", other / "clients" / "alice.key")
    )
    assert not mallory.session.ready
    assert peers.metrics.refusals["unknown_ca"]._value.get() == 1
    [refused] = peers.audit_of(AuthRefused)
    assert refused.reason == "unknown_ca" and refused.peer.startswith("198.51.100.7:")
    assert peers.core.sessions == []
    peers.run()
    assert peers.core._conns == {}  # forgotten once its CONNECTION_CLOSE left


# -------------------------------------------------------------------------- packets


@pytest.mark.parametrize("mode", [PacketMode.DATAGRAM, PacketMode.STREAM])
def test_packets_go_to_egress_and_replies_come_back(peers: Peers, mode: PacketMode) -> None:
    alice = peers.connect("alice", mode)
    src = address4(alice)
    out = udp4(src, str(INTERNET), b"hello internet")
    peers.send(alice, out)
    assert peers.egress == [out]
    back = udp4(str(INTERNET), src, b"hello agent", sport=7, dport=40000)
    peers.core.egress_received([back], peers.now)
    peers.run()
    assert alice.packets() == [back]
    m = peers.metrics
    assert (m.packets["from_agent"], m.packets["to_egress"]) == (1, 1)
    assert (m.packets["from_egress"], m.packets["to_agent"]) == (1, 1)
    [session] = peers.core.sessions
    assert (session.packets_in, session.packets_out) == (1, 1)


def test_a_spoofed_source_is_dropped(peers: Peers) -> None:
    alice = peers.connect("alice")
    peers.send(alice, udp4("10.100.77.77", str(INTERNET), b"spoofed"))
    assert peers.egress == []
    assert peers.metrics.drops["spoofed_source"] == 1


def test_sessions_reach_each_other_with_the_ttl_decremented(peers: Peers) -> None:
    alice = peers.connect("alice")
    bob = peers.connect("bob", PacketMode.STREAM)
    packet = udp4(address4(alice), address4(bob), b"hi bob")
    peers.send(alice, packet)
    [got] = bob.packets()
    assert got[8] == packet[8] - 1
    assert parse_packet(got).dst == ipaddress.IPv4Address(address4(bob)).packed
    assert peers.egress == []


def test_a_packet_too_big_for_the_session_earns_icmp_toward_its_sender(peers: Peers) -> None:
    alice = peers.connect("alice")  # datagram mode: one DATAGRAM frame per packet
    dst = address4(alice)
    big = bytearray(udp4(str(INTERNET), dst, b"x" * 1400, sport=7, dport=40000))
    big[6] = 0x40  # DF: the sender asked not to be fragmented
    peers.core.egress_received([bytes(big)], peers.now)
    peers.run()
    assert peers.metrics.drops["too_big"] == 1
    assert alice.packets() == []
    [icmp] = peers.egress
    info = parse_packet(icmp)
    assert info.proto == 1 and (info.icmp_type, info.icmp_code) == (3, 4)
    assert info.dst == INTERNET.packed
    mtu = int.from_bytes(icmp[20 + 6 : 20 + 8], "big")
    assert 1200 < mtu < 1452


def test_a_packet_too_big_for_another_session_earns_icmp_toward_the_sending_session(
    peers: Peers,
) -> None:
    alice = peers.connect("alice", PacketMode.STREAM)  # capsules: large packets fit
    bob = peers.connect("bob")  # datagram mode: one DATAGRAM frame per packet
    big = bytearray(udp4(address4(alice), address4(bob), b"x" * 1420))
    big[6] = 0x40  # DF
    peers.send(alice, bytes(big))
    assert bob.packets() == []
    assert peers.metrics.drops["too_big"] == 1
    [icmp] = alice.packets()
    info = parse_packet(icmp)
    assert info.proto == 1 and (info.icmp_type, info.icmp_code) == (3, 4)
    assert info.src == ipaddress.IPv4Address("10.100.0.1").packed  # from the relay
    assert info.dst == ipaddress.IPv4Address(address4(alice)).packed
    assert peers.egress == []


def test_without_egress_device_internet_packets_are_dropped(engine: QuicEngine, pki: Path) -> None:
    peers = Peers(engine, pki, egress=False)
    alice = peers.connect("alice")
    peers.send(alice, udp4(address4(alice), str(INTERNET), b"nowhere to go"))
    assert peers.egress == []
    assert peers.metrics.drops["no_session"] == 1


class _CountingFlush:
    """An engine connection whose flushes are written down."""

    def __init__(self, inner: QuicConn, name: str, log: list[str]) -> None:
        self._inner, self._name, self._log = inner, name, log

    def flush(self, now: float) -> list[tuple[bytes, Address]]:
        self._log.append(self._name)
        return self._inner.flush(now)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_a_flush_sends_only_for_connections_touched_since_the_last(peers: Peers) -> None:
    alice = peers.connect("alice")
    peers.connect("bob")
    peers.run()
    flushed: list[str] = []
    for conn in peers.core._conns.values():
        conn.quic = _CountingFlush(conn.quic, str(conn.identity), flushed)
    assert peers.core.flush(peers.now) == []
    assert flushed == []
    alice.session.send_packet(udp4(address4(alice), str(INTERNET), b"one"))
    for data, _ in alice.quic.flush(peers.now):
        peers.core.datagram_received(data, alice.addr, peers.now)
    peers.core.flush(peers.now)
    assert flushed == ["client/alice"]


def test_malformed_datagrams_are_counted_by_reason(peers: Peers) -> None:
    alice = peers.connect("alice")
    quarter = alice.session.stream_id // 4
    alice.quic.send_datagram(encode_varint(quarter) + b"\x05junk")  # context 5
    alice.quic.send_datagram(encode_varint(quarter + 100) + b"\x00junk")  # no such stream
    alice.quic.send_datagram(encode_varint(quarter) + b"\x00\x99garbage")  # not IP
    peers.run()
    drops = peers.metrics.drops
    assert drops["unknown_context"] == 1
    assert drops["unknown_stream"] == 1
    assert drops["malformed_packet"] == 1
    assert len(peers.core.sessions) == 1


def test_a_malformed_capsule_ends_only_that_session(peers: Peers) -> None:
    alice = peers.connect("alice", PacketMode.STREAM)
    bob = peers.connect("bob", PacketMode.STREAM)
    oversized = encode_varint(CapsuleType.DATAGRAM) + encode_varint(1 << 30) + b"\x00"
    bob.session.h3.send_data(bob.session.stream_id, oversized)
    peers.run()
    assert peers.metrics.session_errors._value.get() == 1
    assert [str(s.identity) for s in peers.core.sessions] == ["client/alice"]
    [closed] = peers.audit_of(SessionClosed)
    assert closed.client == "client/bob" and closed.reason == "malformed capsule"
    out = udp4(address4(alice), str(INTERNET), b"still here")
    peers.send(alice, out)
    assert peers.egress == [out]


def test_address_request_is_answered(peers: Peers) -> None:
    from zgate_proto.capsules import AddressRequest, RequestedAddress

    alice = peers.connect("alice")
    wanted = ipaddress.ip_network("10.100.9.9/32")
    alice.session.send_capsules([AddressRequest((RequestedAddress(7, wanted),))])
    peers.run()
    [session] = peers.core.sessions
    assert ipaddress.ip_address("10.100.9.9") in session.addresses
    assert peers.core.router.session_for(ipaddress.ip_address("10.100.9.9").packed) is session


# --------------------------------------------------------------------- lifecycle


def test_a_client_ending_its_session_releases_it(peers: Peers) -> None:
    alice = peers.connect("alice")
    alice.session.close()
    peers.run()
    assert peers.core.sessions == []
    assert peers.metrics.sessions._value.get() == 0
    [closed] = peers.audit_of(SessionClosed)
    assert closed.reason == "agent ended the stream"
    assert peers.core.pool.in_use() == 0


def test_revocation_ends_the_session(peers: Peers) -> None:
    alice = peers.connect("alice")
    bob = peers.connect("bob")
    peers.advance(2.5)
    revoke_certificate(peers.pki, "alice")
    assert peers.core.verifier.reload_if_changed()
    assert peers.core.check_revocations(peers.now) == 1
    peers.run()
    assert alice.of(cs.ConnectionClosed)
    assert [str(s.identity) for s in peers.core.sessions] == ["client/bob"]
    [closed] = peers.audit_of(SessionClosed)
    assert closed.reason == "certificate revoked"
    assert closed.duration_s == pytest.approx(2.5, abs=0.05)
    assert peers.metrics.refusals["revoked"]._value.get() == 1
    assert peers.core.check_revocations(peers.now) == 0  # once
    assert bob.session.ready


def test_an_operator_ends_one_session_and_its_connection(peers: Peers) -> None:
    alice = peers.connect("alice")
    bob = peers.connect("bob")
    [alice_session] = [s for s in peers.core.sessions if s.identity.ident == "alice"]
    assert peers.core.end_session(alice_session.session_id, "ended by operator", peers.now)
    # Gone from the live list at once: the heartbeat sent right after no longer lists it.
    assert [s.identity.ident for s in peers.core.sessions] == ["bob"]
    peers.run()
    assert alice.of(cs.ConnectionClosed)
    assert [s.identity.ident for s in peers.core.sessions] == ["bob"]
    [closed] = peers.audit_of(SessionClosed)
    assert closed.reason == "ended by operator"
    assert not peers.core.end_session(alice_session.session_id, "again", peers.now)
    assert not peers.core.end_session("no-such", "x", peers.now)
    assert bob.session.ready


def test_a_silent_connector_is_failed_over(
    engine: QuicEngine, pki: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sites = SiteRoutes({"site-a": [SITE]})
    peers = Peers(engine, pki, sites=sites, connector_deadline=2.0)
    site = peers.connect("site-a", kind="connectors")
    site.session.send_capsules([cs_route_advertisement([IPAddressRange.from_network(SITE)])])
    peers.run()
    assert sites.connectors()["site-a"].sessions == 1
    peers.core.tick(peers.now + 1.0)
    assert peers.core.sessions  # within its deadline
    # The connector falls silent: its datagrams are lost from now on.
    peers.forget(site)
    peers.now += 2.5
    with caplog.at_level(logging.WARNING, logger="zgate.relay"):
        peers.core.tick(peers.now)
    assert "connector silent: taking it out of its site" in caplog.text
    assert sites.connectors()["site-a"].sessions == 0
    assert peers.core.sessions == []
    assert peers.metrics.connector_sessions.labels("site-a")._value.get() == 0


def cs_route_advertisement(ranges: list[IPAddressRange]) -> Any:
    from zgate_proto.capsules import RouteAdvertisement

    return RouteAdvertisement(tuple(ranges))


def test_an_idle_connection_ends_on_the_relays_timer(peers: Peers) -> None:
    alice = peers.connect("alice")
    peers.forget(alice)  # the client vanishes without a word
    assert peers.core.deadline() is not None
    peers.advance(30.0)
    assert peers.core.sessions == []
    assert peers.core._conns == {}
    [closed] = peers.audit_of(SessionClosed)
    assert closed.client == "client/alice"


def test_close_tells_every_client(peers: Peers) -> None:
    alice = peers.connect("alice")
    peers.core.close(peers.now)
    peers.run()
    assert alice.of(cs.ConnectionClosed)
    assert peers.core.sessions == []
    [closed] = peers.audit_of(SessionClosed)
    assert closed.reason == "relay shutting down"


# ---------------------------------------------------------------- first datagrams


def long_header(version: int, size: int) -> bytes:
    head = bytes((0xC0,)) + version.to_bytes(4, "big") + b"\x08" + b"D" * 8 + b"\x04SCID"
    return head + bytes(size - len(head))


def test_version_negotiation_only_for_datagrams_of_1200_bytes(peers: Peers) -> None:
    peers.core.datagram_received(long_header(0x0A1A2A3A, 1199), ("198.51.100.9", 1), peers.now)
    assert peers.core.flush(peers.now) == []
    peers.core.datagram_received(long_header(0x0A1A2A3A, 1200), ("198.51.100.9", 1), peers.now)
    [(answer, addr)] = peers.core.flush(peers.now)
    assert addr == ("198.51.100.9", 1)
    header = parse_header(answer, 8)
    assert header.version == 0
    assert (header.destination_cid, header.source_cid) == (b"SCID", b"D" * 8)
    assert answer.endswith(QUIC_V1.to_bytes(4, "big"))
    assert peers.core._conns == {}


def test_small_or_non_initial_or_unknown_short_datagrams_are_dropped(peers: Peers) -> None:
    core = peers.core
    addr = ("198.51.100.9", 2)
    core.datagram_received(long_header(QUIC_V1, 1199), addr, peers.now)  # Initial too short
    handshake = bytearray(long_header(QUIC_V1, 1300))
    handshake[0] = 0xE0  # Handshake packet for no connection
    core.datagram_received(bytes(handshake), addr, peers.now)
    core.datagram_received(b"\x40" + b"\x11" * 40, addr, peers.now)  # short header, no such CID
    core.datagram_received(b"", addr, peers.now)
    assert core.flush(peers.now) == []
    assert core._conns == {}
    assert core.deadline() is None
