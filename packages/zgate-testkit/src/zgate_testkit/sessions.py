"""CONNECT-IP session peers for the session tests: a :class:`~zgate_proto.session.ClientSession`
and the :class:`~zgate_proto.session.ServerConnection` it reaches over a
:class:`~zgate_testkit.memquic.Link` (two in-memory fakes, or real engine connections on the
wire), the server answering each request as soon as it is seen."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from zgate_pki import PkiPaths
from zgate_proto.capsules import (
    AddressAssign,
    AssignedAddress,
    IPAddressRange,
    RouteAdvertisement,
)
from zgate_proto.engines import get_engine
from zgate_proto.engines.base import QuicConn
from zgate_proto.session import (
    ClientEvent,
    ClientSession,
    PacketMode,
    ServerConnection,
    ServerEvent,
    SessionRequested,
)

from .memquic import Link, MemoryLink, drain, memory_pair
from .pki import client_config, server_config
from .wire import SERVER_ADDR, START, EnginePair

__all__ = [
    "AGENT",
    "ASSIGN",
    "EVERYWHERE",
    "LINKS",
    "ROUTES",
    "Answer",
    "Peers",
    "accept_all",
    "ipv4_packet",
    "make_link",
]

#: The links the session tests run over: the in-memory fakes, then each real engine.
LINKS = ("memory", "aioquic", "qh3")

AGENT = ipaddress.ip_network("10.100.0.2/32")
EVERYWHERE = IPAddressRange(
    ipaddress.ip_address("0.0.0.0"), ipaddress.ip_address("255.255.255.255")
)
ASSIGN = AddressAssign((AssignedAddress(0, AGENT),))
ROUTES = RouteAdvertisement((EVERYWHERE,))


def ipv4_packet(size: int = 60, marker: int = 0) -> bytes:
    """Bytes that look enough like an IPv4 packet for the session layer (it never parses)."""
    body = bytes((marker + i) % 256 for i in range(size - 20))
    return b"\x45\x00" + size.to_bytes(2, "big") + bytes(16) + body


Answer = Callable[["Peers", SessionRequested], None]


def accept_all(peers: Peers, event: SessionRequested) -> None:
    """The relay's usual answer: 200, an address and the routes."""
    assert peers.server is not None
    peers.server.accept(event.stream_id, event.mode, [ASSIGN, ROUTES])


class Peers:
    """A ClientSession and the ServerConnection it reaches over ``link``; the server's
    caller answers each request with ``answer`` as soon as it is seen."""

    def __init__(
        self,
        link: Link,
        *,
        mode: PacketMode = PacketMode.DATAGRAM,
        answer: Answer = accept_all,
        server_options: dict[str, Any] | None = None,
        **client_options: Any,
    ) -> None:
        self.link = link
        self.answer = answer
        self.server_options = server_options or {}
        self.client = ClientSession(
            link.client, authority="relay.example", mode=mode, **client_options
        )
        self.server: ServerConnection | None = None
        self.client_events: list[ClientEvent] = []
        self.server_events: list[ServerEvent] = []
        self.collect()

    @property
    def srv(self) -> ServerConnection:
        assert self.server is not None, "the server connection was never made"
        return self.server

    @property
    def server_quic(self) -> QuicConn:
        assert self.link.server is not None
        return self.link.server

    def collect(self) -> None:
        drain(self.link.client, lambda e: self.client_events.extend(self.client.receive(e)))
        if self.server is None and self.link.server is not None:
            self.server = ServerConnection(self.link.server, **self.server_options)
        drain(self.link.server, self._server_event)

    def _server_event(self, event: Any) -> None:
        for out in self.srv.receive(event):
            self.server_events.append(out)
            if isinstance(out, SessionRequested):
                self.answer(self, out)

    def run(self, until: Callable[[], bool] | None = None, *, max_steps: int = 3000) -> None:
        """Move bytes (firing timers when nothing moves) until ``until`` holds, or until the
        link is quiet when there is no ``until``."""
        for _ in range(max_steps):
            if until is not None and until():
                return
            if self.link.exchange():
                self.collect()
                continue
            if self.link.fire_timers():
                self.collect()
                continue
            if until is None or until():
                return
            break
        raise AssertionError(
            f"not reached: client {self.client_events[-5:]}, server {self.server_events[-5:]}"
        )

    def open(self) -> None:
        self.run(lambda: self.client.ready)
        self.run()

    # ---- reading the events

    def client_got(self, kind: type) -> list[Any]:
        return [e for e in self.client_events if isinstance(e, kind)]

    def server_got(self, kind: type) -> list[Any]:
        return [e for e in self.server_events if isinstance(e, kind)]


def make_link(name: str, pki: PkiPaths) -> Link:
    """A fresh link of kind ``name`` (one of :data:`LINKS`): two in-memory fakes, or a client
    connection of that engine dialling a server of the same engine (client alice of ``pki``),
    their events left for the session cores."""
    if name == "memory":
        return MemoryLink(*memory_pair())
    engine = get_engine(name)
    client = engine.connect(client_config(pki), SERVER_ADDR, START)
    return EnginePair(engine, server_config(pki), client, keep_events=False)
