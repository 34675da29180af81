"""The relay's front door: admission of new connections (sans-IO), and the core with it on
the engine wire (Retry with both engines, half-open bounds, stateless resets)."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zgate_lab.harness import QUIC_ENGINES, make_pki, relay_server_config
from zgate_proto import session as cs
from zgate_proto.engines import get_engine
from zgate_proto.engines.base import Address, ClientConfig, QuicEngine
from zgate_proto.quic_header import QUIC_V1, LongPacketType, parse_header
from zgate_proto.session import PacketMode
from zgate_proto.varint import encode_varint
from zgate_relay.core import RelayCore
from zgate_relay.door import DoorLimits, FrontDoor, reset_token, source_of
from zgate_relay.metrics import RelayMetrics
from zgate_relay.pool import AddressPool
from zgate_testkit.wire import ConnNode, Wire

RELAY: Address = ("203.0.113.1", 443)
RESET_KEY = bytes(range(32, 64))


def initial(dcid: bytes = bytes(8), scid: bytes = b"\x01" * 8, token: bytes = b"") -> bytes:
    """A datagram with a QUIC v1 Initial header (its payload is no real handshake)."""
    head = bytes((0xC3,)) + QUIC_V1.to_bytes(4, "big") + bytes((len(dcid),)) + dcid
    head += bytes((len(scid),)) + scid + encode_varint(len(token)) + token
    return head + bytes(1200 - len(head))


def door(limits: DoorLimits | None = None, **kw: Any) -> FrontDoor:
    metrics = RelayMetrics()
    return FrontDoor(
        limits or DoorLimits(),
        drops=metrics.handshake_drops,
        outcomes=metrics.front_door,
        **kw,
    )


def admit(d: FrontDoor, data: bytes, addr: Address, now: float) -> Any:
    return d.admit(data, parse_header(data, 8), addr, now)


# ----------------------------------------------------------------------- sans-IO


def test_a_source_opening_too_fast_is_dropped_and_counted() -> None:
    d = door(DoorLimits(retry="never", new_per_source=10.0))
    addr = ("198.51.100.9", 1000)
    verdicts = [admit(d, initial(), addr, 5.0) for _ in range(25)]
    assert sum(v is not None for v in verdicts) == 20  # a burst of twice the rate
    assert d.drops["source_rate"] == 5
    assert admit(d, initial(), ("198.51.100.10", 1000), 5.0) is not None  # others pass
    assert admit(d, initial(), addr, 5.2) is not None  # refilled: 10 per second


def test_half_open_connections_are_bounded_in_all_and_per_source() -> None:
    d = door(DoorLimits(retry="never", max_half_open=3, max_half_open_per_source=2))
    a, b = ("198.51.100.1", 1), ("198.51.100.2", 1)
    for addr in (a, a):
        assert admit(d, initial(), addr, 1.0) is not None
        d.opened(addr)
    assert admit(d, initial(), a, 1.0) is None
    assert d.drops["source_half_open"] == 1
    assert admit(d, initial(), b, 1.0) is not None
    d.opened(b)
    assert admit(d, initial(), b, 1.0) is None
    assert d.drops["half_open_full"] == 1
    d.settled(a)
    assert d.half_open == 2
    assert admit(d, initial(), b, 1.0) is not None


def test_auto_retries_only_under_load() -> None:
    d = door(DoorLimits(retry="auto", retry_above_rate=5, new_per_source=0))
    addrs = [(f"198.51.100.{i}", 1) for i in range(10)]
    verdicts = [admit(d, initial(), addr, 1.0) for addr in addrs]
    assert [isinstance(v, bytes) for v in verdicts] == [False] * 5 + [True] * 5
    assert d.outcomes["retry_sent"] == 5
    # Quiet for two seconds: no Retry any more.
    assert not isinstance(admit(d, initial(), addrs[0], 3.5), bytes)


def test_auto_retries_while_many_handshakes_are_half_open() -> None:
    d = door(DoorLimits(retry="auto", retry_above_half_open=2, new_per_source=0))
    for _ in range(2):
        d.opened(("198.51.100.1", 1))
    assert isinstance(admit(d, initial(), ("198.51.100.3", 1), 1.0), bytes)


def test_a_retry_token_comes_back_as_the_connection_ids_to_echo() -> None:
    d = door(DoorLimits(retry="always"))
    addr = ("198.51.100.7", 4444)
    odcid = bytes.fromhex("0011223344556677")
    retry = admit(d, initial(dcid=odcid), addr, 1.0)
    assert isinstance(retry, bytes)
    header = parse_header(retry, 8)
    assert header.packet_type is LongPacketType.RETRY
    assert header.destination_cid == b"\x01" * 8  # the client's source CID
    token = retry[1 + 4 + 1 + 8 + 1 + 8 : -16]  # after the two CIDs, before the tag
    second = initial(dcid=header.source_cid, token=token)
    admitted = admit(d, second, addr, 2.0)
    assert admitted.original_destination_cid == odcid
    assert admitted.retry_source_cid == header.source_cid
    assert d.outcomes["validated"] == 1
    assert admit(d, second, ("198.51.100.8", 4444), 2.0) is None  # another address
    assert admit(d, second, addr, 20.0) is None  # too late
    assert d.drops["bad_token"] == 1 and d.drops["expired_token"] == 1


def test_short_client_dcids_are_dropped() -> None:
    d = door(DoorLimits(retry="never"))
    assert admit(d, initial(dcid=bytes(7)), ("198.51.100.1", 1), 1.0) is None
    assert d.drops["short_dcid"] == 1


def test_reset_tokens_are_a_keyed_function_of_the_connection_id() -> None:
    cid = bytes(range(8))
    assert reset_token(RESET_KEY, cid) == reset_token(RESET_KEY, cid)
    assert len(reset_token(RESET_KEY, cid)) == 16
    assert reset_token(RESET_KEY, cid) != reset_token(bytes(32), cid)
    assert reset_token(RESET_KEY, cid) != reset_token(RESET_KEY, bytes(8))


@pytest.mark.parametrize(("size", "answer"), [(21, None), (22, 21), (30, 29), (1200, 43)])
def test_a_stateless_reset_is_shorter_than_its_trigger_and_ends_with_the_token(
    size: int, answer: int | None
) -> None:
    d = door(reset_key=RESET_KEY)
    cid = bytes(range(8))
    trigger = bytes((0x41,)) + cid + bytes(size - 9)
    reset = d.stateless_reset(trigger, 1.0)
    if answer is None:
        assert reset is None
        return
    assert reset is not None and len(reset) == answer
    assert reset[0] & 0xC0 == 0x40  # looks like a short header
    assert reset[-16:] == reset_token(RESET_KEY, cid)


def test_stateless_resets_are_rate_limited_and_need_a_key() -> None:
    assert door().stateless_reset(bytes((0x41,)) + bytes(60), 1.0) is None
    d = door(DoorLimits(resets_per_second=3), reset_key=RESET_KEY)
    sent = [d.stateless_reset(bytes((0x41,)) + bytes(60), 1.0) for _ in range(5)]
    assert sum(r is not None for r in sent) == 3
    assert d.drops["reset_rate"] == 2


def test_a_flood_summary_is_logged_at_once_then_at_most_every_ten_seconds() -> None:
    d = door(DoorLimits(retry="never", new_per_source=1))
    assert d.report(0.0) is None  # the baseline

    def attempts(n: int, at: float) -> None:
        for i in range(n):
            admit(d, initial(), ("198.51.100.1", i), at)

    attempts(300, 1.0)
    line = d.report(1.5)
    assert line is not None and line.startswith("handshake flood: source_rate 298 in the last 2 s")
    attempts(300, 3.0)
    assert d.report(5.0) is None  # within ten seconds of the line
    line = d.report(11.5)
    assert line is not None and "source_rate 298 in the last 10 s" in line
    assert d.report(22.0) is None  # quiet since


# ------------------------------------------------------------- on the engine wire


@pytest.fixture(params=QUIC_ENGINES)
def engine(request: pytest.FixtureRequest) -> QuicEngine:
    return get_engine(request.param)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    return make_pki(tmp_path / "pki", ["alice"])


class _Relay:
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


def relay_on_wire(engine: QuicEngine, pki: Path, limits: DoorLimits) -> tuple[Wire, RelayCore]:
    metrics = RelayMetrics()
    d = FrontDoor(
        limits, drops=metrics.handshake_drops, outcomes=metrics.front_door, reset_key=RESET_KEY
    )
    config = replace(relay_server_config(pki, idle_timeout=10.0), reset_token=d.reset_token_of)
    engine.server_context(config)
    core = RelayCore(
        engine=engine,
        config=config,
        pool=AddressPool(ipaddress.IPv4Network("10.100.0.0/16")),
        metrics=metrics,
        door=d,
    )
    wire = Wire(now=1000.0)
    wire.add(RELAY, _Relay(core))
    return wire, core


def connect(wire: Wire, engine: QuicEngine, pki: Path) -> tuple[Any, list[object]]:
    config = ClientConfig(
        server_name="localhost",
        ca_file=pki / "ca.pem",
        cert_file=pki / "clients" / "alice.pem",
        key_file=pki / "clients" / "alice.key",
        max_datagram_size=1452,
    )
    quic = engine.connect(config, RELAY, wire.now)
    session = cs.ClientSession(quic, authority="localhost", mode=PacketMode.DATAGRAM)
    events: list[object] = []
    wire.add(("198.51.100.7", 50000), ConnNode(quic, lambda e: events.extend(session.receive(e))))
    wire.settle(horizon=0.005, max_steps=500)
    return session, events


def test_a_client_connects_through_a_retry(engine: QuicEngine, pki: Path) -> None:
    wire, core = relay_on_wire(engine, pki, DoorLimits(retry="always"))
    session, _ = connect(wire, engine, pki)
    assert session.ready
    door_ = core.door
    assert door_ is not None
    # qh3's ClientHello (with a post-quantum key share) spans two Initials: both get a
    # Retry, the client takes the first and sends both again with its token.
    assert door_.outcomes["retry_sent"] >= 1
    assert door_.outcomes["validated"] >= 1
    assert door_.half_open == 0  # the handshake completed
    [conn] = core._conns.values()
    assert conn.identity is not None


def test_a_forgotten_connections_peer_is_reset_with_the_token_it_was_given(
    engine: QuicEngine, pki: Path
) -> None:
    wire, _ = relay_on_wire(engine, pki, DoorLimits(retry="never"))
    session, _ = connect(wire, engine, pki)
    assert session.ready
    # The relay restarts: same key, no connections. The client's next packet is answered
    # with a stateless reset carrying the token of the CID the client sends to.
    wire2, core2 = relay_on_wire(engine, pki, DoorLimits(retry="never"))
    sent: list[bytes] = []
    wire.nodes[RELAY] = wire2.nodes[RELAY]
    wire.watch = lambda src, out: sent.extend(d for d, _ in out) if src == RELAY else None
    session.send_packet(bytes.fromhex("450000140000000040010000c0a80001cb007101"))
    wire.settle(horizon=0.005, max_steps=50)
    assert core2.door is not None and core2.door.outcomes["stateless_reset"] >= 1
    reset = sent[0]
    assert 21 <= len(reset) <= 43 and reset[0] & 0xC0 == 0x40
    client_dcid = wire.sent[("198.51.100.7", 50000)][-1][1:9]
    assert reset[-16:] == reset_token(RESET_KEY, client_dcid)


def test_half_open_connections_are_dropped_at_the_deadline(engine: QuicEngine, pki: Path) -> None:
    wire, core = relay_on_wire(engine, pki, DoorLimits(retry="never", handshake_deadline=2.0))
    config = ClientConfig(
        server_name="localhost",
        ca_file=pki / "ca.pem",
        cert_file=pki / "clients" / "alice.pem",
        key_file=pki / "clients" / "alice.key",
    )
    # A client whose Initial arrives and which then vanishes.
    quic = engine.connect(config, RELAY, wire.now)
    [(first, _)] = quic.flush(wire.now)[:1]
    core.datagram_received(first, ("198.51.100.9", 1234), wire.now)
    door_ = core.door
    assert door_ is not None and door_.half_open == 1
    core.tick(wire.now + 1.0)
    assert door_.half_open == 1
    core.tick(wire.now + 2.5)
    assert door_.half_open == 0
    assert door_.drops["handshake_timeout"] == 1
    assert not core._conns


@pytest.mark.parametrize("relay_engine_name", QUIC_ENGINES)
def test_a_qh3_client_is_reset_by_the_restarted_relay(relay_engine_name: str, pki: Path) -> None:
    """The whole relay half of fast recovery: the relay's tokens are derived from its key,
    so the restarted relay's reset matches what the client was told, and a client that
    checks resets (qh3 does; aioquic 1.7.2 never does) closes at once. (On a qh3 relay the
    token of the first connection ID, the one clients keep using, is the relay's.)"""
    relay_engine, client_engine = get_engine(relay_engine_name), get_engine("qh3")
    wire, _ = relay_on_wire(relay_engine, pki, DoorLimits(retry="never"))
    session, _ = connect(wire, client_engine, pki)
    assert session.ready
    client = wire.nodes[("198.51.100.7", 50000)]
    assert isinstance(client, ConnNode)
    wire.nodes[RELAY] = relay_on_wire(relay_engine, pki, DoorLimits(retry="never"))[0].nodes[RELAY]
    assert not client.conn.closed
    session.send_packet(bytes.fromhex("450000140000000040010000c0a80001cb007101"))
    wire.settle(horizon=0.005, max_steps=50)
    assert client.conn.closed


def test_every_connection_id_is_known_when_the_flush_that_issues_it_returns(pki: Path) -> None:
    """The relay learns each connection ID in the flush that sends its NEW_CONNECTION_ID
    frame, before the peer can move to it: learnt only at the connection's next event, a
    quic-go client that moved at once after a Retry handshake was taken for a stranger and
    reset. (aioquic's issued IDs are Python objects to look at; qh3's live in its core.)"""
    engine = get_engine("aioquic")
    wire, core = relay_on_wire(engine, pki, DoorLimits(retry="always"))
    unknown: list[bytes] = []

    def check(src: Address, out: list[tuple[bytes, Address]]) -> None:
        if src != RELAY:
            return
        for conn in core._conns.values():
            issued = conn.quic._quic._host_cids  # type: ignore[attr-defined]
            unknown.extend(c.cid for c in issued if c.was_sent and c.cid not in core._by_cid)

    wire.watch = check
    session, _ = connect(wire, engine, pki)
    assert session.ready
    assert len(core._by_cid) > 2  # NEW_CONNECTION_ID frames went out
    assert unknown == []


def test_ipv6_sources_count_by_their_64_and_mapped_ipv4_as_ipv4() -> None:
    assert source_of(("2001:db8:1:2::1", 1)) == source_of(("2001:db8:1:2:ffff::9", 2))
    assert source_of(("2001:db8:1:2::1", 1)) != source_of(("2001:db8:1:3::1", 1))
    assert source_of(("::ffff:198.51.100.7", 1, 0, 0)) == source_of(("198.51.100.7", 1))
    d = door(DoorLimits(retry="never", new_per_source=1.0))
    verdicts = [admit(d, initial(), (f"2001:db8::{i:x}", 1), 1.0) for i in range(1, 5)]
    assert sum(v is not None for v in verdicts) == 2  # one /64: one bucket (burst 2)


@settings(max_examples=300, deadline=None)
@given(
    dcid=st.binary(min_size=0, max_size=20),
    scid=st.binary(max_size=20),
    tail=st.binary(min_size=0, max_size=60),
    mode=st.sampled_from(["auto", "always", "never"]),
)
def test_the_door_never_raises_on_any_initial(
    dcid: bytes, scid: bytes, tail: bytes, mode: str
) -> None:
    d = door(DoorLimits(retry=mode), reset_key=RESET_KEY)  # type: ignore[arg-type]
    head = bytes((0xC0,)) + QUIC_V1.to_bytes(4, "big") + bytes((len(dcid),)) + dcid
    data = head + bytes((len(scid),)) + scid + tail
    data += bytes(max(0, 1200 - len(data)))
    verdict = admit(d, data, ("198.51.100.1", 1), 1.0)
    assert verdict is None or isinstance(verdict, bytes) or verdict.retry_source_cid is None


@settings(max_examples=300, deadline=None)
@given(data=st.binary(min_size=1, max_size=200))
def test_stateless_resets_are_always_shorter_than_their_trigger(data: bytes) -> None:
    reset = door(reset_key=RESET_KEY).stateless_reset(bytes((0x40,)) + data, 1.0)
    assert reset is None or 21 <= len(reset) < len(data) + 1
