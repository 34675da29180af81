"""The relay's I/O: one UDP socket, the egress device and one timer around a
:class:`~zgate_relay.core.RelayCore`. It moves bytes and calls the core; it decides nothing.

A wake-up: drain the socket (or the egress device), feed the core, then flush once — the
egress packets first (one batch to the device), then the UDP payloads — and re-arm the one
timer at the core's deadline (:class:`zgate_host.pump.Pump`).

Under the ``fq-codel`` queue discipline (the default) both shared inputs are read into
FQ-CoDel queues before the core sees them (:mod:`zgate_proto.fq`): the UDP socket's
datagrams keyed by their source (one agent's connection), the egress device's packets by
their flow; the core is fed one budget per turn of the event loop, quiet sources first, so a
flooding agent or flow waits in its own queue (and loses its excess there) instead of in the
kernel's FIFO in front of everyone. ``fifo`` feeds the core straight from the reads, as
before.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterable

from zgate_host.pump import Pump
from zgate_host.tun import PacketDevice
from zgate_pki import PkiError
from zgate_proto.engines.base import Address
from zgate_proto.fq import AqmConfig, PacketQueue, flow_hash, make_queue
from zgate_relay.core import RelayCore
from zgate_relay.router import Router
from zgate_relay.session import RelaySession

__all__ = ["RelayPump", "bind_udp"]

log = logging.getLogger("zgate.relay")

#: Packets read from the egress device per wake-up, at most (fifo: all of them go to the
#: core at once).
EGRESS_BATCH = 64
#: Under fq-codel: packets read from the egress device per turn, and packets handed to the
#: core per turn. The device's ring (txqueuelen, 500) is a FIFO
#: that tail-drops when the relay reads too slowly: with A's download flood and 128 reads
#: per turn B lost 14-29 % of its pings there; 512 reads per turn (16 for every one
#: processed) kept it at 2.5 % (bench/fairness.py --direction down, one round each).
EGRESS_READ = 512
EGRESS_BUDGET = 32
#: Under fq-codel: datagrams read from the UDP socket per turn, and handed to the core.
#: Measured in the lab (B's ping through the relay while A floods, kernel timestamps on the
#: relay's interfaces): reading everything waiting (thousands of GRO segments) made a turn
#: longer than the delay it saved; 64 per turn left B's replies 3-5 ms (p50) behind a turn,
#: 32 about 1.2 ms. Each turn costs a flush: relay CPU per packet rose about 25 % against
#: fifo's one flush per 256 reads (bench/tunnel.py, same run).
INGRESS_READS = 128
INGRESS_BUDGET = 32
#: Under fq-codel: datagrams waiting in the relay's own UDP ingress queue, at
#: most; past it the fattest source or flow loses its oldest.
INGRESS_LIMIT = 256
#: The egress queue holds at least two turns' reads: below one, a TCP download's burst
#: overflowed it at once (0.6x fifo's download throughput with 256).
EGRESS_LIMIT = 1024


#: SO_RCVBUFFORCE (Linux, socket(7)): past net.core.rmem_max, for CAP_NET_ADMIN.
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def bind_udp(host: str, port: int, receive_buffer: int = 0) -> socket.socket:
    """A non-blocking UDP socket bound to host:port (IPv6 sockets take IPv4 too), with a
    kernel receive buffer of ``receive_buffer`` bytes (0: the kernel's default, about 90
    full-size datagrams: 5 ms of a 20 000/s handshake flood, after which the kernel drops
    agents' datagrams with the flood's whenever the relay is a moment late).

    Raises OSError (the caller turns it into a start-up error naming --listen)."""
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if receive_buffer:
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, receive_buffer)
            except OSError:  # not privileged: as much as net.core.rmem_max allows
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class _Endpoint:
    """The core as :class:`zgate_host.pump.Endpoint`: a flush writes the egress batch
    before handing over the UDP payloads."""

    def __init__(self, core: RelayCore, egress: PacketDevice | None) -> None:
        self.core = core
        self.egress = egress
        self.datagram_received = core.datagram_received
        self.handle_timer = core.handle_timer
        self.deadline = core.deadline

    def flush(self, now: float) -> Iterable[tuple[bytes, Address]]:
        packets = self.core.take_egress()
        if packets and self.egress is not None:
            self.egress.write_batch(packets)
        return self.core.flush(now)


class RelayPump:
    """Runs a :class:`RelayCore` on the event loop; also the face app.py and tests see
    (sessions, /status, revocation checks, housekeeping), each call followed by a flush."""

    def __init__(
        self,
        core: RelayCore,
        egress: PacketDevice | None,
        *,
        udp_offload: bool = True,
        clock: Callable[[], float] | None = None,
        queue: str = "fq-codel",
        aqm: AqmConfig | None = None,
        udp_receive_buffer: int = 0,
    ) -> None:
        self.core = core
        self.udp_receive_buffer = udp_receive_buffer
        self.egress = egress
        self.udp_offload = udp_offload
        self.clock = clock
        self.pump: Pump | None = None
        self.queue = queue
        fair = queue != "fifo"
        self.udp_queue: PacketQueue[tuple[bytes, Address]] | None = (
            make_queue(queue, INGRESS_LIMIT, aqm) if fair else None
        )
        self.egress_queue: PacketQueue[bytes] | None = (
            make_queue(queue, EGRESS_LIMIT, aqm) if fair else None
        )
        self._egress_turn_due = False
        self._drops_counted = {"aqm": 0, "overflow": 0}
        #: Per connection (by id), its DATAGRAM queue's drops already counted.
        self._conn_drops: dict[int, tuple[int, int]] = {}

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on UDP host:port; returns the bound address (port 0 picks one)."""
        sock = bind_udp(host, port, self.udp_receive_buffer)
        self.pump = pump = Pump(
            sock,
            _Endpoint(self.core, self.egress),
            clock=self.clock,
            gso=self.udp_offload,
            gro=self.udp_offload,
            ingress=self.udp_queue,
            ingress_budget=INGRESS_BUDGET,
            ingress_reads=INGRESS_READS,
        )
        if self.egress is not None:
            pump.add_device(self.egress.fileno(), self._egress_readable)
        host, port = pump.sockname()[:2]
        log.info("relay listening", extra={"address": f"{host}:{port}"})
        return host, port

    def _egress_readable(self) -> None:
        assert self.egress is not None and self.pump is not None
        queue = self.egress_queue
        if queue is None:
            packets = self.egress.read_batch(EGRESS_BATCH)
            if packets:
                self.core.egress_received(packets, self.pump.now)
            return
        now = self.pump.now
        for packet in self.egress.read_batch(EGRESS_READ):
            queue.push(packet, len(packet), flow_hash(packet), now)
        self._egress_serve(now)

    def _egress_serve(self, now: float) -> None:
        """Hand the core one budget of queued egress packets; come back next turn for more."""
        queue = self.egress_queue
        assert queue is not None and self.pump is not None
        batch = []
        for _ in range(EGRESS_BUDGET):
            packet = queue.pop(now)
            if packet is None:
                break
            batch.append(packet)
        if batch:
            self.core.egress_received(batch, now)
        if len(queue) and not self._egress_turn_due:
            self._egress_turn_due = True
            self.pump.loop.call_soon(self._egress_next_turn)

    def _egress_next_turn(self) -> None:
        self._egress_turn_due = False
        if self.pump is None or self.pump.closed:
            return
        self._egress_readable()
        self.pump.wake()

    def ingress_drops(self) -> dict[str, int]:
        """Packets the relay's own ingress queues dropped, by reason (aqm, overflow)."""
        drops = {"aqm": 0, "overflow": 0}
        for queue in (self.udp_queue, self.egress_queue):
            if queue is not None:
                for reason, n in queue.drops.items():
                    drops[reason] += n
        return drops

    def _now(self) -> float:
        assert self.pump is not None, "start() first"
        return self.pump.now

    def _wake(self) -> None:
        if self.pump is not None:
            self.pump.wake()

    async def close(self) -> None:
        """End every session and connection (telling the peers), then stop listening."""
        if self.pump is None:
            return
        self.core.close(self.pump.now)
        self.pump.wake()
        self.pump.close()

    # ------------------------------------------------------------- app's view

    @property
    def router(self) -> Router:
        """The core's router (the DNS service asks it which session holds an address)."""
        return self.core.router

    @property
    def sessions(self) -> list[RelaySession]:
        """All live sessions."""
        return self.core.sessions

    def status(self) -> dict[str, object]:
        """The /status snapshot (safe to call from the HTTP thread)."""
        return self.core.status()

    def check_revocations(self) -> int:
        """Re-read the CA/CRL if they changed and end the sessions of revoked identities;
        returns how many connections were closed."""
        verifier = self.core.verifier
        try:
            if verifier.reload_if_changed():
                self.core.metrics.crl_reloads.inc()
                log.info("CA/CRL reloaded")
        except PkiError as exc:
            log.error("CA/CRL file is invalid; keeping the previous one", extra={"error": str(exc)})
        closed = self.core.check_revocations(self._now())
        self._wake()
        return closed

    def end_session(self, session_id: str, reason: str) -> bool:
        """End the live session `session_id` now; False when there is none."""
        ended = self.core.end_session(session_id, reason, self._now())
        self._wake()
        return ended

    def tick(self) -> None:
        """Periodic housekeeping (about once a second)."""
        self.core.tick(self._now())
        self._count_ingress_drops()
        self._wake()

    def _count_ingress_drops(self) -> None:
        """Move what the queues dropped since the last tick into the drop metric: the
        ingress queues', and each live connection's DATAGRAM queue toward its agent (a
        connection that closed within the second takes its last drops with it)."""
        drops = self.core.metrics.drops
        for reason, total in self.ingress_drops().items():
            new = total - self._drops_counted[reason]
            if new:
                drops[f"queue_{reason}"] += new
                self._drops_counted[reason] = total
        seen: dict[int, tuple[int, int]] = {}
        for session in self.core.sessions:
            if session.server is None:
                continue
            quic = session.server.quic
            key = id(quic)
            if key in seen:
                continue  # several sessions on one connection
            stats = quic.stats()
            now = (stats.datagrams_dropped_aqm, stats.datagrams_dropped_overflow)
            aqm, overflow = self._conn_drops.get(key, (0, 0))
            drops["queue_aqm"] += now[0] - aqm
            drops["queue_overflow"] += now[1] - overflow
            seen[key] = now
        self._conn_drops = seen
