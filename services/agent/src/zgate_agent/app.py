"""The agent's life: connect, open the tunnel, move packets, reconnect with backoff.

The TUN device lives for the whole run, across reconnects, so applications keep their
sockets; while the tunnel is down its packets are dropped (and counted), never leaked
around the tunnel.

Each attempt is one UDP socket in a :class:`zgate_host.pump.Pump` driving one
:class:`~zgate_agent.link.ClientLink` (a QUIC connection of the chosen engine and its
CONNECT-IP session). The agent decides: when to give up and retry, routes and DNS, what to
answer a packet too big for the path.

Liveness (``--liveness``, on by default): once the tunnel is up, whatever the agent sends
must be answered or acknowledged by the relay (:mod:`zgate_agent.liveness`) within
``liveness`` seconds, probed with QUIC PINGs every quarter of it while an answer is due; an
idle link only sends a PING every ``--keepalive`` seconds, held to the same deadline. An
attempt must get a first answer within half the deadline. Otherwise the
relay counts as gone: the agent drops the connection at once (not after QUIC's idle
timeout), tries the next relay at once (:mod:`zgate_agent.relays`), and while no relay
answers retries on a short backoff (the ``backoff_lost_max`` setting). ``--liveness 0`` is the old
behaviour: a PING every ``--keepalive`` seconds and QUIC's idle timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from zgate_agent.dns import AgentDns
from zgate_agent.failures import describe_close, describe_timeout, loss_cause
from zgate_agent.link import ClientLink, PacketSink, TunnelInfo
from zgate_agent.liveness import Liveness
from zgate_agent.metrics import AgentMetrics
from zgate_agent.relays import Candidate, Rotation, candidates
from zgate_agent.routes import HostRoutes
from zgate_agent.settings import AgentSettings
from zgate_host.pump import Pump
from zgate_host.tun import PacketDevice
from zgate_proto.engines import get_engine
from zgate_proto.engines.base import Address, ClientConfig, QuicConn
from zgate_proto.fq import AqmConfig
from zgate_proto.icmp import packet_too_big
from zgate_proto.session import (
    ClientSession,
    PacketMode,
    RequestFailed,
    ResponseReceived,
    SessionError,
)

__all__ = ["Agent", "RelayQueryError", "TunnelError", "backoff_delays", "quiet_quic_logs"]

log = logging.getLogger("zgate.agent")


#: What a stateless reset from the relay means to the operator.
RESET_REASON = "the relay reset the connection (it restarted, or lost the connection's state)"


class TunnelError(Exception):
    """The tunnel could not be opened or was lost; the message says why. ``permanent``:
    retrying cannot help until someone fixes a file or the relay's PKI. ``cause``: one of
    :data:`zgate_agent.failures.LOSS_CAUSES`, for the metrics and the backoff."""

    def __init__(self, message: str, *, permanent: bool = False, cause: str = "error") -> None:
        super().__init__(message)
        self.permanent = permanent
        self.cause = "refused" if permanent else cause


class RelayQueryError(Exception):
    """A question to the relay (:meth:`Agent.ask_relay`) got no answer; the message says
    why: no tunnel, the relay did not answer in time, or the request failed."""


class _Demote(logging.Filter):
    """The QUIC engines log every connection error at warning ("Error: 298, reason: ..."):
    the agent says the same once, plainly, so their own lines go to debug."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


_DEMOTE = _Demote()
#: The loggers of the QUIC engines (both engines log as "quic").
_ENGINE_LOGGERS = ("quic",)


def quiet_quic_logs() -> None:
    """Send the QUIC engines' log lines to debug (shown only with --log-level debug)."""
    for name in _ENGINE_LOGGERS:
        logger = logging.getLogger(name)
        if _DEMOTE not in logger.filters:
            logger.addFilter(_DEMOTE)


