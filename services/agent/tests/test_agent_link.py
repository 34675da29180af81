"""The agent's ClientLink between two in-memory peers: a real engine connection each side
(no sockets, a clock we move), the relay side a bare zgate_proto ServerConnection that this
test answers by hand. Every engine."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path

import pytest

from zgate_agent.link import H3_REQUEST_CANCELLED, ClientLink
from zgate_agent.metrics import AgentMetrics
from zgate_proto.capsules import AddressAssign, AssignedAddress, IPAddressRange, RouteAdvertisement
from zgate_proto.engines import ENGINES, get_engine
from zgate_proto.engines.base import Address, QuicConn, QuicEvent
from zgate_proto.session import (
    ClientSession,
    ConnectionClosed,
    PacketMode,
    PacketReceived,
    ServerConnection,
    ServerEvent,
    SessionClosed,
    SessionRequested,
)
from zgate_testkit.pki import client_config, make_pki, server_config
from zgate_testkit.wire import AcceptingNode, Datagrams, Wire

SERVER = ("127.0.0.1", 4433)
CLIENT = ("127.0.0.1", 40000)
OWN = ipaddress.ip_network("10.100.0.2/32")
EVERYTHING = IPAddressRange(ipaddress.IPv4Address(0), ipaddress.IPv4Address(2**32 - 1), 0)
OPEN = [AddressAssign((AssignedAddress(0, OWN),)), RouteAdvertisement((EVERYTHING,))]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki")).directory


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


class Sink:
    """The agent's device: each write_batch call kept as it came."""

    def __init__(self) -> None:
        self.batches: list[list[bytes]] = []

    def write_batch(self, packets: list[bytes]) -> None:
        self.batches.append(list(packets))


class Pair:
    """A ClientLink and a relay's ServerConnection over one engine, moved by :meth:`step`
    as the pumps would: the link's flush, the relay's events and flush, timers."""

    def __init__(
        self,
        engine_name: str,
        pki: Path,
        *,
        mode: PacketMode = PacketMode.DATAGRAM,
        datagram_queue: int = 512,
        discipline: str = "fq-codel",
        answer: int | None = None,
    ) -> None:
        engine = get_engine(engine_name)
        config = client_config(
            pki,
            max_datagram_size=1452,
            datagram_queue=datagram_queue,
            datagram_discipline=discipline,
        )
        client = engine.connect(config, SERVER, 0.0)
        self.sink = Sink()
        self.metrics = AgentMetrics()
        self.notified = 0
        session = ClientSession(client, authority="localhost:4433", mode=mode)
        self.link = ClientLink(client, session, self.sink, self.metrics, notify=self._notify)
        self.relay_side = AcceptingNode(
            engine, server_config(pki, max_datagram_size=1452), on_event=self._relay_event
        )
        #: The pumps' turns, 1 ms apart: the link's flush, the relay's events and flush.
        self.wire = Wire(now=0.0, tick=0.001)
        self.wire.add(CLIENT, self.link)
        self.wire.add(SERVER, self.relay_side)
        self._relay: ServerConnection | None = None
        #: None: accept with OPEN; else reject with this status.
        self.answer = answer
        self.stream_id = -1
        self.events: list[ServerEvent] = []

    @property
    def server(self) -> QuicConn:
        """The relay's connection (made by the link's first datagram)."""
        conn = self.relay_side.conns.get(CLIENT)
        assert conn is not None, "the link never dialled"
        return conn

    @property
    def relay(self) -> ServerConnection:
        """The relay's session core on :attr:`server`."""
        if self._relay is None:
            self._relay = ServerConnection(self.server)
        return self._relay

    def _notify(self) -> None:
        self.notified += 1

    def _relay_event(self, event: QuicEvent) -> None:
        for out in self.relay.receive(event):
            self.events.append(out)
            if isinstance(out, SessionRequested):
                self.stream_id = out.stream_id
                if self.answer is None:
                    self.relay.accept(out.stream_id, out.mode, OPEN)
                else:
                    self.relay.reject(out.stream_id, self.answer)

    def run(self, done: Callable[[], bool], steps: int = 200) -> None:
        self.wire.settle(done, max_steps=steps)

    def received(self) -> list[bytes]:
        return [e.packet for e in self.events if isinstance(e, PacketReceived)]


def packet(n: int, size: int = 60) -> bytes:
    """An IPv4 packet from our address (the link does not look inside)."""
    body = bytes([n % 256]) * (size - 20)
    return bytes([0x45, 0, size >> 8, size & 0xFF]) + bytes(8) + OWN[0].packed + bytes(4) + body


