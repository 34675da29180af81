"""The relay (sans-IO): QUIC connections, the CONNECT-IP sessions on them, and everything
that happens to a session — admission, addresses, routes, packets, revocation, connector
failover, audit — as inputs in and actions out.

Inputs: UDP payloads (:meth:`RelayCore.datagram_received`), packets from the egress device
(:meth:`RelayCore.egress_received`), the timer (:meth:`RelayCore.handle_timer`) and the
housekeeping calls (:meth:`RelayCore.tick`, :meth:`RelayCore.check_revocations`,
:meth:`RelayCore.close`). Outputs: UDP payloads (:meth:`RelayCore.flush`), packets for the
egress device (:meth:`RelayCore.take_egress`), when to be woken (:meth:`RelayCore.deadline`)
and audit records (to the ``audit`` sink). It owns no socket, device or clock: ``now`` (one
monotonic clock) is passed in, and audit time stamps come from the injected wall clock.

One packet's way: datagram -> engine connection (by connection ID) -> session core event
-> :meth:`Router.from_session` -> egress list, or another session's
:meth:`ServerConnection.send_packet`, or an ICMP error back -> flush.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from zgate_pki import Identity
from zgate_policy.audit import AuditEvent, AuthRefused, SessionClosed, SessionOpened
from zgate_proto.engines.base import (
    Address,
    ConnectionIdIssued,
    ConnectionIdRetired,
    ConnectionTerminated,
    DatagramReceived,
    HandshakeCompleted,
    QuicConn,
    QuicEngine,
    SendStatus,
    ServerConfig,
    StreamDataReceived,
)
from zgate_proto.errors import DecodeError
from zgate_proto.icmp import packet_too_big
from zgate_proto.quic_header import (
    QUIC_V1,
    destination_cid,
    parse_header,
    starts_connection,
    version_negotiation,
    wants_version_negotiation,
)
from zgate_proto.session import (
    AddressRequested,
    PacketDropped,
    PacketReceived,
    RequestReceived,
    RequestRejected,
    RoutesAdvertised,
    ServerConnection,
    ServerEvent,
    SessionRequested,
)
from zgate_proto.session import SessionClosed as SessionEnded
from zgate_relay.door import Admitted, FrontDoor
from zgate_relay.enforce import Enforcer
from zgate_relay.limits import Admission, SessionLimits
from zgate_relay.metrics import RelayMetrics
from zgate_relay.pool import AddressPool, PoolExhausted
from zgate_relay.router import EGRESS, Deliver, Drop, Reject, Router
from zgate_relay.session import RelaySession
from zgate_relay.sites import SiteRoutes
from zgate_relay.why import WhyDesk

__all__ = ["SUPPORTED_VERSIONS", "RelayCore"]

_FIRST_INITIAL: Final = Admitted()

log = logging.getLogger("zgate.relay")

#: The QUIC versions the relay speaks (what Version Negotiation offers).
SUPPORTED_VERSIONS: Final = (QUIC_V1,)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(eq=False)
class _Connection:
    """One QUIC connection, its session core and the relay sessions on it."""

    quic: QuicConn
    server: ServerConnection
    peer: str
    cids: set[bytes] = field(default_factory=set)
    sessions: dict[int, RelaySession] = field(default_factory=dict)
    identity: Identity | None = None
    #: Why the connection is ending (set when it terminates): its sessions close with it.
    ending: str | None = None
    #: Terminated: forgotten after its last datagrams (a CONNECTION_CLOSE) are flushed.
    terminated: bool = False
    live: bool = True
    refusal_reported: bool = False
    last_rx: float = 0.0  # when the peer was last heard from
    #: Since when an authenticated connection has held no session (seen at a tick).
    bare_since: float | None = None
    timer_at: float | None = None  # the deadline this connection has on the timer heap
    #: Counted by the front door as half open (handshake not done yet), from this address.
    half_open: bool = False
    addr: Address = ()


class RelayCore:
    """The relay's state and decisions, driven by a pump (see the module docstring)."""

    def __init__(
        self,
        *,
        engine: QuicEngine,
        config: ServerConfig,
        pool: AddressPool,
        metrics: RelayMetrics,
        egress: bool = True,
        routes: Sequence[Network] | None = None,
        max_capsule_size: int = 65536 + 64,
        enforcer: Enforcer | None = None,
        audit: Callable[[AuditEvent], object] | None = None,
        relay_name: str = "relay",
        sites: SiteRoutes | None = None,
        connector_deadline: float = 5.0,
        own_addresses: frozenset[bytes] = frozenset(),
        wall_clock: Callable[[], datetime] = _utcnow,
        door: FrontDoor | None = None,
        limits: SessionLimits | None = None,
    ) -> None:
        self.engine = engine
        self.config = config
        self.verifier = config.verifier
        self.pool = pool
        self.metrics = metrics
        self.egress = egress
        self.routes = list(routes) if routes is not None else None
        self.max_capsule_size = max_capsule_size
        self.enforcer = enforcer
        self.audit = audit
        self.relay_name = relay_name
        self.sites = sites
        self.connector_deadline = connector_deadline
        self.wall_clock = wall_clock
        self.router = Router(enforcer, sites, own_addresses)
        self.admission = Admission(limits or SessionLimits())
        self._why = WhyDesk()
        self._cid_length = config.connection_id_length
        self._by_cid: dict[bytes, _Connection] = {}
        self._conns: dict[ServerConnection, _Connection] = {}
        self._dirty: set[_Connection] = set()
        #: Answers that belong to no connection: Version Negotiation, Retry, stateless reset.
        self._stateless: list[tuple[bytes, Address]] = []
        #: The admission checks for new connections (None: admit every good Initial).
        self.door = door
        #: Half-open connections in the order they were made, with their handshake deadline.
        self._handshakes: deque[tuple[float, _Connection]] = deque()
        self._egress_out: list[bytes] = []
        self._timers: list[tuple[float, int, _Connection]] = []
        self._seq = itertools.count()
        self._gateway4 = pool.gateway4
        self._gateway6 = pool.gateway6
        metrics.watch_queue_depth(self._queue_depth)
        if sites is not None:
            self._report_connectors()

    # ------------------------------------------------------------------- outputs

    def flush(self, now: float) -> list[tuple[bytes, Address]]:
        """UDP payloads to send: the connections touched since the last flush, and the
        Version Negotiation answers. Writes pending audit records too."""
        self._drain_audit()
        out, self._stateless = self._stateless, []
        dirty, self._dirty = self._dirty, set()
        for conn in dirty:
            if not conn.live:
                continue
            out.extend(conn.quic.flush(now))
            # A flush can issue connection IDs (NEW_CONNECTION_ID frames): learn them before
            # the peer can use one, or its next datagram would look like one of a forgotten
            # connection (and earn a stateless reset).
            self._events(conn, now)
            if conn.terminated:
                self._forget(conn)
                continue
            at = conn.quic.deadline()
            if at != conn.timer_at:
                conn.timer_at = at
                if at is not None:
                    heapq.heappush(self._timers, (at, next(self._seq), conn))
        return out

    def take_egress(self) -> list[bytes]:
        """Packets for the egress device since the last call (written as one batch)."""
        out, self._egress_out = self._egress_out, []
        return out

    def deadline(self) -> float | None:
        """When :meth:`handle_timer` is due: the earliest of every connection's deadline.

        One heap for all connections; an entry whose connection has since moved its
        deadline (or gone) is dropped when it reaches the top, not searched for.
        """
        timers = self._timers
        while timers:
            at, _, conn = timers[0]
            if conn.live and conn.timer_at == at:
                return at
            heapq.heappop(timers)
        return None

    # -------------------------------------------------------------------- inputs

    def datagram_received(self, data: bytes, addr: Address, now: float) -> None:
        """One UDP payload from the network."""
        try:
            cid = destination_cid(data, self._cid_length)
        except DecodeError:
            return
        conn = self._by_cid.get(cid)
        if conn is None:
            if not data[0] & 0x80:  # a short header: a connection we do not know (any more)
                self._unknown_connection(data, addr, now)
                return
            conn = self._new_connection(data, addr, now)
            if conn is None:
                return
        else:
            conn.quic.feed(data, addr, now)
        conn.last_rx = now
        self._events(conn, now)
        self._dirty.add(conn)

    def handle_timer(self, now: float) -> None:
        """Run every connection whose deadline has come."""
        if self._handshakes and self._handshakes[0][0] <= now:
            self._drop_slow_handshakes(now)
        timers = self._timers
        while timers and timers[0][0] <= now:
            at, _, conn = heapq.heappop(timers)
            if not conn.live or conn.timer_at != at:
                continue
            conn.timer_at = None
            conn.quic.handle_timer(now)
            self._events(conn, now)
            self._dirty.add(conn)

    def egress_received(self, packets: Sequence[bytes], now: float) -> None:
        """Packets the kernel routed into the egress device, toward the sessions."""
        m = self.metrics
        route = self.router.from_egress
        drops = m.drops
        m.packets["from_egress"] += len(packets)
        m.bytes["from_egress"] += sum(map(len, packets))
        for packet in packets:
            target = route(packet, now)
            if isinstance(target, Drop):
                drops[target.reason] += 1
            else:
                self._to_agent(target, packet, None, now)

    def tick(self, now: float) -> None:
        """Periodic housekeeping (about once a second): end idle flows, fail silent
        connectors over, close connections that hold no session, export gauges, write the
        flows' audit records, drop handshakes past their deadline."""
        door = self.door
        if door is not None:
            self._drop_slow_handshakes(now)
            door.expire(now)
            line = door.report(now)
            if line is not None:
                log.warning(line)
        self._close_bare_connections(now)
        if self.sites is not None:
            self.sites.expire(now)
            self._fail_silent_connectors(now)
        enforcer = self.enforcer
        if enforcer is not None:
            enforcer.expire(now)
            self.metrics.flows.set(len(enforcer.flows))
            self._drain_audit()

    def check_revocations(self, now: float) -> int:
        """End the connections of identities the verifier's CRL now revokes (the caller
        re-reads the CRL file first); returns how many were closed."""
        revoked = self.verifier.revoked_serials()
        closed = 0
        for conn in list(self._conns.values()):
            identity = conn.identity
            if identity is None or identity.serial not in revoked or conn.ending is not None:
                continue
            log.warning(
                "certificate revoked: ending its sessions",
                extra={"client": str(identity), "serial": f"{identity.serial:x}"},
            )
            self.metrics.refusals["revoked"].inc()
            self._close_connection(conn, "certificate revoked", now)
            closed += 1
        return closed

    def end_session(self, session_id: str, reason: str, now: float) -> bool:
        """End the live session `session_id` (an operator asked), telling the agent; False
        when no such session is live. A connection left without sessions is closed with
        the same reason: an agent holds one session per connection, and an empty one would
        only idle out later."""
        for conn in list(self._conns.values()):
            for session in list(conn.sessions.values()):
                if session.session_id != session_id:
                    continue
                log.warning("ending a session", extra={"session": session_id, "reason": reason})
                # The session goes at once (the heartbeat sent right after no longer lists
                # it); its connection follows when nothing else rides on it.
                self._close_session(conn, session, reason, now, end_stream=True)
                if not conn.sessions and conn.ending is None:
                    self._close_connection(conn, reason, now)
                return True
        return False

    def close(self, now: float) -> None:
        """End every session and connection, telling the peers (then :meth:`flush`)."""
        for conn in list(self._conns.values()):
            for session in list(conn.sessions.values()):
                self._close_session(conn, session, "relay shutting down", now, end_stream=True)
            if conn.ending is None:
                self._close_connection(conn, "relay shutting down", now)

    # ------------------------------------------------------------------ queries

    @property
    def sessions(self) -> list[RelaySession]:
        """All live sessions."""
        return [s for c in list(self._conns.values()) for s in list(c.sessions.values())]

    def status(self) -> dict[str, object]:
        """A snapshot of the live sessions, for /status.

        Called from the HTTP thread while the loop may change the session tables: a
        snapshot that races a change is simply taken again.
        """
        for _ in range(10):
            try:
                return self._status_snapshot()
            except RuntimeError:  # dictionary changed size during iteration
                continue
        return {"sessions": [], "count": None, "error": "busy; try again"}

    def _status_snapshot(self) -> dict[str, object]:
        sessions = [
            {
                "session": s.session_id,
                "client": str(s.identity),
                "peer": s.peer,
                "addresses": [str(a) for a in s.addresses],
                "mode": s.mode.value,
                "opened_at": s.opened_at,
                "packets_in": s.packets_in,
                "packets_out": s.packets_out,
                # For the control plane's heartbeat: who, and the bytes each way (as the
                # relay sees them: _in from the peer, _out to it).
                "kind": s.identity.kind,
                "ident": s.identity.ident,
                "bytes_in": s.bytes_in,
                "bytes_out": s.bytes_out,
            }
            for s in self.sessions
        ]
        return {"sessions": sessions, "count": len(sessions)}

    def _queue_depth(self) -> float:
        for _ in range(10):  # read at scrape time from the HTTP thread
            try:
                return float(sum(c.quic.datagrams_queued for c in list(self._conns.values())))
            except RuntimeError:
                continue
        return 0.0

    # -------------------------------------------------------------- connections

    def _new_connection(self, data: bytes, addr: Address, now: float) -> _Connection | None:
        """A datagram for no known connection: a QUIC v1 Initial (>= 1200 bytes) makes one,
        an unknown version earns Version Negotiation, anything else is dropped."""
        try:
            header = parse_header(data, self._cid_length)
        except DecodeError:
            return None
        if wants_version_negotiation(header, len(data), SUPPORTED_VERSIONS):
            answer = version_negotiation(
                destination_cid=header.source_cid,
                source_cid=header.destination_cid,
                versions=SUPPORTED_VERSIONS,
            )
            self._stateless.append((answer, addr))
            return None
        if not starts_connection(header, len(data)):
            return None
        door = self.door
        admitted = _FIRST_INITIAL
        if door is not None:
            verdict = door.admit(data, header, addr, now)
            if verdict is None:
                return None
            if isinstance(verdict, bytes):  # a Retry
                self._stateless.append((verdict, addr))
                return None
            admitted = verdict
        if admitted.retry_source_cid is None:
            quic = self.engine.accept(self.config, data, addr, now)
        else:
            quic = self.engine.accept(
                self.config,
                data,
                addr,
                now,
                original_destination_cid=admitted.original_destination_cid,
                retry_source_cid=admitted.retry_source_cid,
            )
        if quic is None:
            return None
        # requests=True: agents ask `why` on their own connection (zgate_relay.why).
        server = ServerConnection(quic, max_capsule_size=self.max_capsule_size, requests=True)
        conn = _Connection(quic=quic, server=server, peer=f"{addr[0]}:{addr[1]}", addr=addr)
        # The client keeps using its chosen destination CID until it hears from us.
        conn.cids.add(header.destination_cid)
        self._by_cid[header.destination_cid] = conn
        self._conns[server] = conn
        if door is not None:
            door.opened(addr)
            conn.half_open = True
            if door.limits.handshake_deadline:
                self._handshakes.append((now + door.limits.handshake_deadline, conn))
        return conn

    def _unknown_connection(self, data: bytes, addr: Address, now: float) -> None:
        """A short-header datagram for no connection we know: most likely one the relay
        had before a restart. A stateless reset tells its peer at once (RFC 9000 §10.3)."""
        if self.door is not None:
            reset = self.door.stateless_reset(data, now)
            if reset is not None:
                self._stateless.append((reset, addr))

    def _settle(self, conn: _Connection) -> None:
        """The connection is no longer half open (handshake done, or gone)."""
        if conn.half_open and self.door is not None:
            conn.half_open = False
            self.door.settled(conn.addr)

    def _drop_slow_handshakes(self, now: float) -> None:
        """Forget, without a word, the connections whose handshake missed its deadline:
        most are forged Initials that will never finish, and each holds a TLS handshake."""
        handshakes = self._handshakes
        door = self.door
        while handshakes and handshakes[0][0] <= now:
            _, conn = handshakes.popleft()
            if conn.live and conn.half_open and door is not None:
                door.timed_out()
                self._forget(conn)

    def _events(self, conn: _Connection, now: float) -> None:
        """Every event the connection has, through the session core."""
        quic = conn.quic
        receive = conn.server.receive
        while (event := quic.next_event()) is not None:
            kind = type(event)
            if kind is DatagramReceived or kind is StreamDataReceived:  # the packet path
                for server_event in receive(event):
                    self._session_event(conn, server_event, now)
                continue
            if isinstance(event, ConnectionIdIssued):
                conn.cids.add(event.connection_id)
                self._by_cid[event.connection_id] = conn
                continue
            if isinstance(event, ConnectionIdRetired):
                conn.cids.discard(event.connection_id)
                if self._by_cid.get(event.connection_id) is conn:
                    del self._by_cid[event.connection_id]
                continue
            if isinstance(event, HandshakeCompleted):
                self._settle(conn)
                self._authenticated(conn)
            elif isinstance(event, ConnectionTerminated):
                conn.ending = conn.ending or event.reason or "connection closed"
            for server_event in receive(event):
                self._session_event(conn, server_event, now)
            if isinstance(event, ConnectionTerminated):
                self._terminated(conn, now)
                return
        if conn.identity is None and not conn.refusal_reported:
            self._report_refusal(conn)

    def _authenticated(self, conn: _Connection) -> None:
        conn.identity = identity = conn.quic.peer_identity
        log.info(
            "client authenticated",
            extra={
                "peer": conn.peer,
                "client": str(identity),
                "serial": f"{identity.serial:x}" if identity else None,
            },
        )

    def _report_refusal(self, conn: _Connection) -> None:
        refusal = conn.quic.refusal
        if refusal is None:
            return
        conn.refusal_reported = True
        reason, detail = refusal
        m = self.metrics
        m.refusals.get(reason, m.refusals["handshake_failed"]).inc()
        self._audit(
            AuthRefused(
                ts=self.wall_clock(),
                relay=self.relay_name,
                peer=conn.peer,
                reason=reason,
                detail=detail,
            )
        )
        log.warning(
            "handshake refused", extra={"peer": conn.peer, "reason": reason, "detail": detail}
        )

    def _terminated(self, conn: _Connection, now: float) -> None:
        """The connection ended: its sessions end with it; it is forgotten once its last
        datagrams are flushed."""
        if not conn.refusal_reported:
            self._report_refusal(conn)
        reason = conn.ending or "connection closed"
        for session in list(conn.sessions.values()):
            self._close_session(conn, session, reason, now, end_stream=False)
        conn.terminated = True
        self._dirty.add(conn)

    def _close_connection(self, conn: _Connection, reason: str, now: float) -> None:
        conn.ending = reason
        conn.quic.close(0, reason)
        self._events(conn, now)
        self._dirty.add(conn)

    def _forget(self, conn: _Connection) -> None:
        conn.live = False
        self._settle(conn)
        for cid in conn.cids:
            if self._by_cid.get(cid) is conn:
                del self._by_cid[cid]
        self._conns.pop(conn.server, None)
        self._dirty.discard(conn)

    def _fail_silent_connectors(self, now: float) -> None:
        """A connector not heard from for ``connector_deadline`` seconds (it keeps its session
        alive with pings every second) is taken out of its site at once, and its connection
        closed: its flows move to the site's other connectors on their next packet, instead
        of waiting for QUIC's idle timeout."""
        sites = self.sites
        assert sites is not None
        for conn in list(self._conns.values()):
            silent = now - conn.last_rx
            if conn.ending is not None or not conn.sessions or silent <= self.connector_deadline:
                continue
            if not any(sites.is_connector(s) for s in conn.sessions.values()):
                continue
            log.warning(
                "connector silent: taking it out of its site",
                extra={
                    "connector": str(conn.identity),
                    "silent_s": round(silent, 1),
                    "deadline_s": self.connector_deadline,
                },
            )
            for session in conn.sessions.values():
                sites.withdraw(session)
            self._report_connectors()
            self._close_connection(conn, "connector silent past its deadline", now)

    # ----------------------------------------------------------------- sessions

    def _session_event(self, conn: _Connection, event: ServerEvent, now: float) -> None:
        if isinstance(event, PacketReceived):
            session = conn.sessions.get(event.stream_id)
            if session is None:
                self.metrics.drops["unknown_stream"] += 1
            else:
                self._from_agent(session, event.packet, now)
        elif isinstance(event, PacketDropped):
            drops = self.metrics.drops
            if event.reason in drops:
                drops[event.reason] += 1
        elif isinstance(event, SessionRequested):
            self._open_session(conn, event, now)
        elif isinstance(event, RequestRejected):
            self._refused_request(conn, event.status, "bad_request", event.detail or event.reason)
        elif isinstance(event, AddressRequested):
            session = conn.sessions.get(event.stream_id)
            if session is not None:
                self.router.detach(session)
                reply = session.answer_address_request(event.request, self.pool)
                self.router.attach(session)
                conn.server.send_capsules(event.stream_id, [reply])
        elif isinstance(event, RoutesAdvertised):
            session = conn.sessions.get(event.stream_id)
            if session is not None:
                self._routes_advertised(session, event.ranges)
        elif isinstance(event, SessionEnded):
            self._session_ended(conn, event, now)
        elif isinstance(event, RequestReceived):
            self._plain_request(conn, event, now)

    def _plain_request(self, conn: _Connection, event: RequestReceived, now: float) -> None:
        """An agent's question beside its session (`why`), answered for its own identity."""
        reply = self._why.answer(conn, event, conn.identity, self.enforcer, now)
        conn.server.respond(event.stream_id, reply.status, reply.headers, reply.body)
        self.metrics.why_requests[reply.result].inc()
        self._dirty.add(conn)
        log.info(
            "why request",
            extra={"client": str(conn.identity), "path": event.path, "result": reply.result},
        )

    def _open_session(self, conn: _Connection, event: SessionRequested, now: float) -> None:
        stream_id = event.stream_id
        identity = conn.identity
        if identity is None:
            self._refuse(conn, stream_id, 403, "no_certificate", "no client identity")
            return
        refusal = self.admission.check(identity)
        if refusal is not None:
            self._refuse(conn, stream_id, refusal.status, refusal.reason, refusal.detail)
            return
        session = RelaySession(
            identity=identity,
            peer=conn.peer,
            opened_at=self.wall_clock().timestamp(),
            stream_id=stream_id,
            server=conn.server,
            mode=event.mode,
            started=now,
        )
        try:
            session.assign(self.pool)
        except PoolExhausted as exc:
            self._refuse(conn, stream_id, 503, "pool_exhausted", str(exc))
            return
        conn.sessions[stream_id] = session
        self.admission.opened(identity)
        self.router.attach(session)
        # A connector is told the agents' addresses (what it must route back into the
        # tunnel); an agent what it may reach.
        routes = self.pool.networks if identity.kind == "connector" else self.routes
        conn.server.accept(
            stream_id,
            event.mode,
            [session.address_assign(), RelaySession.route_advertisement(routes)],
        )
        self.metrics.sessions.inc()
        self.metrics.sessions_total.inc()
        self._audit(SessionOpened(**self._session_fields(session, session.addresses)))
        log.info(
            "session open",
            extra={
                "session": session.session_id,
                "client": str(identity),
                "serial": f"{identity.serial:x}",
                "peer": session.peer,
                "addresses": [str(a) for a in session.addresses],
                "mode": event.mode.value,
            },
        )

    def _close_bare_connections(self, now: float) -> None:
        """Close authenticated connections that have held no session for longer than the
        limit: a certificate holder that opens connections and no sessions would otherwise
        keep a QUIC connection's memory each until the idle timeout, unbounded in number.
        Seen once a tick, so a connection gets between the limit and a tick more."""
        timeout = self.admission.limits.bare_connection_timeout
        if not timeout:
            return
        bare: list[_Connection] = []
        for conn in self._conns.values():
            if conn.sessions or conn.identity is None or conn.ending is not None:
                conn.bare_since = None
            elif conn.bare_since is None:
                conn.bare_since = now
            elif now - conn.bare_since >= timeout:
                bare.append(conn)
        for conn in bare:
            self.metrics.refusals["bare_connection"].inc()
            log.warning(
                "closing a connection that opened no session",
                extra={"peer": conn.peer, "client": str(conn.identity), "timeout_s": timeout},
            )
            self._close_connection(conn, f"no CONNECT-IP session within {timeout:g}s", now)

    def _refuse(
        self, conn: _Connection, stream_id: int, status: int, reason: str, detail: str
    ) -> None:
        self._refused_request(conn, status, reason, detail)
        conn.server.reject(stream_id, status)

    def _refused_request(self, conn: _Connection, status: int, reason: str, detail: str) -> None:
        self.metrics.refusals[reason].inc()
        log.warning(
            "request refused",
            extra={
                "client": str(conn.identity),
                "status": status,
                "reason": reason,
                "detail": detail,
            },
        )

    def _session_ended(self, conn: _Connection, event: SessionEnded, now: float) -> None:
        """The peer ended a session (the session core has answered on the stream already),
        or the connection under it ended."""
        session = conn.sessions.get(event.stream_id)
        if session is None:
            return
        if conn.ending is not None:
            reason = conn.ending
        elif event.reason.startswith("malformed capsule"):
            reason = "malformed capsule"
            self.metrics.session_errors.inc()
            log.warning(
                "malformed capsule: ending session",
                extra={
                    "session": session.session_id,
                    "client": str(session.identity),
                    "error": event.reason,
                },
            )
        elif not event.error:
            reason = "agent ended the stream"
        else:
            reason = event.reason
        self._close_session(conn, session, reason, now, end_stream=False)

    def _close_session(
        self,
        conn: _Connection,
        session: RelaySession,
        reason: str,
        now: float,
        *,
        end_stream: bool,
    ) -> None:
        if conn.sessions.pop(session.stream_id, None) is None:
            return
        self.router.detach(session)
        if self.sites is not None and self.sites.withdraw(session):
            log.warning(
                "connector gone: its flows move to the site's other connectors",
                extra={"session": session.session_id, "connector": session.identity.ident},
            )
            self._report_connectors()
        addresses = list(session.addresses)
        session.release(self.pool)
        self.admission.closed(session.identity)
        if self.enforcer is not None:
            self.enforcer.end_session(session)
        duration = max(0.0, now - session.started)
        self._audit(
            SessionClosed(
                **self._session_fields(session, addresses),
                reason=reason,
                duration_s=duration,
                bytes_out=session.bytes_in,
                bytes_in=session.bytes_out,
                packets_out=session.packets_in,
                packets_in=session.packets_out,
            )
        )
        if end_stream:
            conn.server.close_session(session.stream_id)
        self._dirty.add(conn)
        self.metrics.sessions.dec()
        log.info(
            "session closed",
            extra={
                "session": session.session_id,
                "client": str(session.identity),
                "reason": reason,
                "packets_in": session.packets_in,
                "bytes_in": session.bytes_in,
                "packets_out": session.packets_out,
                "bytes_out": session.bytes_out,
                "duration_s": round(duration, 3),
            },
        )

    def _routes_advertised(self, session: RelaySession, ranges: Sequence[Any]) -> None:
        """A connector's site prefixes: install what its id may serve, refuse (and log)
        the rest. An agent's advertisement is ignored: agents serve no networks."""
        if session.identity.kind != "connector" or self.sites is None:
            log.info(
                "route advertisement ignored (not a connector)",
                extra={"session": session.session_id, "client": str(session.identity)},
            )
            return
        result = self.sites.advertise(session, ranges)
        ident = session.identity.ident
        for prefix, why in result.refused:
            self.metrics.route_refusals.labels(ident).inc()
            log.warning(
                "advertised prefix refused",
                extra={
                    "session": session.session_id,
                    "connector": ident,
                    "prefix": prefix,
                    "reason": why,
                },
            )
        log.info(
            "connector routes installed",
            extra={
                "session": session.session_id,
                "connector": ident,
                "prefixes": [str(n) for n in result.accepted],
                "refused": len(result.refused),
            },
        )
        self._report_connectors()

    def _report_connectors(self) -> None:
        assert self.sites is not None
        for ident, state in self.sites.connectors().items():
            self.metrics.connector_sessions.labels(ident).set(state.sessions)
            self.metrics.connector_prefixes.labels(ident).set(len(state.prefixes))

    # -------------------------------------------------------------- packet path

    def _from_agent(self, session: RelaySession, packet: bytes, now: float) -> None:
        m = self.metrics
        size = len(packet)
        session.packets_in += 1
        session.bytes_in += size
        m.packets["from_agent"] += 1
        m.bytes["from_agent"] += size
        target = self.router.from_session(session, packet, now)
        if target is EGRESS:
            if not self.egress:
                m.drops["no_session"] += 1
                return
            self._egress_out.append(packet)  # written as one batch by the pump
            m.packets["to_egress"] += 1
            m.bytes["to_egress"] += size
        elif isinstance(target, Deliver):
            self._to_agent(target.session, target.packet, session, now)
        elif isinstance(target, Drop):
            m.drops[target.reason] += 1
            if isinstance(target, Reject):
                self._to_agent(session, target.icmp, None)

    def _to_agent(
        self,
        session: RelaySession,
        packet: bytes,
        from_session: RelaySession | None,
        now: float | None = None,
    ) -> None:
        """Send a packet into a session; ``from_session`` is where it came from (None: the
        egress device, or the relay itself), where a packet-too-big error goes; ``now``
        times its wait in the session's queue (None: a control packet, never judged)."""
        server = session.server
        assert server is not None
        status = server.send_packet(session.stream_id, packet, now)
        m = self.metrics
        if status is SendStatus.SENT:
            size = len(packet)
            session.packets_out += 1
            session.bytes_out += size
            m.packets["to_agent"] += 1
            m.bytes["to_agent"] += size
            self._dirty.add(self._conns[server])
        elif status is SendStatus.TOO_BIG:
            m.drops["too_big"] += 1
            self._send_too_big(packet, server.max_packet(session.stream_id), from_session)
        elif status is SendStatus.QUEUE_FULL:
            m.drops["queue_full"] += 1
        else:
            m.drops["session_closed"] += 1

    def _send_too_big(self, packet: bytes, mtu: int, from_session: RelaySession | None) -> None:
        """ICMP packet-too-big toward whoever sent a packet that does not fit the target
        session's path (RFC 1191 / RFC 8201): an agent, or the egress device."""
        gateway = self._gateway4 if packet[0] >> 4 == 4 else self._gateway6
        if gateway is None:
            return
        icmp = packet_too_big(packet, gateway, mtu)
        if icmp is None:
            return
        if from_session is None:
            if self.egress:
                self._egress_out.append(icmp)
        else:
            self._to_agent(from_session, icmp, None)

    # -------------------------------------------------------------------- audit

    def _session_fields(
        self,
        session: RelaySession,
        addresses: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address],
    ) -> dict[str, Any]:
        """What session.open and session.close records say about the session."""
        identity = session.identity
        return {
            "ts": self.wall_clock(),
            "relay": self.relay_name,
            "client": str(identity),
            "kind": identity.kind,
            "serial": f"{identity.serial:x}",
            "session": session.session_id,
            "addresses": tuple(str(a) for a in addresses),
            "peer": session.peer,
            "mode": session.mode.value,
        }

    def _audit(self, event: AuditEvent) -> None:
        if self.audit is not None:
            self.audit(event)

    def _drain_audit(self) -> None:
        enforcer = self.enforcer
        if enforcer is not None and enforcer.events:
            for event in enforcer.take_events():
                self._audit(event)
