"""The agent's life: connect, open the tunnel, move packets, reconnect with backoff.

The TUN device lives for the whole run, across reconnects, so applications keep their
sockets; while the tunnel is down its packets are dropped (and counted), never leaked
around the tunnel.
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
from dataclasses import dataclass
from typing import Any

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from zgate_agent.dns import AgentDns
from zgate_agent.failures import describe_close, describe_timeout
from zgate_agent.metrics import AgentMetrics
from zgate_agent.routes import HostRoutes
from zgate_agent.settings import AgentSettings
from zgate_agent.tunnel import TunnelError, TunnelInfo, TunnelProtocol
from zgate_host.sockets import enlarge_udp_buffers
from zgate_host.tun import PacketDevice
from zgate_proto.h3 import PacketMode, SendStatus
from zgate_proto.icmp import packet_too_big

__all__ = ["Agent", "backoff_delays", "quiet_aioquic"]

log = logging.getLogger("zgate.agent")


class _Demote(logging.Filter):
    """aioquic logs every connection error at warning ("Error: 298, reason: ..."): the agent
    says the same once, plainly, so aioquic's own lines go to debug."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger("quic").isEnabledFor(logging.DEBUG)


_DEMOTE = _Demote()


def quiet_aioquic() -> None:
    """Send aioquic's log lines to debug (shown only with --log-level debug)."""
    quic = logging.getLogger("quic")
    if _DEMOTE not in quic.filters:
        quic.addFilter(_DEMOTE)


