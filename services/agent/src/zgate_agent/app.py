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

from aioquic.asyncio.client import connect
from aioquic.quic.configuration import QuicConfiguration

from zgate_agent.metrics import AgentMetrics
from zgate_agent.routes import HostRoutes
from zgate_agent.settings import AgentSettings
from zgate_agent.tunnel import TunnelError, TunnelInfo, TunnelProtocol
from zgate_host.sockets import enlarge_udp_buffers
from zgate_host.tun import PacketDevice
from zgate_proto.h3 import PacketMode, SendStatus
from zgate_proto.icmp import packet_too_big

__all__ = ["Agent", "backoff_delays"]

log = logging.getLogger("zgate.agent")


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

    def __init__(
        self,
        settings: AgentSettings,
        device: PacketDevice,
        metrics: AgentMetrics,
        *,
        configure_host: bool = True,
        read_device: bool = True,
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
        }

    def _set_state(self, state: str, error: str | None = None) -> None:
        self._status.state = state
        self._status.since = time.time()
        if error is not None:
            self._status.last_error = error

    # --------------------------------------------------------------------- run

    async def run(self) -> None:
        """Connect and reconnect until stopped."""
        loop = asyncio.get_running_loop()
        if self.read_device:
            loop.add_reader(self.device.fileno(), self._device_readable)
            self._reader_installed = True
        delays = backoff_delays(
            self.settings.backoff_initial, self.settings.backoff_max, random.Random()
        )
        try:
            while not self._stop.is_set():
                self._status.attempts += 1
                if self._status.attempts > 1:
                    self.metrics.reconnects.inc()
                try:
                    await self._connect_once()
                    delays = backoff_delays(
                        self.settings.backoff_initial, self.settings.backoff_max, random.Random()
                    )
                except (TunnelError, ConnectionError, OSError, ssl.SSLError) as exc:
                    self._set_state("reconnecting", str(exc) or type(exc).__name__)
                    log.warning("tunnel down", extra={"error": str(exc) or type(exc).__name__})
                if self._stop.is_set():
                    break
                delay = next(delays)
                self._set_state("reconnecting")
                log.info("reconnecting", extra={"in_seconds": round(delay, 2)})
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=delay)
        finally:
            self._set_state("stopped")
            self.metrics.connected.set(0)
            if self._reader_installed:
                loop.remove_reader(self.device.fileno())
            if self._routes is not None:
                self._routes.remove()

    async def _connect_once(self) -> None:
        host, port = self.settings.relay_address
        self._set_state("connecting")
        configuration = self._quic_configuration(host)
        made: list[TunnelProtocol] = []

        def create_protocol(*args: Any, **kwargs: Any) -> TunnelProtocol:
            protocol = TunnelProtocol(*args, **kwargs)
            protocol.udp_offload = self.settings.udp_offload
            made.append(protocol)
            return protocol

        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                relay_ip = await self._resolve(host, port)
                manager = connect(
                    str(relay_ip),
                    port,
                    configuration=configuration,
                    create_protocol=create_protocol,
                )
                protocol = await manager.__aenter__()
        except ConnectionError as exc:
            # aioquic says only "ConnectionError"; the TLS alert the relay sent says why.
            close = made[0]._quic._close_event if made else None
            reason = close.reason_phrase if close and close.reason_phrase else "handshake failed"
            raise TunnelError(f"the relay refused the connection: {reason}") from exc
        try:
            assert isinstance(protocol, TunnelProtocol)
            if protocol._transport is not None:
                enlarge_udp_buffers(protocol._transport.get_extra_info("socket"))
            await self._session(protocol, host, port, relay_ip)
        finally:
            self._protocol = None
            self.connected.clear()
            self.metrics.connected.set(0)
            await manager.__aexit__(None, None, None)

    async def _session(
        self,
        protocol: TunnelProtocol,
        host: str,
        port: int,
        relay_ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
    ) -> None:
        protocol.on_packet = self._packet_from_relay
        protocol.on_batch_end = self._flush_device
        protocol.on_unknown_context = self._unknown_context
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        info = await protocol.open_session(
            authority,
            self.settings.mode,
            fallback=self.settings.fallback,
            max_queued=self.settings.datagram_queue,
            timeout=self.settings.connect_timeout,
        )
        if self.configure_host:
            if self._routes is None:
                self._routes = HostRoutes(self.device.name, relay_ip, self.settings.full_tunnel)
            self._routes.apply(info.addresses, info.routes)
        self.session_opened(protocol, info)
        self._status.info = info
        self._protocol = protocol
        self._set_state("connected")
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
        try:
            stop = asyncio.ensure_future(self._stop.wait())
            lost = asyncio.ensure_future(protocol.terminated.wait())
            await asyncio.wait({stop, lost}, return_when=asyncio.FIRST_COMPLETED)
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