@pytest.mark.parametrize("mode", list(PacketMode))
def test_the_session_opens_and_packets_flow_both_ways(
    engine: str, pki: Path, mode: PacketMode
) -> None:
    pair = Pair(engine, pki, mode=mode)
    pair.run(lambda: pair.link.ready)
    assert pair.link.handshake_done and pair.notified >= 2  # handshake, then the session
    info = pair.link.info()
    assert info.addresses == (OWN,) and info.routes == (EVERYTHING,) and info.mode is mode
    assert pair.link.failure is None and pair.link.accepted_mode is mode
    up = [packet(i) for i in range(5)]
    assert pair.link.send_packets(up) == []
    pair.run(lambda: len(pair.received()) == 5)
    assert pair.received() == up
    assert pair.metrics.packets["to_relay"] == 5
    assert pair.metrics.bytes["to_relay"] == sum(len(p) for p in up)
    # The relay's packets reach the device in one batch per flush, counted.
    down = [packet(100 + i) for i in range(3)]
    for p in down:
        pair.relay.send_packet(pair.stream_id, p)
    pair.run(lambda: bool(pair.sink.batches))
    assert pair.sink.batches == [down]
    assert pair.metrics.packets["from_relay"] == 3


def test_a_packet_too_big_is_returned_and_counted(engine: str, pki: Path) -> None:
    pair = Pair(engine, pki)
    pair.run(lambda: pair.link.ready)
    mtu = pair.link.max_packet
    assert mtu == pair.link.quic.max_datagram_payload - 2
    big, fits = packet(1, mtu + 1), packet(2, mtu)
    assert pair.link.send_packets([big, fits]) == [big]
    assert pair.metrics.drops["too_big"] == 1
    pair.run(lambda: pair.received() == [fits])


def test_the_fifo_send_queue_is_bounded(engine: str, pki: Path) -> None:
    pair = Pair(engine, pki, datagram_queue=8, discipline="fifo")
    pair.run(lambda: pair.link.ready)
    burst = [packet(i) for i in range(20)]
    assert pair.link.send_packets(burst) == []
    assert pair.metrics.drops["queue_full"] == 12
    assert pair.metrics.packets["to_relay"] == 8
    pair.run(lambda: len(pair.received()) == 8)
    assert pair.received() == burst[:8]


def test_the_fq_codel_send_queue_is_bounded_and_keeps_the_newest(engine: str, pki: Path) -> None:
    pair = Pair(engine, pki, datagram_queue=8)
    pair.run(lambda: pair.link.ready)
    burst = [packet(i) for i in range(20)]  # one flow
    assert pair.link.send_packets(burst, 0.0) == []
    assert pair.link.quic.stats().datagrams_dropped_overflow == 12
    assert pair.link.quic.datagrams_queued == 8
    pair.run(lambda: len(pair.received()) == 8)
    assert pair.received() == burst[12:]  # the flow lost its oldest, not the arriving


def test_a_refused_session_says_why_and_leaves_the_connection_to_the_agent(
    engine: str, pki: Path
) -> None:
    pair = Pair(engine, pki, answer=403)
    pair.run(lambda: pair.link.failure is not None)
    assert pair.link.failure is not None
    assert pair.link.failure.startswith("the relay refused the CONNECT-IP request")
    assert "403" in pair.link.failure
    assert pair.link.close_info is None and not pair.link.ready
    assert pair.link.send_packets([packet(1)]) == []
    assert pair.metrics.drops["not_connected"] == 1


def test_a_session_the_relay_ends_closes_the_connection(engine: str, pki: Path) -> None:
    pair = Pair(engine, pki)
    pair.run(lambda: pair.link.ready)
    pair.relay.close_session(pair.stream_id)
    pair.run(lambda: pair.link.failure is not None)
    assert pair.link.failure == "the relay ended the CONNECT-IP stream"
    assert pair.link.quic.closed
    pair.run(lambda: any(isinstance(e, ConnectionClosed) for e in pair.events))
    closed = next(e for e in pair.events if isinstance(e, ConnectionClosed))
    assert closed.by_peer and closed.error_code == H3_REQUEST_CANCELLED


def test_a_connection_the_relay_closes_is_recorded_with_its_certificate(
    engine: str, pki: Path
) -> None:
    pair = Pair(engine, pki)
    pair.run(lambda: pair.link.ready)
    pair.server.close(0, "relay shutting down")
    pair.run(lambda: pair.link.close_info is not None)
    close = pair.link.close_info
    assert close is not None
    assert (close.error_code, close.reason, close.by_peer) == (0, "relay shutting down", True)
    assert close.handshake_done
    assert close.peer_certificate is not None
    assert pair.link.failure == "relay shutting down"


def test_closing_the_link_ends_the_session_and_the_connection(engine: str, pki: Path) -> None:
    pair = Pair(engine, pki)
    pair.run(lambda: pair.link.ready)
    pair.link.close("agent stopping")
    pair.link.close("twice is harmless")
    pair.run(lambda: any(isinstance(e, ConnectionClosed) for e in pair.events))
    closed = next(e for e in pair.events if isinstance(e, ConnectionClosed))
    assert closed.by_peer and closed.reason == "agent stopping"
    assert any(isinstance(e, SessionClosed) for e in pair.events)


