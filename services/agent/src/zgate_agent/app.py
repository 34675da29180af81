"""The agent's life: connect, open the tunnel, move packets, reconnect with backoff.

The TUN device lives for the whole run, across reconnects, so applications keep their
sockets; while the tunnel is down its packets are dropped (and counted), never leaked
around the tunnel.

Each attempt is one UDP socket in a :class:`zgate_host.pump.Pump` driving one
:class:`~zgate_agent.link.ClientLink` (a QUIC connection of the chosen engine and its
CONNECT-IP session). The agent decides: when to give up and retry, routes and DNS, what to
answer a packet too big for the path.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from zgate_agent.dns import AgentDns
from zgate_agent.failures import describe_close, describe_timeout
from zgate_agent.link import ClientLink, PacketSink, TunnelInfo
from zgate_agent.metrics import AgentMetrics
from zgate_agent.routes import HostRoutes
from zgate_agent.settings import AgentSettings
from zgate_host.pump import Pump
from zgate_host.tun import PacketDevice
from zgate_proto.engines import get_engine
from zgate_proto.engines.base import Address, ClientConfig, QuicConn
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


class TunnelError(Exception):
    """The tunnel could not be opened or was lost; the message says why. ``permanent``:
    retrying cannot help until someone fixes a file or the relay's PKI."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


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
        self._relay_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None

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
            "relay": self.settings.relay,
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
        s = self.settings
        transient = backoff_delays(s.backoff_initial, s.backoff_max, random.Random())
        permanent = backoff_delays(s.backoff_permanent, s.backoff_permanent_max, random.Random())
        self._was_connected = False
        try:
            while not self._stop.is_set():
                self._status.attempts += 1
                if self._status.attempts > 1:
                    self.metrics.reconnects.inc()
                error = await self._attempt()
                if self._stop.is_set():
                    break
                if self._was_connected:
                    # A tunnel that came up resets both backoffs.
                    self._was_connected = False
                    transient = backoff_delays(s.backoff_initial, s.backoff_max, random.Random())
                    permanent = backoff_delays(
                        s.backoff_permanent, s.backoff_permanent_max, random.Random()
                    )
                    self._announce = True
                if error is None:
                    continue
                self._announce = self._announce or error.permanent
                delay = next(permanent if error.permanent else transient)
                self._failed(error, delay)
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
                    "relay": self.settings.relay,
                    "device": self.device.name,
                    "removed": removed,
                },
            )

    def _failed(self, error: TunnelError, delay: float) -> None:
        """One log line for a failed attempt: what went wrong (with the fix, when it is
        ours to make) and when the next attempt is."""
        message = str(error) or type(error).__name__
        self._set_state("reconnecting", message)
        fields = {
            "relay": self.settings.relay,
            "permanent": error.permanent,
            "retry_in_seconds": round(delay, 1),
        }
        if error.permanent:
            log.error(message, extra=fields)
        else:
            log.warning(f"tunnel down: {message}", extra=fields)

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
        host, port = self.settings.relay_address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def _connect_once(self) -> None:
        """Connect, open the session, run it until stopped or lost. Every failure comes out
        as a TunnelError saying why (``permanent`` when retrying cannot help)."""
        s = self.settings
        host, port = s.relay_address
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
        try:
            try:
                async with asyncio.timeout(s.connect_timeout):
                    relay_ip = await self._relay_address(host, port)
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
                    await self._until(link, lambda: link.handshake_done)
                    await self._until(link, lambda: link.ready)
            except TimeoutError:
                started = link is not None and link.handshake_done
                raise TunnelError(
                    describe_timeout(host, port, s.connect_timeout, handshake_done=started)
                ) from None
            except TunnelError as exc:
                raise self._explain(exc, link) from None
            except socket.gaierror as exc:
                raise TunnelError(
                    f"cannot resolve the relay's name {host}: {exc.strerror or exc}"
                ) from None
            except OSError as exc:
                raise TunnelError(
                    f"cannot reach the relay at {self._where()}: {exc.strerror or exc}"
                ) from None
            assert link is not None and pump is not None
            await self._session(link, pump, host, port, relay_ip)
        finally:
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
                raise TunnelError(link.failure)
            self._changed.clear()
            await self._changed.wait()

    def _explain(self, error: TunnelError, link: ClientLink | None) -> TunnelError:
        """Turn a connection closed while opening into what the operator should know; a
        session the relay refused says why as it is."""
        close = link.close_info if link is not None else None
        if close is None:
            return error
        s = self.settings
        host, _ = s.relay_address
        message, permanent = describe_close(
            close, ca=s.ca, cert=s.cert, server_name=s.server_name or host, kind=self.pki_kind
        )
        return TunnelError(message, permanent=permanent)

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
        )

    async def _session(
        self,
        link: ClientLink,
        pump: Pump,
        host: str,
        port: int,
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
                self._routes = HostRoutes(self.device.name, relay_ip, self.settings.full_tunnel)
            dns_routes = self._dns.extra_routes(info) if self._dns is not None else []
            self._routes.apply(info.addresses, [*info.routes, *dns_routes])
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
        self._was_connected = True
        self.metrics.connected.set(1)
        self.connected.set()
        log.info(
            "tunnel up",
            extra={
                "relay": f"{host}:{port}",
                "mode": info.mode.value,
                "addresses": [str(a) for a in info.addresses],
            },
        )
        keepalive = asyncio.create_task(self._keepalive(link, pump))
        try:
            while link.failure is None and not self._stop.is_set():
                self._changed.clear()
                await self._changed.wait()
            if link.failure is not None:
                raise TunnelError(f"tunnel lost: {link.failure}")
        finally:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keepalive

    async def _keepalive(self, link: ClientLink, pump: Pump) -> None:
        while True:
            await asyncio.sleep(self.settings.keepalive)
            link.ping()
            pump.wake()

    async def _relay_address(
        self, host: str, port: int
    ) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """The relay's address. Once the host's resolver points at the relay's DNS, a
        reconnect reuses the address it had: that resolver is behind the tunnel, which is
        down (and the route kept outside the tunnel is the one to that address)."""
        if self._relay_ip is not None and self._dns is not None and self._dns.active:
            return self._relay_ip
        self._relay_ip = await self._resolve(host, port)
        return self._relay_ip

    @staticmethod
    async def _resolve(host: str, port: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        try:
            return ipaddress.ip_address(host)
        except ValueError:
            pass
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        if not infos:
            raise TunnelError(f"cannot resolve relay host {host!r}")
        return ipaddress.ip_address(infos[0][4][0])

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
        too_big = link.send_packets(packets)
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
