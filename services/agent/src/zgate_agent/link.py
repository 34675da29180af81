"""The agent's end of one tunnel attempt: one QUIC connection carrying one CONNECT-IP session.

:class:`ClientLink` is the sans-IO endpoint the agent's :class:`zgate_host.pump.Pump` drives:
the engine's :class:`~zgate_proto.engines.base.QuicConn` does QUIC, the
:class:`~zgate_proto.session.ClientSession` does CONNECT-IP, and the link moves packets
between them and the device:

- packets the relay sent are collected while the pump feeds the connection and written to
  the device with one ``write_batch`` per wake-up, in :meth:`ClientLink.flush`, just before
  the connection's own output leaves (the device is an I/O sink, not the agent: nothing
  calls back into the caller);
- packets read from the device go in through :meth:`ClientLink.send_packets`, which returns
  the ones too big for the path; the agent decides what to answer (ICMP) and wakes the pump.

The link decides nothing about reconnecting, routes or DNS: it records how the attempt is
going (handshake done, session ready, why it ended) and tells the agent that something
changed through ``notify``, a wake-up without arguments (the agent sets an asyncio.Event).

For the agent's liveness deadline it also records when the relay was last *heard*: when
something authenticated came from it. Any datagram is not enough (a restarted relay may
answer the old connection with a stateless reset, and anyone can send garbage): an event
the engine made of a datagram (stream data, a DATAGRAM frame, the handshake's end) counts,
and so does an acknowledgement of what we sent, seen as fewer bytes in flight after a
datagram arrived without more packets declared lost (what a PING probe brings back).
It also records since when it has been *waiting* for the relay: the first flush after the
relay was last heard that sent a datagram while something the relay must acknowledge is in
flight, cleared whenever the relay is heard. ACKs alone (not in flight), and whatever the
same flush as the hearing sends, do not start a wait, so an idle link is not waiting.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from zgate_agent.failures import CloseInfo, close_info, describe_refusal
from zgate_agent.metrics import AgentMetrics
from zgate_proto.capsules import Capsule, IPAddressRange
from zgate_proto.engines.base import Address, ConnStats, QuicConn, SendStatus
from zgate_proto.session import (
    AddressesAssigned,
    ClientSession,
    ConnectionClosed,
    PacketDropped,
    PacketMode,
    PacketReceived,
    RequestFailed,
    ResponseReceived,
    RoutesAdvertised,
    SessionAccepted,
    SessionClosed,
    SessionRefused,
)

__all__ = ["H3_REQUEST_CANCELLED", "ClientLink", "PacketSink", "TunnelInfo"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The HTTP/3 error the agent closes a connection with when its session ended under it
#: (RFC 9114 section 8.1: the request was cancelled).
H3_REQUEST_CANCELLED = 0x10C


class PacketSink(Protocol):
    """Where packets from the relay go: the TUN device (or the in-memory one)."""

    def write_batch(self, packets: list[bytes]) -> None:
        """Write packets in order (a TUN device may join TCP segments)."""


@dataclass(frozen=True, slots=True)
class TunnelInfo:
    """What the relay told us when the session opened."""

    addresses: tuple[Network, ...]
    routes: tuple[IPAddressRange, ...]
    mode: PacketMode


class ClientLink:
    """One QUIC connection to the relay and its CONNECT-IP session, as a pump endpoint."""

    def __init__(
        self,
        quic: QuicConn,
        session: ClientSession,
        sink: PacketSink,
        metrics: AgentMetrics,
        *,
        notify: Callable[[], None] = lambda: None,
    ) -> None:
        self.quic = quic
        self.session = session
        self.sink = sink
        self.notify = notify
        self._packets = metrics.packets
        self._bytes = metrics.bytes
        self._drops = metrics.drops
        #: The connection's queue drops (fq-codel) already counted: (aqm, overflow).
        self._queue_drops = (0, 0)
        self._to_device: list[bytes] = []
        self._handshake_seen = False
        #: Why the attempt or the tunnel ended (None while it goes on): the relay refused
        #: the session, ended it, or the connection closed.
        self.failure: str | None = None
        #: How the QUIC connection closed, once it did.
        self.close_info: CloseInfo | None = None
        #: The mode the session was accepted in (None until then).
        self.accepted_mode: PacketMode | None = None
        #: How the requests sent with :meth:`request` ended, by stream ID, until taken.
        self._answers: dict[int, ResponseReceived | RequestFailed] = {}
        #: When a datagram last arrived from the relay (the pump's clock), authenticated
        #: or not; None before the first.
        self.last_rx: float | None = None
        #: When something authenticated was last heard from the relay (see the module's
        #: docstring); None before the first.
        self.last_heard: float | None = None
        #: When the first flush that sent something the relay must acknowledge, after the
        #: relay was last heard, sent it (the pump's clock); None: nothing sent since (the
        #: link is not waiting).
        self.waiting_since: float | None = None
        #: Look for acknowledgements (one stats() call per flush) only once the relay was
        #: last heard longer ago than this many seconds; None: never (liveness off).
        self.ack_watch: float | None = None
        self._rx_unchecked = False
        #: (bytes in flight, packets lost) after the last flush, while looking.
        self._in_flight: tuple[int, int] | None = None
        #: The agent gave the relay up (see :meth:`give_up`): the cause it gave.
        self.gave_up: str | None = None
        #: The relay refused the session (a CONNECT-IP error response).
        self.refused = False

    # ------------------------------------------------------------- the pump's side

    def datagram_received(self, data: bytes, addr: Address, now: float) -> None:
        """One UDP payload from the relay."""
        self.last_rx = now
        self._rx_unchecked = True
        self.quic.feed(data, addr, now)

    def handle_timer(self, now: float) -> None:
        """The connection's deadline has come."""
        self.quic.handle_timer(now)

    def flush(self, now: float) -> list[tuple[bytes, Address]]:
        """Handle what the connection received, write the relay's packets to the device
        (one batch), then return the connection's datagrams to send."""
        took = self._take_events()
        if self._rx_unchecked:
            self._rx_unchecked = False
            if took or self._acknowledged():
                self.last_heard = now
                self.waiting_since = None
        if self._to_device:
            out, self._to_device = self._to_device, []
            self.sink.write_batch(out)
        datagrams = self.quic.flush(now)
        stats = self.quic.stats()
        if (
            datagrams
            and self.waiting_since is None
            and stats.bytes_in_flight > 0
            and (self.last_heard is None or now > self.last_heard)
        ):
            self.waiting_since = now
        self._note_in_flight(now, stats)
        self._count_queue_drops(stats)
        return datagrams

    def _count_queue_drops(self, stats: ConnStats) -> None:
        """Count what the connection's DATAGRAM queue dropped since the last flush."""
        aqm, overflow = stats.datagrams_dropped_aqm, stats.datagrams_dropped_overflow
        seen_aqm, seen_overflow = self._queue_drops
        if aqm != seen_aqm or overflow != seen_overflow:
            self._drops["queue_aqm"] += aqm - seen_aqm
            self._drops["queue_overflow"] += overflow - seen_overflow
            self._queue_drops = (aqm, overflow)

    def deadline(self) -> float | None:
        """When the connection wants its timer."""
        return self.quic.deadline()

    # ----------------------------------------------------------- the agent's side

    @property
    def handshake_done(self) -> bool:
        """Our side of the TLS handshake completed (the relay may still refuse us)."""
        return self.quic.handshake_done

    @property
    def ready(self) -> bool:
        """The session is open: 2xx, ADDRESS_ASSIGN and ROUTE_ADVERTISEMENT all arrived."""
        return self.failure is None and self.session.ready

    @property
    def max_packet(self) -> int:
        """The largest IP packet the session can carry now (for ICMP packet-too-big)."""
        return self.session.max_packet

    def info(self) -> TunnelInfo:
        """Addresses, routes and mode of the open session."""
        s = self.session
        return TunnelInfo(tuple(s.addresses), tuple(s.routes), s.mode)

    def send_packets(self, packets: Iterable[bytes], now: float | None = None) -> list[bytes]:
        """Queue packets read from the device at ``now`` (the pump's clock; the next flush
        sends them); each one is counted as sent or dropped by reason. Returns the packets
        too big for the path, which the agent may answer with ICMP."""
        if self.failure is not None:
            dropped = sum(1 for _ in packets)
            self._drops["not_connected"] += dropped
            return []
        send = self.session.send_packet
        sent = sent_bytes = queue_full = closed = 0
        too_big: list[bytes] = []
        for packet in packets:
            status = send(packet, now)
            if status is SendStatus.SENT:
                sent += 1
                sent_bytes += len(packet)
            elif status is SendStatus.QUEUE_FULL:
                queue_full += 1
            elif status is SendStatus.TOO_BIG:
                too_big.append(packet)
            else:
                closed += 1
        self._packets["to_relay"] += sent
        self._bytes["to_relay"] += sent_bytes
        self._drops["queue_full"] += queue_full
        self._drops["too_big"] += len(too_big)
        self._drops["not_connected"] += closed
        return too_big

    def send_capsules(self, capsules: Sequence[Capsule]) -> None:
        """Capsules on the session's stream (a connector's ROUTE_ADVERTISEMENT)."""
        self.session.send_capsules(capsules)

    def request(self, method: str, path: str) -> int:
        """Ask the relay a plain HTTP/3 question on this connection (the pump's next flush
        sends it); its answer comes through :meth:`take_answer` under the stream ID
        returned. SessionError once the connection ended."""
        return self.session.request(method, path)

    def take_answer(self, stream_id: int) -> ResponseReceived | RequestFailed | None:
        """How the request on ``stream_id`` ended (once), or None while it goes on."""
        return self._answers.pop(stream_id, None)

    def ping(self) -> None:
        """A QUIC PING (keep-alive; the pump's next flush sends it)."""
        if not self.quic.closed:
            self.quic.ping()

    def give_up(self, reason: str, cause: str = "liveness") -> None:
        """The agent declares the relay gone (nothing heard for its liveness deadline, no
        answer to an attempt): the attempt or tunnel ends now, with ``reason`` (``cause``
        for the metrics), without waiting for QUIC."""
        if self.failure is None:
            self.gave_up = cause
        self._fail(reason)
        self.notify()

    def close(self, reason: str) -> None:
        """End the session (FIN) and the connection (CONNECTION_CLOSE), unless the
        connection is closing already; the pump's next flush sends it."""
        if self.quic.closed:
            return
        self.session.close()
        self.quic.close(0, reason)

    # -------------------------------------------------------------------- events

    def _acknowledged(self) -> bool:
        """Fewer bytes in flight than after the last flush, and no more packets declared
        lost: the relay acknowledged something (only looked at while :attr:`ack_watch`
        says so)."""
        before = self._in_flight
        if before is None:
            return False
        stats = self.quic.stats()
        return stats.bytes_in_flight < before[0] and stats.packets_lost == before[1]

    def _note_in_flight(self, now: float, stats: ConnStats) -> None:
        watch = self.ack_watch
        if watch is None or (self.last_heard is not None and now - self.last_heard < watch):
            self._in_flight = None
            return
        self._in_flight = (stats.bytes_in_flight, stats.packets_lost)

    def _take_events(self) -> bool:
        """Handle the connection's events; whether there were any."""
        quic = self.quic
        receive = self.session.receive
        out = self._to_device
        received = received_bytes = 0
        changed = took = False
        while (event := quic.next_event()) is not None:
            took = True
            for session_event in receive(event):
                if type(session_event) is PacketReceived:
                    packet = session_event.packet
                    out.append(packet)
                    received += 1
                    received_bytes += len(packet)
                else:
                    changed = self._control(session_event) or changed
        if received:
            self._packets["from_relay"] += received
            self._bytes["from_relay"] += received_bytes
        if not self._handshake_seen and quic.handshake_done:
            self._handshake_seen = changed = True
        if changed:
            self.notify()
        return took

    def _control(self, event: object) -> bool:
        """Record a session event other than a packet; whether the agent should look."""
        if isinstance(event, PacketDropped):
            reason = event.reason if event.reason in self._drops else "unknown_context"
            self._drops[reason] += 1
            return False
        if isinstance(event, ResponseReceived | RequestFailed):
            self._answers[event.stream_id] = event
        elif isinstance(event, SessionAccepted):
            self.accepted_mode = event.mode
        elif isinstance(event, SessionRefused):
            self._fail(describe_refusal(event.status, event.reason))
        elif isinstance(event, SessionClosed):
            self._fail(event.reason)
            if not self.quic.closed:
                self.quic.close(H3_REQUEST_CANCELLED, event.reason)
        elif isinstance(event, ConnectionClosed):
            self.close_info = close_info(
                event.error_code,
                event.reason,
                by_peer=event.by_peer,
                handshake_done=event.handshake_done,
                peer_chain=self.quic.peer_chain,
            )
            self._fail(event.reason or f"error 0x{event.error_code:x}")
        elif not isinstance(event, AddressesAssigned | RoutesAdvertised):
            return False
        return True

    def _fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
