"""The connector: an agent session that serves a site instead of reaching out from a device.

Once the session is open it advertises the site's prefixes (ROUTE_ADVERTISEMENT, RFC 9484
§4.7.3); the relay installs the ones this connector's id may serve and sends it the agents'
packets for them. Those leave the TUN device into the site, masqueraded to the connector's
own site address (nftables table ``inet zgate_connector``), so site hosts need no route back;
replies come back through the TUN device (routes for the agents' pool, which the relay
advertises) and travel back on the same session. Reconnecting, status and metrics are the
agent's.

With several relays (``relays``), a :class:`ConnectorGroup` keeps one session per relay on
one TUN device: each relay's agents reach the site through their own relay, and a reply
goes back through the relay its agent's packets came from. A relay name with several
addresses gets one session per address (:func:`expand_relays`, resolved once at start;
the TLS name stays the name), so every relay behind the name can reach the site. Each
session notices a dead relay by the agent's liveness deadline and reconnects on its own.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import Any

from zgate_agent.app import Agent
from zgate_agent.link import ClientLink, PacketSink, TunnelInfo
from zgate_agent.metrics import AgentMetrics
from zgate_connector.settings import ConnectorSettings
from zgate_host.nft import NatTable
from zgate_host.settings import parse_hostport
from zgate_host.tun import PacketDevice
from zgate_proto.capsules import IPAddressRange, RouteAdvertisement, normalize_ranges

__all__ = ["NAT_TABLE", "Connector", "ConnectorGroup", "expand_relays", "site_advertisement"]

log = logging.getLogger("zgate.connector")

NAT_TABLE = "zgate_connector"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def site_advertisement(site: list[Network]) -> RouteAdvertisement:
    """ROUTE_ADVERTISEMENT of the site's prefixes, ordered as RFC 9484 requires."""
    return RouteAdvertisement(normalize_ranges(IPAddressRange.from_network(p) for p in site))


Resolver = Callable[[str, int], list[str]]


