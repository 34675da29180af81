"""The engine wire: real QUIC connections joined in memory, with a fake clock and no sockets.

A :class:`Wire` moves UDP payloads between :class:`Node` s by address: each exchange flushes
every node (in the order they were added) and hands each datagram to the node at its
destination, optionally losing some; when nothing moves, :meth:`Wire.fire_timers` moves the
clock to the earliest deadline and fires it. A node is anything with the pump's four calls —
an engine connection (:class:`ConnNode`), an engine's server side that makes a connection from
a client's first datagram (:class:`AcceptingNode`), the relay's ``RelayCore``, the agent's
``ClientLink`` — so the engine, session, relay-core and agent-link tests drive their code the
way the pumps do, one shared way.

:class:`EnginePair` is the common case: one client connection and the server connection its
Initial made, with each side's events kept (or left in the connections for a caller that
reads them itself).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from zgate_proto.engines.base import (
    Address,
    ConnectionTerminated,
    HandshakeCompleted,
    QuicConn,
    QuicEngine,
    QuicEvent,
    ServerConfig,
)

__all__ = [
    "CLIENT_ADDR",
    "HORIZON",
    "SERVER_ADDR",
    "START",
    "AcceptingNode",
    "ConnNode",
    "EnginePair",
    "Node",
    "Wire",
]

CLIENT_ADDR: Address = ("198.51.100.7", 40000)
SERVER_ADDR: Address = ("203.0.113.1", 443)
#: Where the fake clock starts.
START = 1.0
#: Timers due within this much of the fake clock fire while the network settles (ACK delays,
#: pacing); later ones (probe and idle timeouts) only when a test asks for them.
HORIZON = 0.2

Datagrams = list[tuple[bytes, Address]]
EventSink = Callable[[QuicEvent], None]


class Node(Protocol):
    """One end on the wire: what a pump calls."""

    def datagram_received(self, data: bytes, addr: Address, now: float) -> None: ...

    def flush(self, now: float) -> Datagrams: ...

    def deadline(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...


def _hand_on(conn: QuicConn, on_event: EventSink | None) -> None:
    if on_event is not None:
        while (event := conn.next_event()) is not None:
            on_event(event)


class ConnNode:
    """A :class:`QuicConn` on the wire. With ``on_event``, its events are handed on as soon
    as anything (a datagram, a timer, a flush) made them; without, they stay in ``conn``."""

    def __init__(self, conn: QuicConn, on_event: EventSink | None = None) -> None:
        self.conn = conn
        self.on_event = on_event

    def datagram_received(self, data: bytes, addr: Address, now: float) -> None:
        self.conn.feed(data, addr, now)
        _hand_on(self.conn, self.on_event)

    def flush(self, now: float) -> Datagrams:
        out = self.conn.flush(now)
        _hand_on(self.conn, self.on_event)
        return out

    def deadline(self) -> float | None:
        return self.conn.deadline()

    def handle_timer(self, now: float) -> None:
        self.conn.handle_timer(now)
        _hand_on(self.conn, self.on_event)


class AcceptingNode:
    """An engine's server side: the first datagram from a new address makes a connection
    (``engine.accept``, which must not refuse it); later ones are fed to it. Events as
    :class:`ConnNode`."""

    def __init__(
        self, engine: QuicEngine, config: ServerConfig, on_event: EventSink | None = None
    ) -> None:
        self.engine = engine
        self.config = config
        self.on_event = on_event
        self.conns: dict[Address, QuicConn] = {}

    def datagram_received(self, data: bytes, addr: Address, now: float) -> None:
        conn = self.conns.get(addr)
        if conn is None:
            made = self.engine.accept(self.config, data, addr, now)
            assert made is not None, "the engine refused a client's Initial"
            self.conns[addr] = conn = made
        else:
            conn.feed(data, addr, now)
        _hand_on(conn, self.on_event)

    def flush(self, now: float) -> Datagrams:
        out: Datagrams = []
        for conn in self.conns.values():
            out.extend(conn.flush(now))
            _hand_on(conn, self.on_event)
        return out

    def deadline(self) -> float | None:
        due = [d for c in self.conns.values() if (d := c.deadline()) is not None]
        return min(due, default=None)

    def handle_timer(self, now: float) -> None:
        for conn in self.conns.values():
            if (at := conn.deadline()) is not None and at <= now:
                conn.handle_timer(now)
                _hand_on(conn, self.on_event)


@dataclass
class Wire:
    """Nodes by address, the datagrams between them, one fake clock (see the module)."""

    now: float = START
    nodes: dict[Address, Node] = field(default_factory=dict)
    #: Each exchange first moves the clock this far and fires what is due (0: the clock
    #: moves only to fire timers). An engine that paces needs time to pass.
    tick: float = 0.0
    #: Datagrams to these addresses are lost.
    cut: set[Address] = field(default_factory=set)
    #: Loses a datagram when it says so: (source, how many that source has sent, payload).
    lose: Callable[[Address, int, bytes], bool] | None = None
    #: Called with each batch a node flushed, before any of it is delivered.
    watch: Callable[[Address, Datagrams], None] | None = None
    #: Every datagram each address sent, delivered or not.
    sent: dict[Address, list[bytes]] = field(default_factory=dict)
    #: Every datagram lost (by ``cut`` or ``lose``), and those sent to no node.
    lost: list[bytes] = field(default_factory=list)

    def add(self, addr: Address, node: Node) -> None:
        """Put ``node`` on the wire at ``addr`` (it flushes after those added before it)."""
        self.nodes[addr] = node

    def remove(self, addr: Address) -> None:
        """Take the node at ``addr`` off the wire: what is sent to it from now on is lost."""
        del self.nodes[addr]

    def deliver(self, src: Address, datagrams: Iterable[tuple[bytes, Address]]) -> None:
        """Hand datagrams that ``src`` sent to their destinations (or lose them)."""
        record = self.sent.setdefault(src, [])
        for data, dst in datagrams:
            record.append(data)
            receiver = self.nodes.get(dst)
            if (
                receiver is None
                or dst in self.cut
                or (self.lose is not None and self.lose(src, len(record), data))
            ):
                self.lost.append(data)
                continue
            receiver.datagram_received(data, src, self.now)

    def exchange(self) -> bool:
        """Every node flushes once, in turn, and what it sent arrives at once; True if
        anything was sent."""
        if self.tick:
            self.now += self.tick
            self.fire_due(self.now)
        moved = False
        for addr, node in list(self.nodes.items()):
            out = node.flush(self.now)
            if self.watch is not None:
                self.watch(addr, out)
            self.deliver(addr, out)
            moved = moved or bool(out)
        return moved

    def fire_due(self, until: float) -> bool:
        """If the earliest deadline is not after ``until``, move the clock there and fire
        every timer then due; whether one was."""
        due = [d for node in self.nodes.values() if (d := node.deadline()) is not None]
        if not due or min(due) > until:
            return False
        self.now = max(self.now, min(due))
        for node in list(self.nodes.values()):
            if (at := node.deadline()) is not None and at <= self.now:
                node.handle_timer(self.now)
        return True

    def fire_timers(self, horizon: float = HORIZON) -> bool:
        """Fire the earliest timer if it is due within ``horizon`` of now."""
        return self.fire_due(self.now + horizon)

    def settle(
        self,
        until: Callable[[], bool] | None = None,
        *,
        horizon: float = HORIZON,
        max_steps: int = 20000,
    ) -> None:
        """Exchange datagrams (firing timers due within ``horizon`` when nothing moves) until
        ``until`` holds, or, without ``until``, until the network is quiet."""
        for _ in range(max_steps):
            if until is not None and until():
                return
            if self.exchange() or self.fire_timers(horizon):
                continue
            if until is None or until():
                return
            break
        raise AssertionError(f"not reached: {self.describe()}")

    def advance(self, seconds: float, *, horizon: float = HORIZON) -> None:
        """Let ``seconds`` pass, firing every timer on the way and settling after each."""
        end = self.now + seconds
        while self.fire_due(end):
            self.settle(horizon=horizon)
        self.now = max(self.now, end)
        self.settle(horizon=horizon)

    def describe(self) -> str:
        """What a failed :meth:`settle` says (subclasses add what they keep)."""
        return f"now {self.now}, nodes {list(self.nodes)}"


class EnginePair(Wire):
    """One client connection at :data:`CLIENT_ADDR` dialling :data:`SERVER_ADDR`, where
    ``engine`` (which may be another engine than the client's) makes the server connection
    from the client's first datagram.

    With ``keep_events`` each side's events are collected in ``client_events`` and
    ``server_events``; without, they stay in the connections (a session core reads them).
    """

    def __init__(
        self,
        engine: QuicEngine,
        server_config: ServerConfig,
        client: QuicConn,
        *,
        now: float = START,
        keep_events: bool = True,
    ) -> None:
        super().__init__(now=now)
        self.engine = engine
        self.server_config = server_config
        self.client_events: list[QuicEvent] = []
        self.server_events: list[QuicEvent] = []
        self._client = client
        self._server = AcceptingNode(
            engine, server_config, self.server_events.append if keep_events else None
        )
        self.add(CLIENT_ADDR, ConnNode(client, self.client_events.append if keep_events else None))
        self.add(SERVER_ADDR, self._server)

    @property
    def client(self) -> QuicConn:
        return self._client

    @property
    def server(self) -> QuicConn | None:
        """The server connection, once the client's first datagram made it."""
        return self._server.conns.get(CLIENT_ADDR)

    @property
    def srv(self) -> QuicConn:
        """The server connection, which must have been made."""
        assert self.server is not None, "the server connection was never made"
        return self.server

    def lose_datagrams(self, lose: bool) -> None:
        """Part of :class:`~zgate_testkit.memquic.Link`: DATAGRAM frames travel inside
        encrypted packets here, so their loss is tested over memory links."""
        raise NotImplementedError("DATAGRAM loss is tested over memory links")

    # ---- reading the events

    def client_terminations(self) -> list[ConnectionTerminated]:
        return [e for e in self.client_events if isinstance(e, ConnectionTerminated)]

    def server_terminations(self) -> list[ConnectionTerminated]:
        return [e for e in self.server_events if isinstance(e, ConnectionTerminated)]

    def handshake_over(self) -> bool:
        """Both sides completed the handshake, or the client's connection ended."""
        client_done = any(isinstance(e, HandshakeCompleted) for e in self.client_events)
        server_done = any(isinstance(e, HandshakeCompleted) for e in self.server_events)
        return bool(self.client_terminations()) or (client_done and server_done)

    def describe(self) -> str:
        return f"client events {self.client_events}, server events {self.server_events}"