def backoff_delays(initial: float, maximum: float, rng: random.Random) -> Any:
    """Exponential backoff with jitter: each delay is drawn in [d/2, d], d doubling up to
    ``maximum``, so agents restarted together do not reconnect in lockstep."""
    delay = initial
    while True:
        yield rng.uniform(delay / 2, delay)
        delay = min(maximum, delay * 2)


@dataclass
class _State:
    state: str = "starting"
    since: float = 0.0
    last_error: str | None = None
    attempts: int = 0
    info: TunnelInfo | None = None


class Agent:
    """Runs the tunnel over ``device`` until :meth:`stop`; ``configure_host`` applies the
    addresses and routes to the real TUN device (off for the in-memory device)."""

    #: What `zgate pki issue` makes for this side (named in hints about our certificate).
    pki_kind = "client"

    def __init__(
        self,
        settings: AgentSettings,
        device: PacketDevice,
        metrics: AgentMetrics,
        *,
        configure_host: bool = True,
        read_device: bool = True,
        manage_dns: bool = False,
    ) -> None:
        self.settings = settings
        #: Whether run() reads the device itself; off when something else reads it and
        #: hands packets to send_to_relay() (a connector with sessions to several relays).
        self.read_device = read_device
        self.device = device
        self.metrics = metrics
        self.configure_host = configure_host
        self._stop = asyncio.Event()
        self._link: ClientLink | None = None  # the live tunnel's
        self._pump: Pump | None = None
        #: Set by the link when its state changed, and by stop().
        self._changed = asyncio.Event()
        self._routes: HostRoutes | None = None
        self._status = _State(since=time.time())
        self.connected = asyncio.Event()
        self._was_connected = False
        self._announce = True  # log the next "connecting to" at info
        #: The host's resolver pointed at the relay (the agent's CLI; not connectors).
        self._dns = AgentDns(settings, device.name) if manage_dns and configure_host else None
        #: The relays to use, one at a time (see zgate_agent.relays).
        self._rotation = Rotation(candidates(settings.relay_hostports, {}))
        #: The loop's time when the last tunnel that was up was lost (None: none lost, or
        #: up again since).
        self._lost_at: float | None = None
        #: A tunnel has been up in this run (a relay lost then is retried on the short
        #: backoff; an agent that never got one keeps the usual one).
        self._had_tunnel = False
        #: The last failure said, and how many times in a row (see _failed).
        self._last_failure: str | None = None
        self._repeats = 0

    # ------------------------------------------------------------------ control

    def stop(self) -> None:
        """Ask the run loop to end (closes the tunnel, removes the routes)."""
        self._stop.set()
        self._changed.set()

    def status(self) -> dict[str, Any]:
        """A snapshot for `zgate-agent status` (read from the HTTP thread)."""
        s = self._status
        info = s.info
        return {
            "state": s.state,
            "since": s.since,
            "relay": self._rotation.current.where,
            "relays": [c.where for c in self._rotation.candidates],
            "liveness": self.settings.liveness,
            "device": self.device.name,
            "mode": info.mode.value if info else None,
            "quic_engine": self.settings.quic_engine,
            "addresses": [str(a) for a in info.addresses] if info else [],
            "routes": [str(p) for p in self._routes.routes] if self._routes else [],
            "attempts": s.attempts,
            "last_error": s.last_error,
            **({"dns": self._dns.status()} if self._dns is not None else {}),
        }

    async def ask_relay(self, method: str, path: str, *, timeout: float = 5.0) -> ResponseReceived:
        """Ask the relay a plain HTTP/3 question on the live tunnel's own connection (so
        the relay knows who asks from the client certificate) and await its answer.
        RelayQueryError when there is no tunnel, no answer within ``timeout`` seconds, or
        the request fails (the connection ends under it, the relay resets it)."""
        link, pump = self._link, self._pump
        if link is None or pump is None:
            raise RelayQueryError(f"not connected to the relay (state: {self._status.state})")
        try:
            stream_id = link.request(method, path)
        except SessionError as exc:
            raise RelayQueryError(f"cannot ask the relay: {exc}") from None
        pump.wake()
        try:
            async with asyncio.timeout(timeout):
                # The link wakes _changed when an answer (or anything else) arrived.
                while (answer := link.take_answer(stream_id)) is None:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise RelayQueryError(f"the relay did not answer within {timeout:g} s") from None
        if isinstance(answer, RequestFailed):
            raise RelayQueryError(f"the relay did not answer: {answer.reason}")
        return answer

    def _set_state(self, state: str, error: str | None = None) -> None:
        self._status.state = state
        self._status.since = time.time()
        if error is not None:
            self._status.last_error = error

    # --------------------------------------------------------------------- run

    async def run(self) -> None:
        """Connect and reconnect until stopped: transient failures (no answer, a lost
        tunnel) on the short backoff, permanent ones (certificates) on the long one."""
        loop = asyncio.get_running_loop()
        quiet_quic_logs()
        if self._dns is not None:
            self._dns.recover()  # what a crashed agent left, before anything else
        self._watch_device()
        transient, permanent, lost = self._backoffs()
        self._was_connected = False
        try:
            while not self._stop.is_set():
                self._status.attempts += 1
                if self._status.attempts > 1:
                    self.metrics.reconnects.inc()
                if self._rotation.round_start:
                    await self._resolve_relays()
                error = await self._attempt()
                if self._stop.is_set():
                    break
                if self._was_connected:
                    # A tunnel that came up resets the backoffs.
                    self._was_connected = False
                    transient, permanent, lost = self._backoffs()
                    self._announce = True
                    if self._lost_at is None:
                        self._lost_at = loop.time()
                if error is None:
                    continue
                self.metrics.losses.labels(error.cause).inc()
                self._announce = self._announce or error.permanent
                failed = self._rotation.current
                if self._rotation.failed():
                    delay = 0.0  # the next relay, at once
                elif error.permanent:
                    delay = next(permanent)
                elif self._had_tunnel and self.settings.liveness > 0 and error.cause != "refused":
                    # A relay that was there is gone: back as soon as one answers again.
                    delay = next(lost)
                else:
                    delay = next(transient)
                self._failed(error, delay, failed)
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), timeout=delay)
        finally:
            self._set_state("stopped")
            self.metrics.connected.set(0)
            if self.read_device:
                with contextlib.suppress(ValueError, OSError):
                    loop.remove_reader(self.device.fileno())
            if self._dns is not None:
                self._dns.restore()
            removed = [str(p) for p in self._routes.routes] if self._routes is not None else []
            if self._routes is not None:
                self._routes.remove()
            log.info(
                "stopped",
                extra={
                    "relay": self._rotation.current.where,
                    "device": self.device.name,
                    "removed": removed,
                },
            )

    def _backoffs(self) -> tuple[Any, Any, Any]:
        """Fresh delay sequences: transient failures, permanent ones, and (with liveness
        on) a relay lost or not answering: at once first, then short."""
        s = self.settings
        transient = backoff_delays(s.backoff_initial, s.backoff_max, random.Random())
        permanent = backoff_delays(s.backoff_permanent, s.backoff_permanent_max, random.Random())
        short = min(s.backoff_initial, s.backoff_lost_max)
        lost = itertools.chain([0.0], backoff_delays(short, s.backoff_lost_max, random.Random()))
        return transient, permanent, lost

    def _failed(self, error: TunnelError, delay: float, relay: Candidate) -> None:
        """One log line for a failed attempt: what went wrong (with the fix, when it is
        ours to make) and when the next attempt is, on which relay."""
        message = str(error) or type(error).__name__
        self._set_state("reconnecting", message)
        fields = {
            "relay": relay.where,
            "cause": error.cause,
            "permanent": error.permanent,
            "retry_in_seconds": round(delay, 2),
            "next_relay": self._rotation.current.where,
        }
        # The same failure again and again (a relay down for minutes, retried every second
        # or two once lost): a warning the 1st, 2nd, 4th, 8th... time, debug in between.
        self._repeats = self._repeats + 1 if message == self._last_failure else 1
        self._last_failure = message
        if self._repeats > 2:
            fields["times_in_a_row"] = self._repeats
        if error.permanent:
            log.error(message, extra=fields)
        elif self._repeats & (self._repeats - 1) == 0:
            log.warning(f"tunnel down: {message}", extra=fields)
        else:
            log.debug(f"tunnel down: {message}", extra=fields)

    async def _attempt(self) -> TunnelError | None:
        """One connection attempt, ended early (and cleaned up) when the agent is stopped;
        the error that ended it, or None."""
        attempt = asyncio.ensure_future(self._connect_once())
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({attempt, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not attempt.done():
                attempt.cancel()
                # Its cleanup closes the QUIC connection without waiting for the relay.
                await asyncio.wait({attempt})
        if attempt.cancelled():
            return None
        exc = attempt.exception()
        if exc is None or isinstance(exc, TunnelError):
            return exc
        if isinstance(exc, OSError | ssl.SSLError):
            return TunnelError(str(exc) or type(exc).__name__)
        raise exc

    def _where(self) -> str:
        return self._rotation.current.where

    async def _resolve_relays(self) -> None:
        """Resolve every relay name again (a name with several addresses gives several
        candidates), at the start of each round. Not while the host's resolver points
        into the tunnel (it is down): the addresses known are kept. A name that does not
        resolve stays one candidate, whose attempt says why."""
        if self._dns is not None and self._dns.active:
            return
        targets = self.settings.relay_hostports
        resolved: dict[tuple[str, int], list[ipaddress.IPv4Address | ipaddress.IPv6Address]] = {}
        for host, port in targets:
            try:
                async with asyncio.timeout(self.settings.connect_timeout):
                    resolved[(host, port)] = await self._resolve_all(host, port)
            except (OSError, TunnelError, TimeoutError) as exc:
                log.debug("cannot resolve a relay", extra={"relay": host, "error": str(exc)})
        self._rotation.replace(candidates(targets, resolved))

    async def _connect_once(self) -> None:
        """Connect, open the session, run it until stopped or lost. Every failure comes out
        as a TunnelError saying why (``permanent`` when retrying cannot help)."""
        s = self.settings
        relay = self._rotation.current
        host, port = relay.host, relay.port
        server_name = s.server_name or host
        self._set_state("connecting")
        # At info the first time, after a tunnel was up and before each (rare) retry of a
        # permanent failure; quick retries of a transient one at debug.
        level, self._announce = (logging.INFO if self._announce else logging.DEBUG), False
        log.log(
            level,
            f"connecting to {self._where()} (server name {server_name})",
            extra={
                "relay": self._where(),
                "server_name": server_name,
                "attempt": self._status.attempts,
            },
        )
        try:
            engine = get_engine(s.quic_engine)
        except (ImportError, ValueError) as exc:
            raise TunnelError(f"QUIC engine {s.quic_engine}: {exc}", permanent=True) from None
        link: ClientLink | None = None
        pump: Pump | None = None
        label: tuple[str, str] | None = None
        try:
            try:
                async with asyncio.timeout(s.connect_timeout):
                    relay_ip = relay.address or await self._resolve(host, port)
                    sock, addr = self._open(relay_ip, port)
                    try:
                        quic = engine.connect(
                            self._client_config(server_name),
                            addr,
                            asyncio.get_running_loop().time(),
                        )
                    except (OSError, ValueError, ssl.SSLError) as exc:
                        sock.close()
                        raise TunnelError(
                            f"cannot load --ca {s.ca}, --cert {s.cert} or --key {s.key}: {exc}",
                            permanent=True,
                        ) from None
                    link = self._new_link(quic, host, port)
                    pump = Pump(sock, link, gso=s.udp_offload)
                    pump.wake()  # the Initial
                    answer = self._first_answer(link, host, port)
                    try:
                        await self._until(link, lambda: link.handshake_done)
                        await self._until(link, lambda: link.ready)
                    finally:
                        answer.cancel()
            except TimeoutError:
                started = link is not None and link.handshake_done
                answered = link is not None and link.last_rx is not None
                raise TunnelError(
                    describe_timeout(host, port, s.connect_timeout, handshake_done=started),
                    cause="timeout" if answered else "unreachable",
                ) from None
            except TunnelError as exc:
                raise self._explain(exc, link) from None
            except socket.gaierror as exc:
                raise TunnelError(
                    f"cannot resolve the relay's name {host}: {exc.strerror or exc}"
                ) from None
            except OSError as exc:
                raise TunnelError(
                    f"cannot reach the relay at {self._where()}: {exc.strerror or exc}",
                    cause="unreachable",
                ) from None
            assert link is not None and pump is not None
            label = (relay.target, str(relay_ip))
            self.metrics.relay.labels(*label).set(1)
            await self._session(link, pump, relay, relay_ip)
        finally:
            if label is not None:
                self.metrics.relay.remove(*label)
            self._link = None
            self._pump = None
            self.connected.clear()
            self.metrics.connected.set(0)
            if pump is not None:
                # CONNECTION_CLOSE at once (unless closed already), without QUIC's closing
                # period: a relay that does not answer would hold the stop for seconds.
                assert link is not None
                with contextlib.suppress(Exception):
                    link.close("agent stopping")
                    pump.wake()
                pump.close()
                self._watch_device()

    def _new_link(self, quic: QuicConn, host: str, port: int) -> ClientLink:
        s = self.settings
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        session = ClientSession(quic, authority=authority, mode=s.mode, fallback=s.fallback)
        self._changed.clear()
        return ClientLink(quic, session, self.packet_sink(), self.metrics, notify=self._changed.set)

    def packet_sink(self) -> PacketSink:
        """Where the relay's packets go: the device (a connector also notes who sent them)."""
        return self.device

    async def _until(self, link: ClientLink, done: Callable[[], bool]) -> None:
        """Until ``done()``; a TunnelError if the attempt fails first (see _explain)."""
        while not done():
            if link.failure is not None:
                raise TunnelError(link.failure, cause=self._cause(link))
            self._changed.clear()
            await self._changed.wait()

    @staticmethod
    def _cause(link: ClientLink) -> str:
        """Why the link ended, as the metrics count it."""
        if link.gave_up is not None:
            return link.gave_up
        return loss_cause(link.close_info, refused=link.refused)

    def _first_answer(self, link: ClientLink, host: str, port: int) -> asyncio.Future[None]:
        """With liveness on: give the attempt up when the relay has not answered at all
        within half the liveness deadline (at least 0.5 s): the next relay, or the same
        again with a fresh Initial, is tried then instead of at the connect timeout, and
        instead of waiting for the engine's doubling retransmissions of the Initial (a
        relay that starts listening is answered within about that much). Cancel it once
        the tunnel is up."""
        liveness = self.settings.liveness
        seconds = max(liveness / 2, 0.5) if liveness > 0 else 0.0

        async def watch() -> None:
            await asyncio.sleep(seconds)
            if link.last_rx is None:
                why = describe_timeout(host, port, seconds, handshake_done=False)
                link.give_up(why, "unreachable")

        if seconds <= 0:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        return asyncio.ensure_future(watch())

    def _explain(self, error: TunnelError, link: ClientLink | None) -> TunnelError:
        """Turn a connection closed while opening into what the operator should know; a
        session the relay refused says why as it is."""
        close = link.close_info if link is not None else None
        if close is None or link is None:
            return error
        s = self.settings
        host = self._rotation.current.host
        message, permanent = describe_close(
            close, ca=s.ca, cert=s.cert, server_name=s.server_name or host, kind=self.pki_kind
        )
        return TunnelError(message, permanent=permanent, cause=self._cause(link))

    def _open(
        self, relay_ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int
    ) -> tuple[socket.socket, Address]:
        """A UDP socket for the relay (dual-stack when the host has IPv6, the relay's IPv4
        address mapped into it) and the relay's address as that socket names it."""
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        except OSError:  # no IPv6 on this host
            if relay_ip.version == 6:
                raise
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            if sock.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.bind(("::", 0, 0, 0))
                mapped = f"::ffff:{relay_ip}" if relay_ip.version == 4 else str(relay_ip)
                addr: Address = (mapped, port, 0, 0)
            else:
                sock.bind(("0.0.0.0", 0))
                addr = (str(relay_ip), port)
            sock.setblocking(False)
            # A route lookup: no route to the relay is said at once (network unreachable),
            # not as a silent connect timeout (QUIC's send errors go unreported).
            with socket.socket(sock.family, socket.SOCK_DGRAM) as probe:
                probe.connect(addr)
        except OSError:
            sock.close()
            raise
        return sock, addr

    def _client_config(self, server_name: str) -> ClientConfig:
        s = self.settings
        return ClientConfig(
            server_name=server_name,
            ca_file=s.ca,
            cert_file=s.cert,
            key_file=s.key,
            idle_timeout=s.idle_timeout,
            max_datagram_size=s.max_datagram_size,
            datagram_queue=s.datagram_queue,
            datagram_discipline=s.queue,
            aqm=AqmConfig(target=s.aqm_target_ms / 1000, interval=s.aqm_interval_ms / 1000),
        )

    async def _session(
        self,
        link: ClientLink,
        pump: Pump,
        relay: Candidate,
        relay_ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
    ) -> None:
        info = link.info()
        if info.mode is not self.settings.mode:
            log.warning(
                f"relay offers no HTTP datagrams: falling back to {info.mode.value} mode",
                extra={"relay": self._where()},
            )
        if self.configure_host:
            if self._routes is None:
                self._routes = HostRoutes(self.device.name, [], self.settings.full_tunnel)
            dns_routes = self._dns.extra_routes(info) if self._dns is not None else []
            # Every relay known is kept outside the tunnel: the next one must be reachable
            # while this tunnel's routes stay up after it is lost.
            relay_ips = [relay_ip, *(c.address for c in self._rotation.candidates if c.address)]
            self._routes.apply(info.addresses, [*info.routes, *dns_routes], relay_ips)
            if self._dns is not None:
                self._dns.tunnel_up(info)
        self._status.info = info
        self._link = link
        self._pump = pump
        self.session_opened(link, info)
        pump.wake()
        if self.read_device:
            pump.add_device(self.device.fileno(), self._device_readable)
        self._set_state("connected")
        self._was_connected = self._had_tunnel = True
        self._rotation.connected()
        self.metrics.connected.set(1)
        self.connected.set()
        now = asyncio.get_running_loop().time()
        back_in = None
        if self._lost_at is not None:
            back_in = now - self._lost_at
            self.metrics.reconnect_seconds.observe(back_in)
            self._lost_at = None
        log.info(
            "tunnel up",
            extra={
                "relay": relay.where,
                "mode": info.mode.value,
                "addresses": [str(a) for a in info.addresses],
                **({"seconds_down": round(back_in, 3)} if back_in is not None else {}),
            },
        )
        if self.settings.liveness > 0:
            watcher = asyncio.create_task(self._liveness(link, pump))
        else:
            watcher = asyncio.create_task(self._keepalive(link, pump))
        try:
            while link.failure is None and not self._stop.is_set():
                self._changed.clear()
                await self._changed.wait()
            if link.failure is not None:
                self._lost_at = asyncio.get_running_loop().time()
                cause = self._cause(link)
                why = RESET_REASON if cause == "reset" else link.failure
                raise TunnelError(f"tunnel lost: {why}", cause=cause)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _keepalive(self, link: ClientLink, pump: Pump) -> None:
        """Liveness off: a PING every --keepalive seconds; QUIC's idle timeout notices a
        relay gone."""
        while True:
            await asyncio.sleep(self.settings.keepalive)
            link.ping()
            pump.wake()

    async def _liveness(self, link: ClientLink, pump: Pump) -> None:
        """Liveness on: probe the relay while something we sent is unanswered, and give it
        up once that has lasted --liveness seconds; an idle link only sends the keepalive
        (see zgate_agent.liveness)."""
        loop = asyncio.get_running_loop()
        s = self.settings
        liveness = Liveness(
            s.liveness,
            loop.time(),
            probe_every=min(s.liveness / 4, s.keepalive),
            keepalive=s.keepalive,
            probe_idle=s.liveness_probe_idle,
        )
        link.ack_watch = liveness.probe_every / 2
        while True:
            liveness.observe(link.last_heard, link.waiting_since)
            check = liveness.check(loop.time())
            if check.expired:
                link.give_up(f"nothing heard from the relay for {liveness.deadline:g} s")
                return
            if check.probe:
                link.ping()
                pump.wake()
            await asyncio.sleep(max(0.0, check.next_at - loop.time()))

    @staticmethod
    async def _resolve(host: str, port: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """The first address of the relay's name (or the address given)."""
        addresses = await Agent._resolve_all(host, port)
        return addresses[0]

    @staticmethod
    async def _resolve_all(
        host: str, port: int
    ) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        """Every address of the relay's name, in the resolver's order (or the address
        given)."""
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        if not infos:
            raise TunnelError(f"cannot resolve relay host {host!r}")
        return list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))

    # --------------------------------------------------------------- packet path

    def _watch_device(self) -> None:
        """Read the device while no tunnel's pump does (its packets are dropped then)."""
        if self.read_device:
            asyncio.get_running_loop().add_reader(self.device.fileno(), self._device_readable)

    def _device_readable(self) -> None:
        packets = self.device.read_batch(64)
        link = self._link
        if link is None:
            self.metrics.drops["not_connected"] += len(packets)
            return
        self._to_link(link, packets)  # the pump flushes after this callback

    def send_to_relay(self, packets: list[bytes]) -> None:
        """Send packets read from the device by someone else (a connector group) into the
        tunnel, at once (dropped and counted while it is down)."""
        link, pump = self._link, self._pump
        if link is None or pump is None:
            self.metrics.drops["not_connected"] += len(packets)
            return
        self._to_link(link, packets)
        pump.wake()

    def _to_link(self, link: ClientLink, packets: list[bytes]) -> None:
        pump = self._pump
        too_big = link.send_packets(packets, pump.now if pump is not None else None)
        if too_big:
            mtu = link.max_packet
            for packet in too_big:
                self._too_big(packet, mtu)

    def _too_big(self, packet: bytes, mtu: int) -> None:
        info = self._status.info
        if info is None:
            return
        version = packet[0] >> 4
        own = next((a.network_address for a in info.addresses if a.version == version), None)
        if own is None:
            return
        icmp = packet_too_big(packet, own, mtu)
        if icmp is not None:
            self.device.write(icmp)

    def session_opened(self, link: ClientLink, info: TunnelInfo) -> None:
        """Called once a session is open and the host configured; nothing for an agent
        (a connector advertises its site here; the caller flushes afterwards)."""

    @property
    def mode(self) -> PacketMode | None:
        """The packet mode of the live tunnel, if any."""
        info = self._status.info
        return info.mode if info else None

    @property
    def link(self) -> ClientLink | None:
        """The live tunnel's link, if any (its session, QUIC connection and path limits)."""
        return self._link

    def wake(self) -> None:
        """Send now what the live tunnel's link has queued (for whoever wrote to it
        directly: its session's capsules, a QUIC ping)."""
        if self._pump is not None:
            self._pump.wake()