def _addresses(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def expand_relays(
    relays: list[str], server_name: str | None, resolve: Resolver = _addresses
) -> list[tuple[str, str | None]]:
    """(HOST:PORT to dial, TLS name) for each session: one per relay given, and one per
    address of a relay name that has several (dialled at the address, checked against the
    name). A name that does not resolve now keeps one session, which resolves it at each
    attempt (and says why it fails)."""
    out: list[tuple[str, str | None]] = []
    for relay in relays:
        host, port = parse_hostport(relay, 4433)
        try:
            ipaddress.ip_address(host)
            addresses: list[str] = []
        except ValueError:
            try:
                addresses = resolve(host, port)
            except OSError:
                addresses = []
        if len(addresses) <= 1:
            out.append((relay, server_name))
            continue
        for address in addresses:
            dial = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
            out.append((dial, server_name or host))
    return list(dict.fromkeys(out))


class Connector(Agent):
    """One connector session: an agent that advertises the site once its session is open.
    The NAT into the site is the group's (one table for every relay's pool)."""

    pki_kind = "connector"

    def __init__(
        self,
        settings: ConnectorSettings,
        device: PacketDevice,
        metrics: AgentMetrics,
        *,
        configure_host: bool = True,
        read_device: bool = True,
        on_agent_packet: Callable[[bytes, Connector], None] | None = None,
        on_pools: Callable[[list[Network]], None] | None = None,
    ) -> None:
        super().__init__(
            settings, device, metrics, configure_host=configure_host, read_device=read_device
        )
        self.site = list(settings.site)
        #: Told (agent address, this session) for every packet a relay brings.
        self.on_agent_packet = on_agent_packet
        #: Told the agents' pools each time a session opens (what to masquerade).
        self.on_pools = on_pools

    def session_opened(self, link: ClientLink, info: TunnelInfo) -> None:
        """Advertise the site, and report the agents' pools."""
        link.send_capsules([site_advertisement(self.site)])
        pools = [n for r in info.routes for n in r.networks()]
        if self.on_pools is not None:
            self.on_pools(pools)
        log.info(
            "site advertised",
            extra={"site": [str(p) for p in self.site], "agents": [str(p) for p in pools]},
        )

    def packet_sink(self) -> PacketSink:
        """The device, through a note of which agents this session brought (for the
        group's replies) when there is a group."""
        if self.on_agent_packet is None:
            return self.device
        return _NotingSink(self.device, self, self.on_agent_packet)


class _NotingSink:
    """Writes the relay's packets to the device, noting each one's source agent for the
    link that brought it (one note per packet, a dict store)."""

    def __init__(
        self,
        device: PacketDevice,
        link: Connector,
        note: Callable[[bytes, Connector], None],
    ) -> None:
        self.device = device
        self.link = link
        self.note = note

    def write_batch(self, packets: list[bytes]) -> None:
        """Note the sources, then write the batch."""
        note, link = self.note, self.link
        for packet in packets:
            if len(packet) >= 20:
                note(packet[12:16] if packet[0] >> 4 == 4 else packet[8:24], link)
        self.device.write_batch(packets)


class ConnectorGroup:
    """One connector session per relay on one TUN device.

    The group reads the device; a reply goes to the link whose relay brought the agent's
    last packet (agents of different relays may even share addresses), else to the first
    connected link. Each link advertises the site and reconnects on its own.
    """

    def __init__(
        self,
        settings: ConnectorSettings,
        relays: list[str],
        device: PacketDevice,
        metrics: AgentMetrics,
        *,
        configure_host: bool = True,
        max_agents: int = 65_536,
        resolve: Resolver = _addresses,
    ) -> None:
        self.device = device
        self.max_agents = max_agents
        self._last_link: dict[bytes, Connector] = {}
        self.nat = NatTable(NAT_TABLE) if configure_host and settings.nat else None
        self._pools: list[Network] = []
        self.links = [
            Connector(
                settings.model_copy(update={"relay": [relay], "server_name": server_name}),
                device,
                metrics,
                configure_host=configure_host,
                read_device=False,
                on_agent_packet=self._remember,
                on_pools=self._add_pools,
            )
            for relay, server_name in expand_relays(relays, settings.server_name, resolve)
        ]
        self.connected = asyncio.Event()
        # One gauge for all links (each would set it on its own): relays with a live session.
        metrics.connected.set_function(
            lambda: float(sum(link.connected.is_set() for link in self.links))
        )

    def _add_pools(self, pools: list[Network]) -> None:
        """Masquerade every relay's agent pool (one table for all links)."""
        new = [p for p in pools if p not in self._pools]
        if new and self.nat is not None:
            self._pools += new
            self.nat.install(self._pools, tun_name=self.device.name)

    def _remember(self, agent: bytes, link: Connector) -> None:
        if len(self._last_link) < self.max_agents or agent in self._last_link:
            self._last_link[agent] = link

    def _device_readable(self) -> None:
        batches: dict[int, list[bytes]] = {}
        for packet in self.device.read_batch(64):
            link = self._link_for(packet)
            if link is not None:
                batches.setdefault(id(link), []).append(packet)
        for link in self.links:
            batch = batches.get(id(link))
            if batch:
                link.send_to_relay(batch)

    def _link_for(self, packet: bytes) -> Connector | None:
        if len(packet) < 20:
            return None
        dest = packet[16:20] if packet[0] >> 4 == 4 else packet[24:40]
        link = self._last_link.get(dest)
        if link is not None and link.connected.is_set():
            return link
        return next((c for c in self.links if c.connected.is_set()), self.links[0])

    async def run(self) -> None:
        """Run every link until stopped."""
        loop = asyncio.get_running_loop()
        loop.add_reader(self.device.fileno(), self._device_readable)
        watcher = asyncio.ensure_future(self._watch())
        try:
            await asyncio.gather(*(link.run() for link in self.links))
        finally:
            watcher.cancel()
            loop.remove_reader(self.device.fileno())

    async def _watch(self) -> None:
        waits = [asyncio.ensure_future(link.connected.wait()) for link in self.links]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Also when the group stops before any link connected: no task left pending.
            for w in waits:
                w.cancel()
        self.connected.set()

    def stop(self) -> None:
        """Stop every link."""
        for link in self.links:
            link.stop()

    def remove_nat(self) -> None:
        """Delete the NAT table (on exit)."""
        if self.nat is not None:
            self.nat.remove()

    def status(self) -> dict[str, Any]:
        """The first link's status, with every link's under "links"."""
        statuses = [link.status() for link in self.links]
        first = dict(statuses[0])
        up = [st for st in statuses if st["state"] == "connected"]
        first["state"] = "connected" if up else statuses[0]["state"]
        first["relay"] = ", ".join(str(st["relay"]) for st in statuses)
        first["links"] = statuses
        return first
