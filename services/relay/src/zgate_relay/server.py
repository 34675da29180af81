"""The relay's asyncio pump: UDP socket <-> aioquic connections, the egress device, timers.

It moves bytes and hands every packet to the router; it makes no routing decision itself.
A packet's way: UDP datagram -> QUIC/H3 event -> session -> router -> stream or egress.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from aioquic._buffer import Buffer
from aioquic.h3.events import DatagramReceived, DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress, QuicConnection
from aioquic.quic.events import (
    ConnectionIdIssued,
    ConnectionIdRetired,
    ConnectionTerminated,
    HandshakeCompleted,
    QuicEvent,
)
from aioquic.quic.packet import QuicPacketType, encode_quic_version_negotiation, pull_quic_header

from zgate_host.sockets import enlarge_udp_buffers
from zgate_host.tun import PacketDevice
from zgate_host.udp import UdpBatchIO
from zgate_pki import ChainVerifier, Identity, PkiError
from zgate_policy.audit import AuditEvent, AuthRefused, SessionClosed, SessionOpened
from zgate_proto.capsules import AddressRequest, DatagramCapsule, RouteAdvertisement
from zgate_proto.errors import DecodeError, RequestError
from zgate_proto.h3 import (
    MODE_HEADER,
    ConnectIpH3Connection,
    ConnectIpStream,
    PacketMode,
    SendStatus,
)
from zgate_proto.icmp import packet_too_big
from zgate_proto.ip import decrement_ttl
from zgate_proto.request import parse_connect_ip_request, response_headers
from zgate_relay.enforce import Enforcer
from zgate_relay.metrics import RelayMetrics
from zgate_relay.mtls import MtlsServerConnection
from zgate_relay.pool import AddressPool, PoolExhausted
from zgate_relay.router import EGRESS, Drop, Reject, Router
from zgate_relay.session import RelaySession
from zgate_relay.sites import SiteRoutes

__all__ = ["H3_MESSAGE_ERROR", "RelayServer"]

log = logging.getLogger("zgate.relay")

H3_MESSAGE_ERROR = 0x10E  # RFC 9114 §8.1: malformed message (RFC 9297 §3.3 for capsules)
H3_REQUEST_CANCELLED = 0x10C
QUIC_MIN_INITIAL_SIZE = 1200


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(eq=False)
class _Connection:
    """One QUIC connection and the CONNECT-IP sessions on it."""

    quic: QuicConnection
    h3: ConnectIpH3Connection
    addr: NetworkAddress
    cids: set[bytes] = field(default_factory=set)
    sessions: dict[int, RelaySession] = field(default_factory=dict)
    identity: Identity | None = None
    timer: asyncio.TimerHandle | None = None
    timer_at: float | None = None
    closed: bool = False
    last_rx: float = 0.0  # when the peer was last heard from (the server's clock)


class RelayServer:
    """Accepts QUIC connections, runs CONNECT-IP sessions and moves their packets."""

    def __init__(
        self,
        *,
        configuration: QuicConfiguration,
        verifier: ChainVerifier,
        pool: AddressPool,
        metrics: RelayMetrics,
        egress: PacketDevice | None,
        routes: list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None = None,
        datagram_queue: int = 512,
        max_capsule_size: int = 65536 + 64,
        clock: Callable[[], float] | None = None,
        enforcer: Enforcer | None = None,
        audit: Callable[[AuditEvent], object] | None = None,
        relay_name: str = "relay",
        udp_offload: bool = True,
        sites: SiteRoutes | None = None,
        connector_deadline: float = 5.0,
        own_addresses: frozenset[bytes] = frozenset(),
    ) -> None:
        self.configuration = configuration
        self._udp_offload = udp_offload
        self._egress_out: list[bytes] = []  # packets for the egress device, this batch
        self.verifier = verifier
        self.pool = pool
        self.metrics = metrics
        self.egress = egress
        self.routes = routes
        self.datagram_queue = datagram_queue
        self.max_capsule_size = max_capsule_size
        self.sites = sites
        self.connector_deadline = connector_deadline
        self.router = Router(enforcer, sites, own_addresses)
        if sites is not None:
            self._report_connectors()
        self.enforcer = enforcer
        self.audit = audit
        self.relay_name = relay_name
        self.transport: UdpBatchIO | None = None
        self._loop = asyncio.get_running_loop()
        self._now = clock or self._loop.time
        self._by_cid: dict[bytes, _Connection] = {}
        self._by_quic: dict[QuicConnection, _Connection] = {}
        self._dirty: set[_Connection] = set()
        self._flush_scheduled = False
        self.socket_closed = asyncio.Event()
        metrics.watch_queue_depth(self._queue_depth)
        self._gateway4 = pool.gateway4
        self._gateway6 = pool.gateway6

    # ----------------------------------------------------------------- lifecycle

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on UDP host:port; returns the bound address (port 0 picks one)."""
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(address)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        # Drained on every wake-up (asyncio's datagram transport reads one datagram per
        # loop iteration), with GRO/GSO where the kernel has them; flushed once per batch.
        self.transport = UdpBatchIO(
            sock, self.datagram_received, gso=self._udp_offload, gro=self._udp_offload
        )
        enlarge_udp_buffers(sock)
        self._loop.add_reader(sock.fileno(), self.transport.readable)
        if self.egress is not None:
            self._loop.add_reader(self.egress.fileno(), self._egress_readable)
        sockname = self.transport.get_extra_info("sockname")
        log.info("relay listening", extra={"address": f"{sockname[0]}:{sockname[1]}"})
        return sockname[0], sockname[1]

    async def close(self) -> None:
        """Close every connection (telling peers), stop listening, stop reading egress."""
        for conn in list(self._by_quic.values()):
            for session in list(conn.sessions.values()):
                self._close_session(conn, session, reason="relay shutting down")
            conn.quic.close(error_code=0, reason_phrase="relay shutting down")
            self._dirty.add(conn)
        self._flush()
        for conn in list(self._by_quic.values()):
            self._forget(conn)
        if self.egress is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(self.egress.fileno())
        if self.transport is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(self.transport.sock.fileno())
            self.transport.close()
        self.socket_closed.set()

    @property
    def sessions(self) -> list[RelaySession]:
        """All live sessions."""
        return [s for c in self._by_quic.values() for s in c.sessions.values()]

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
                "mode": s.stream.mode.value,
                "opened_at": s.opened_at,
                "packets_in": s.packets_in,
                "packets_out": s.packets_out,
            }
            for s in list(self.sessions)
        ]
        return {"sessions": sessions, "count": len(sessions)}

    def check_revocations(self) -> int:
        """Re-read the CA/CRL if they changed and end sessions of revoked identities.

        Returns how many connections were closed.
        """
        try:
            if self.verifier.reload_if_changed():
                self.metrics.crl_reloads.inc()
                log.info("CA/CRL reloaded")
        except PkiError as exc:
            log.error("CA/CRL file is invalid; keeping the previous one", extra={"error": str(exc)})
        revoked = self.verifier.revoked_serials()
        closed = 0
        for conn in list(self._by_quic.values()):
            if conn.identity is not None and conn.identity.serial in revoked and not conn.closed:
                log.warning(
                    "certificate revoked: ending its sessions",
                    extra={"client": str(conn.identity), "serial": f"{conn.identity.serial:x}"},
                )
                self.metrics.refusals["revoked"].inc()
                conn.quic.close(error_code=0x0, reason_phrase="certificate revoked")
                conn.closed = True
                self._dirty.add(conn)
                closed += 1
        self._schedule_flush()
        return closed

    # ------------------------------------------------------------------ UDP side

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        """One UDP datagram from the network."""
        buf = Buffer(data=data)
        try:
            header = pull_quic_header(buf, host_cid_length=self.configuration.connection_id_length)
        except ValueError:
            return
        conn = self._by_cid.get(header.destination_cid)
        if conn is None:
            if (
                header.version is not None
                and header.packet_type != QuicPacketType.VERSION_NEGOTIATION
                and header.version not in self.configuration.supported_versions
            ):
                assert self.transport is not None
                self.transport.sendto(
                    encode_quic_version_negotiation(
                        source_cid=header.destination_cid,
                        destination_cid=header.source_cid,
                        supported_versions=self.configuration.supported_versions,
                    ),
                    addr,
                )
                return
            if header.packet_type != QuicPacketType.INITIAL or len(data) < QUIC_MIN_INITIAL_SIZE:
                return
            conn = self._accept(header.destination_cid, addr)
        now = self._now()
        conn.last_rx = now
        conn.quic.receive_datagram(data, addr, now=now)
        self._process_events(conn)
        self._dirty.add(conn)
        self._schedule_flush()

    def _accept(self, original_cid: bytes, addr: NetworkAddress) -> _Connection:
        quic = MtlsServerConnection(
            configuration=self.configuration,
            original_destination_connection_id=original_cid,
            verifier=self.verifier,
            on_refused=lambda reason, detail: self._refused(addr, reason, detail),
        )
        conn = _Connection(quic=quic, h3=ConnectIpH3Connection(quic), addr=addr)
        conn.cids.update({original_cid, quic.host_cid})
        for cid in conn.cids:
            self._by_cid[cid] = conn
        self._by_quic[quic] = conn
        return conn

    def _refused(self, addr: NetworkAddress, reason: str, detail: str) -> None:
        self.metrics.refusals.get(reason, self.metrics.refusals["handshake_failed"]).inc()
        self._audit(
            AuthRefused(
                ts=_utcnow(),
                relay=self.relay_name,
                peer=f"{addr[0]}:{addr[1]}",
                reason=reason,
                detail=detail,
            )
        )
        log.warning(
            "handshake refused",
            extra={"peer": f"{addr[0]}:{addr[1]}", "reason": reason, "detail": detail},
        )

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _session_fields(
        self,
        session: RelaySession,
        addresses: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address],
    ) -> dict[str, Any]:
        """What session.open and session.close records say about the session."""
        identity = session.identity
        return {
            "ts": _utcnow(),
            "relay": self.relay_name,
            "client": str(identity),
            "kind": identity.kind,
            "serial": f"{identity.serial:x}",
            "session": session.session_id,
            "addresses": tuple(str(a) for a in addresses),
            "peer": session.peer,
            "mode": session.stream.mode.value,
        }

    def _audit(self, event: AuditEvent) -> None:
        if self.audit is not None:
            self.audit(event)

    def tick(self) -> None:
        """Periodic housekeeping (about once a second): end idle flows, export gauges."""
        if self.sites is not None:
            self.sites.expire(self._loop.time())
            self._fail_silent_connectors()
        enforcer = self.enforcer
        if enforcer is not None:
            enforcer.expire(self._now())
            self.metrics.flows.set(len(enforcer.flows))
            self._drain_audit()

    def _fail_silent_connectors(self) -> None:
        """A connector not heard from for ``connector_deadline`` seconds (it keeps its session
        alive with pings every second) is taken out of its site at once, and its connection
        closed: its flows move to the site's other connectors on their next packet, instead
        of waiting for QUIC's idle timeout."""
        assert self.sites is not None
        now = self._now()
        for conn in list(self._by_quic.values()):
            if conn.closed or not conn.sessions or now - conn.last_rx <= self.connector_deadline:
                continue
            if not any(self.sites.is_connector(s) for s in conn.sessions.values()):
                continue
            log.warning(
                "connector silent: taking it out of its site",
                extra={
                    "connector": str(conn.identity),
                    "silent_s": round(now - conn.last_rx, 1),
                    "deadline_s": self.connector_deadline,
                },
            )
            for session in conn.sessions.values():
                self.sites.withdraw(session)
            self._report_connectors()
            conn.quic.close(error_code=0x0, reason_phrase="connector silent past its deadline")
            conn.closed = True
            self._dirty.add(conn)
            self._schedule_flush()

    def _drain_audit(self) -> None:
        enforcer = self.enforcer
        if enforcer is not None and enforcer.events:
            for event in enforcer.take_events():
                self._audit(event)

    def _flush(self) -> None:
        """Send what every touched connection has to send, and re-arm its timer."""
        self._flush_scheduled = False
        if self._egress_out and self.egress is not None:
            out, self._egress_out = self._egress_out, []
            self.egress.write_batch(out)
        self._drain_audit()
        dirty, self._dirty = self._dirty, set()
        transport = self.transport
        now = self._now()
        for conn in dirty:
            if transport is not None:
                transport.send_many(conn.quic.datagrams_to_send(now=now))
            self._arm_timer(conn)

    def _arm_timer(self, conn: _Connection) -> None:
        timer_at = conn.quic.get_timer()
        if timer_at == conn.timer_at:
            return
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        conn.timer_at = timer_at
        if timer_at is not None:
            conn.timer = self._loop.call_at(timer_at, self._on_timer, conn)

    def _on_timer(self, conn: _Connection) -> None:
        conn.timer = None
        conn.timer_at = None
        conn.quic.handle_timer(now=self._now())
        self._process_events(conn)
        self._dirty.add(conn)
        self._flush()

    # ---------------------------------------------------------------- QUIC events

    def _process_events(self, conn: _Connection) -> None:
        quic = conn.quic
        while (event := quic.next_event()) is not None:
            if isinstance(event, ConnectionIdIssued):
                conn.cids.add(event.connection_id)
                self._by_cid[event.connection_id] = conn
            elif isinstance(event, ConnectionIdRetired):
                conn.cids.discard(event.connection_id)
                self._by_cid.pop(event.connection_id, None)
            elif isinstance(event, HandshakeCompleted):
                self._handshake_completed(conn)
            elif isinstance(event, ConnectionTerminated):
                self._terminated(conn, event)
                return
            else:
                self._h3_events(conn, event)

    def _handshake_completed(self, conn: _Connection) -> None:
        quic = cast(MtlsServerConnection, conn.quic)
        conn.identity = quic.peer_identity
        log.info(
            "client authenticated",
            extra={
                "peer": f"{conn.addr[0]}:{conn.addr[1]}",
                "client": str(conn.identity),
                "serial": f"{conn.identity.serial:x}" if conn.identity else None,
            },
        )

    def _terminated(self, conn: _Connection, event: ConnectionTerminated) -> None:
        for session in list(conn.sessions.values()):
            self._close_session(conn, session, reason=event.reason_phrase or "connection closed")
        self._forget(conn)

    def _forget(self, conn: _Connection) -> None:
        for cid in conn.cids:
            self._by_cid.pop(cid, None)
        self._by_quic.pop(conn.quic, None)
        self._dirty.discard(conn)
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None

    def _h3_events(self, conn: _Connection, event: QuicEvent) -> None:
        h3_events: list[H3Event] = conn.h3.handle_event(event)
        for h3_event in h3_events:
            if isinstance(h3_event, DatagramReceived):
                session = conn.sessions.get(h3_event.stream_id)
                if session is None:
                    self.metrics.drops["unknown_stream"] += 1
                    continue
                try:
                    packet = ConnectIpStream.ip_packet_from_datagram(h3_event.data)
                except DecodeError:
                    packet = None
                if packet is None:
                    self.metrics.drops["unknown_context"] += 1
                    continue
                self._from_agent(session, packet)
            elif isinstance(h3_event, DataReceived):
                self._stream_data(conn, h3_event)
            elif isinstance(h3_event, HeadersReceived):
                self._headers(conn, h3_event)

    def _stream_data(self, conn: _Connection, event: DataReceived) -> None:
        session = conn.sessions.get(event.stream_id)
        if session is None:
            return
        try:
            received = session.stream.receive_data(event.data, event.stream_ended)
        except DecodeError as exc:
            self.metrics.session_errors.inc()
            log.warning(
                "malformed capsule: ending session",
                extra={
                    "session": session.session_id,
                    "client": str(session.identity),
                    "error": str(exc),
                },
            )
            conn.quic.reset_stream(event.stream_id, H3_MESSAGE_ERROR)
            with contextlib.suppress(Exception):
                conn.quic.stop_stream(event.stream_id, H3_MESSAGE_ERROR)
            self._close_session(conn, session, reason="malformed capsule", send_fin=False)
            return
        for capsule in received.capsules:
            if isinstance(capsule, DatagramCapsule):
                packet = ConnectIpStream.ip_packet_from_capsule(capsule)
                if packet is None:
                    self.metrics.drops["unknown_context"] += 1
                else:
                    self._from_agent(session, packet)
            elif isinstance(capsule, AddressRequest):
                self.router.detach(session)
                reply = session.answer_address_request(capsule, self.pool)
                self.router.attach(session)
                session.stream.send_capsules([reply])
            elif isinstance(capsule, RouteAdvertisement):
                self._route_advertisement(session, capsule)
        if received.ended:
            self._close_session(conn, session, reason="agent ended the stream")

    # ------------------------------------------------------------------ requests

    def _headers(self, conn: _Connection, event: HeadersReceived) -> None:
        if event.stream_id in conn.sessions:
            return  # trailers: nothing to do
        stream_id = event.stream_id
        try:
            parse_connect_ip_request(event.headers)
        except RequestError as exc:
            self._reject(conn, stream_id, exc.status, "bad_request", str(exc))
            return
        if conn.identity is None:
            self._reject(conn, stream_id, 403, "no_certificate", "no client identity")
            return
        mode = self._mode_for(conn, event.headers)
        stream = ConnectIpStream(
            conn.h3,
            stream_id,
            mode,
            max_queued=self.datagram_queue,
            max_capsule_size=self.max_capsule_size,
        )
        session = RelaySession(
            identity=conn.identity,
            stream=stream,
            peer=f"{conn.addr[0]}:{conn.addr[1]}",
            opened_at=time.time(),
        )
        try:
            session.assign(self.pool)
        except PoolExhausted as exc:
            self._reject(conn, stream_id, 503, "pool_exhausted", str(exc))
            return
        conn.sessions[stream_id] = session
        self.router.attach(session)
        headers = [*response_headers(200), (MODE_HEADER, mode.value.encode())]
        conn.h3.send_headers(stream_id, headers, end_stream=False)
        # A connector is told the agents' addresses (what it must route back into the
        # tunnel); an agent what it may reach.
        routes = self.pool.networks if conn.identity.kind == "connector" else self.routes
        stream.send_capsules([session.address_assign(), RelaySession.route_advertisement(routes)])
        self.metrics.sessions.inc()
        self.metrics.sessions_total.inc()
        self._audit(SessionOpened(**self._session_fields(session, session.addresses)))
        log.info(
            "session open",
            extra={
                "session": session.session_id,
                "client": str(session.identity),
                "serial": f"{session.identity.serial:x}",
                "peer": session.peer,
                "addresses": [str(a) for a in session.addresses],
                "mode": mode.value,
            },
        )

    def _mode_for(self, conn: _Connection, headers: list[tuple[bytes, bytes]]) -> PacketMode:
        asked = dict(headers).get(MODE_HEADER, b"").decode("ascii", "replace")
        if asked == PacketMode.STREAM.value or not conn.h3.peer_supports_datagrams():
            return PacketMode.STREAM
        return PacketMode.DATAGRAM

    def _reject(
        self, conn: _Connection, stream_id: int, status: int, reason: str, detail: str
    ) -> None:
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
        conn.h3.send_headers(stream_id, response_headers(status), end_stream=True)

    def _route_advertisement(self, session: RelaySession, capsule: RouteAdvertisement) -> None:
        """A connector's site prefixes: install what its id may serve, refuse (and log)
        the rest. An agent's advertisement is ignored: agents serve no networks."""
        if session.identity.kind != "connector" or self.sites is None:
            log.info(
                "route advertisement ignored (not a connector)",
                extra={"session": session.session_id, "client": str(session.identity)},
            )
            return
        result = self.sites.advertise(session, capsule.ranges)
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

    def _close_session(
        self, conn: _Connection, session: RelaySession, *, reason: str, send_fin: bool = True
    ) -> None:
        if conn.sessions.pop(session.stream.stream_id, None) is None:
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
        if self.enforcer is not None:
            self.enforcer.end_session(session)
        self._audit(
            SessionClosed(
                **self._session_fields(session, addresses),
                reason=reason,
                duration_s=time.time() - session.opened_at,
                bytes_out=session.bytes_in,
                bytes_in=session.bytes_out,
                packets_out=session.packets_in,
                packets_in=session.packets_out,
            )
        )
        if send_fin:
            session.stream.close()
        else:
            session.stream.closed = True
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
                "duration_s": round(time.time() - session.opened_at, 3),
            },
        )

    # --------------------------------------------------------------- packet path

    def _from_agent(self, session: RelaySession, packet: bytes) -> None:
        m = self.metrics
        size = len(packet)
        session.packets_in += 1
        session.bytes_in += size
        m.packets["from_agent"] += 1
        m.bytes["from_agent"] += size
        target = self.router.from_session(session, packet, self._loop.time())
        if target is EGRESS:
            if self.egress is None:
                m.drops["no_session"] += 1
                return
            if not self._egress_out:
                self._schedule_flush()
            self._egress_out.append(packet)  # written as a batch by _flush
            m.packets["to_egress"] += 1
            m.bytes["to_egress"] += size
        elif isinstance(target, Drop):
            m.drops[target.reason] += 1
            if isinstance(target, Reject):
                self._to_agent(session, target.icmp, from_session=None)
        else:
            forwarded = bytearray(packet)
            if not decrement_ttl(forwarded):
                m.drops["ttl_expired"] += 1
                return
            self._to_agent(cast(RelaySession, target), bytes(forwarded), from_session=session)

    def _egress_readable(self) -> None:
        assert self.egress is not None
        route = self.router.from_egress
        drops = self.metrics.drops
        packets = self.egress.read_batch(64)
        now = self._loop.time()
        self.metrics.packets["from_egress"] += len(packets)
        self.metrics.bytes["from_egress"] += sum(map(len, packets))
        for packet in packets:
            target = route(packet, now)
            if isinstance(target, Drop):
                drops[target.reason] += 1
            else:
                self._to_agent(target, packet, from_session=None)
        if packets:
            self._schedule_flush()

    def _to_agent(
        self, session: RelaySession, packet: bytes, *, from_session: RelaySession | None
    ) -> None:
        status = session.stream.send_packet(packet)
        m = self.metrics
        if status is SendStatus.SENT:
            session.packets_out += 1
            session.bytes_out += len(packet)
            m.packets["to_agent"] += 1
            m.bytes["to_agent"] += len(packet)
            self._dirty.add(self._by_quic[session.stream.quic])
        elif status is SendStatus.TOO_BIG:
            m.drops["too_big"] += 1
            self._send_too_big(packet, session.stream.max_datagram_packet, from_session)
        elif status is SendStatus.QUEUE_FULL:
            m.drops["queue_full"] += 1
        else:
            m.drops["session_closed"] += 1

    def _send_too_big(self, packet: bytes, mtu: int, from_session: RelaySession | None) -> None:
        gateway = self._gateway4 if packet[0] >> 4 == 4 else self._gateway6
        if gateway is None:
            return
        icmp = packet_too_big(packet, gateway, mtu)
        if icmp is None:
            return
        if from_session is None:
            if self.egress is not None:
                self.egress.write(icmp)
        else:
            self._to_agent(from_session, icmp, from_session=None)

    def _queue_depth(self) -> float:
        return float(sum(len(c.quic._datagrams_pending) for c in self._by_quic.values()))