# ------------------------------------------------------------------- being heard


def test_the_relays_acknowledgement_of_a_ping_counts_as_heard(engine: str, pki: Path) -> None:
    pair = Pair(engine, pki)
    pair.run(lambda: pair.link.ready)
    pair.link.ack_watch = 0.0  # look at every acknowledgement
    pair.wire.advance(1.0)  # quiet: nothing to acknowledge is left
    heard = pair.link.last_heard
    assert heard is not None and heard < pair.wire.now
    pinged_at = pair.wire.now
    pair.link.ping()
    # The relay answers a PING with an ACK only: no event, only fewer bytes in flight.
    pair.run(lambda: (pair.link.last_heard or 0.0) > heard)
    assert pair.link.last_heard is not None and pair.link.last_heard >= pinged_at


def test_a_send_starts_a_wait_that_hearing_the_relay_ends(engine: str, pki: Path) -> None:
    pair = Pair(engine, pki)
    pair.run(lambda: pair.link.ready)
    pair.link.ack_watch = 0.0
    pair.wire.advance(1.0)  # quiet: everything answered, nothing awaited
    assert pair.link.waiting_since is None
    heard = pair.link.last_heard
    assert heard is not None
    sent_at = pair.wire.now = pair.wire.now + 0.5
    assert pair.link.send_packets([packet(1)], sent_at) == []
    out = pair.link.flush(sent_at)
    assert out and pair.link.waiting_since == sent_at
    pair.wire.now += 0.01
    assert pair.link.flush(pair.wire.now) == []  # nothing new: the wait still runs from the send
    assert pair.link.waiting_since == sent_at
    pair.wire.deliver(CLIENT, out)
    # The relay acknowledges the packet: heard, and the wait is over.
    pair.run(lambda: pair.link.waiting_since is None)
    assert pair.link.last_heard is not None and pair.link.last_heard > sent_at


def test_acknowledging_the_relay_does_not_start_a_wait(engine: str, pki: Path) -> None:
    """The relay sends the agent packets: the agent's ACKs, in the flush that heard them or
    a later one, expect no answer, so an idle link stays idle (no probes follow)."""
    pair = Pair(engine, pki)
    pair.run(lambda: pair.link.ready)
    pair.link.ack_watch = 0.0
    pair.wire.advance(1.0)
    assert pair.link.waiting_since is None
    heard = pair.link.last_heard
    sent: list[int] = []
    waiting: list[float | None] = []

    def watch(addr: Address, out: Datagrams) -> None:
        if addr == CLIENT:
            sent.append(len(out))
            waiting.append(pair.link.waiting_since)

    pair.wire.watch = watch
    for i in range(3):
        pair.relay.send_packet(pair.stream_id, packet(100 + i))
    pair.run(lambda: bool(pair.sink.batches))
    pair.wire.advance(1.0)  # the agent's delayed ACKs go out too
    assert pair.link.last_heard is not None and pair.link.last_heard > (heard or 0.0)
    assert sum(sent) >= 1  # the agent did acknowledge
    assert waiting and all(w is None for w in waiting), waiting


def test_a_datagram_the_relay_did_not_send_is_not_heard(engine: str, pki: Path) -> None:
    """A restarted relay (or anyone) answering the old connection: a short-header datagram
    that does not decrypt, shaped like a stateless reset, is received but not heard."""
    pair = Pair(engine, pki)
    pair.run(lambda: pair.link.ready)
    pair.link.ack_watch = 0.0
    pair.wire.advance(1.0)
    heard = pair.link.last_heard
    pair.wire.remove(SERVER)  # the relay is gone
    pair.link.ping()
    pair.wire.exchange()  # the PING leaves, into nothing
    fake = bytes([0x41]) + bytes(range(1, 40)) + bytes(16)
    for _ in range(3):
        pair.wire.now += 0.1
        pair.link.datagram_received(fake, SERVER, pair.wire.now)
        pair.link.flush(pair.wire.now)
    assert pair.link.last_rx == pair.wire.now
    assert pair.link.last_heard == heard
    assert pair.link.failure is None


def test_giving_the_relay_up_ends_the_link_with_its_cause(engine: str, pki: Path) -> None:
    pair = Pair(engine, pki)
    pair.run(lambda: pair.link.ready)
    before = pair.notified
    pair.link.give_up("nothing heard from the relay for 2 s")
    assert pair.link.failure == "nothing heard from the relay for 2 s"
    assert pair.link.gave_up == "liveness" and not pair.link.ready
    assert pair.notified == before + 1