def _discard(protocol: TunnelProtocol, transport: asyncio.DatagramTransport) -> None:
    """Close a connection at once: send CONNECTION_CLOSE (unless it is closed already),
    stop its timers and close the socket, without QUIC's closing period."""
    if protocol._quic._close_event is None:
        with contextlib.suppress(Exception):
            protocol.close(error_code=0, reason_phrase="agent stopping")
    for handle in (protocol._timer, protocol._transmit_task):
        if handle is not None:
            handle.cancel()
    protocol._timer = None
    protocol._transmit_task = None
    transport.close()


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
        self._protocol: TunnelProtocol | None = None
        self._device_out: list[bytes] = []  # packets from the relay, this batch
        self._routes: HostRoutes | None = None
        self._status = _State(since=time.time())
        self.connected = asyncio.Event()
        self._reader_installed = False
        self._was_connected = False
        self._announce = True  # log the next "connecting to" at info
        #: The host's resolver pointed at the relay (the agent's CLI; not connectors).
        self._dns = AgentDns(settings, device.name) if manage_dns and configure_host else None
        self._relay_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None

    # ------------------------------------------------------------------ control

    def stop(self) -> None:
        """Ask the run loop to end (closes the tunnel, removes the routes)."""
        self._stop.set()

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
            "addresses": [str(a) for a in info.addresses] if info else [],
            "routes": [str(p) for p in self._routes.routes] if self._routes else [],
            "attempts": s.attempts,
            "last_error": s.last_error,
            **({"dns": self._dns.status()} if self._dns is not None else {}),
        }

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
        quiet_aioquic()
        if self._dns is not None:
            self._dns.recover()  # what a crashed agent left, before anything else
        if self.read_device:
            loop.add_reader(self.device.fileno(), self._device_readable)
            self._reader_installed = True
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
            if self._reader_installed:
                loop.remove_reader(self.device.fileno())
                self._reader_installed = False
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
        opened: list[tuple[TunnelProtocol, asyncio.DatagramTransport]] = []
        try:
            try:
                configuration = self._quic_configuration(host)
            except (OSError, ValueError, ssl.SSLError) as exc:
                raise TunnelError(
                    f"cannot load --ca {s.ca}, --cert {s.cert} or --key {s.key}: {exc}",
                    permanent=True,
                ) from None
            try:
                async with asyncio.timeout(s.connect_timeout):
                    relay_ip = await self._relay_address(host, port)
                    opened.append(await self._open(relay_ip, port, configuration))
                    protocol = opened[0][0]
                    await self._handshake(protocol)
                    info = await self._open_session(protocol, host, port)
            except TimeoutError:
                started = bool(opened) and opened[0][0].handshake_done.is_set()
                raise TunnelError(
                    describe_timeout(host, port, s.connect_timeout, handshake_done=started)
                ) from None
            except TunnelError as exc:
                raise self._explain(exc, opened[0][0] if opened else None) from None
            except socket.gaierror as exc:
                raise TunnelError(
                    f"cannot resolve the relay's name {host}: {exc.strerror or exc}"
                ) from None
            except OSError as exc:
                raise TunnelError(
                    f"cannot reach the relay at {self._where()}: {exc.strerror or exc}"
                ) from None
            await self._session(protocol, info, host, port, relay_ip)
        finally:
            self._protocol = None
            self.connected.clear()
            self.metrics.connected.set(0)
            for protocol, transport in opened:
                _discard(protocol, transport)

    def _explain(self, error: TunnelError, protocol: TunnelProtocol | None) -> TunnelError:
        """Turn a connection closed while opening into what the operator should know."""
        close = protocol.close_info if protocol is not None else None
        if close is None:
            return error
        s = self.settings
        host, _ = s.relay_address
        message, permanent = describe_close(
            close, ca=s.ca, cert=s.cert, server_name=s.server_name or host, kind=self.pki_kind
        )
        return TunnelError(message, permanent=permanent)

    async def _open(
        self,
        relay_ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
        port: int,
        configuration: QuicConfiguration,
    ) -> tuple[TunnelProtocol, asyncio.DatagramTransport]:
        """A UDP socket and a QUIC connection to the relay, its handshake started.

        Not aioquic's ``connect()``: leaving it early (a timeout, a stop) waits out QUIC's
        closing period, seconds against a relay that does not answer, and leaves a future
        whose exception nobody retrieves."""
        loop = asyncio.get_running_loop()
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
                addr: tuple[Any, ...] = (mapped, port, 0, 0)
            else:
                sock.bind(("0.0.0.0", 0))
                addr = (str(relay_ip), port)
            sock.setblocking(False)
            enlarge_udp_buffers(sock)
            # A route lookup: no route to the relay is said at once (network unreachable),
            # not as a silent connect timeout (QUIC's send errors go unreported).
            with socket.socket(sock.family, socket.SOCK_DGRAM) as probe:
                probe.connect(addr)
        except OSError:
            sock.close()
            raise
        connection = QuicConnection(configuration=configuration)

        def create_protocol() -> TunnelProtocol:
            protocol = TunnelProtocol(connection)
            protocol.udp_offload = self.settings.udp_offload
            return protocol

        transport, protocol = await loop.create_datagram_endpoint(create_protocol, sock=sock)
        protocol.connect(addr)
        return protocol, transport

    @staticmethod
    async def _handshake(protocol: TunnelProtocol) -> None:
        """Until our side of the TLS handshake completes, or the connection closes."""
        done = asyncio.ensure_future(protocol.handshake_done.wait())
        closed = asyncio.ensure_future(protocol.terminated.wait())
        try:
            await asyncio.wait({done, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            done.cancel()
            closed.cancel()
        if protocol.terminated.is_set():
            raise TunnelError(f"the handshake with the relay failed: {protocol.close_reason}")

    async def _open_session(self, protocol: TunnelProtocol, host: str, port: int) -> TunnelInfo:
        protocol.on_packet = self._packet_from_relay
        protocol.on_batch_end = self._flush_device
        protocol.on_unknown_context = self._unknown_context
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return await protocol.open_session(
            authority,
            self.settings.mode,
            fallback=self.settings.fallback,
            max_queued=self.settings.datagram_queue,
            timeout=self.settings.connect_timeout,
        )

    async def _session(
        self,
        protocol: TunnelProtocol,
        info: TunnelInfo,
        host: str,
        port: int,
        relay_ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
    ) -> None:
        if self.configure_host:
            if self._routes is None:
                self._routes = HostRoutes(self.device.name, relay_ip, self.settings.full_tunnel)
            dns_routes = self._dns.extra_routes(info) if self._dns is not None else []
            self._routes.apply(info.addresses, [*info.routes, *dns_routes])
            if self._dns is not None:
                self._dns.tunnel_up(info)
        self.session_opened(protocol, info)
        self._status.info = info
        self._protocol = protocol
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
        keepalive = asyncio.create_task(self._keepalive(protocol))
        stop = asyncio.ensure_future(self._stop.wait())
        lost = asyncio.ensure_future(protocol.terminated.wait())
        try:
            try:
                await asyncio.wait({stop, lost}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
                lost.cancel()
            if protocol.terminated.is_set():
                raise TunnelError(f"tunnel lost: {protocol.close_reason}")
            if protocol.stream is not None:
                protocol.stream.close()
            protocol.close(error_code=0, reason_phrase="agent stopping")
        finally:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keepalive

    async def _keepalive(self, protocol: TunnelProtocol) -> None:
        while True:
            await asyncio.sleep(self.settings.keepalive)
            with contextlib.suppress(Exception):
                protocol._quic.send_ping(0)
                protocol.transmit()

    def _quic_configuration(self, host: str) -> QuicConfiguration:
        s = self.settings
        configuration = QuicConfiguration(
            is_client=True,
            alpn_protocols=["h3"],
            max_datagram_frame_size=65536,
            max_datagram_size=s.max_datagram_size,
            idle_timeout=s.idle_timeout,
            server_name=s.server_name or host,
            verify_mode=ssl.CERT_REQUIRED,
        )
        configuration.load_verify_locations(cafile=str(s.ca))
        configuration.load_cert_chain(str(s.cert), str(s.key))
        return configuration

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

    def _device_readable(self) -> None:
        self.send_to_relay(self.device.read_batch(64))

    def send_to_relay(self, packets: list[bytes]) -> None:
        """Send packets read from the device into the tunnel (dropped and counted while it
        is down)."""
        protocol = self._protocol
        m = self.metrics
        if protocol is None or protocol.stream is None:
            m.drops["not_connected"] += len(packets)
            return
        stream = protocol.stream
        sent = 0
        for packet in packets:
            status = stream.send_packet(packet)
            if status is SendStatus.SENT:
                sent += 1
                m.bytes["to_relay"] += len(packet)
            elif status is SendStatus.TOO_BIG:
                m.drops["too_big"] += 1
                self._too_big(packet, stream.max_datagram_packet)
            elif status is SendStatus.QUEUE_FULL:
                m.drops["queue_full"] += 1
            else:
                m.drops["not_connected"] += 1
        if sent:
            m.packets["to_relay"] += sent
            protocol.transmit()

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

    def _unknown_context(self) -> None:
        self.metrics.drops["unknown_context"] += 1

    def _packet_from_relay(self, packet: bytes) -> None:
        self.metrics.packets["from_relay"] += 1
        self.metrics.bytes["from_relay"] += len(packet)
        self._device_out.append(packet)  # written by _flush_device, before each transmit

    def _flush_device(self) -> None:
        """Write what the relay sent in this batch to the TUN device, TCP segments joined."""
        if self._device_out:
            out, self._device_out = self._device_out, []
            self.device.write_batch(out)

    def session_opened(self, protocol: TunnelProtocol, info: TunnelInfo) -> None:
        """Called once a session is open and the host configured; nothing for an agent
        (a connector advertises its site here)."""

    @property
    def mode(self) -> PacketMode | None:
        """The packet mode of the live tunnel, if any."""
        info = self._status.info
        return info.mode if info else None
