"""The connector: an agent session that serves a site instead of reaching out from a device.

Once the session is open it advertises the site's prefixes (ROUTE_ADVERTISEMENT, RFC 9484
§4.7.3); the relay installs the ones this connector's id may serve and sends it the agents'
packets for them. Those leave the TUN device into the site, masqueraded to the connector's
own site address (nftables table ``inet zgate_connector``), so site hosts need no route back;
replies come back through the TUN device (routes for the agents' pool, which the relay
advertises) and travel back on the same session. Reconnecting, status and metrics are the
agent's.
"""

from __future__ import annotations

import ipaddress
import logging

from zgate_agent.app import Agent
from zgate_agent.metrics import AgentMetrics
from zgate_agent.tunnel import TunnelInfo, TunnelProtocol
from zgate_connector.settings import ConnectorSettings
from zgate_host.nft import NatTable
from zgate_host.tun import PacketDevice
from zgate_proto.capsules import IPAddressRange, RouteAdvertisement, normalize_ranges

__all__ = ["NAT_TABLE", "Connector", "site_advertisement"]

log = logging.getLogger("zgate.connector")

NAT_TABLE = "zgate_connector"


def site_advertisement(
    site: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> RouteAdvertisement:
    """ROUTE_ADVERTISEMENT of the site's prefixes, ordered as RFC 9484 requires."""
    return RouteAdvertisement(normalize_ranges(IPAddressRange.from_network(p) for p in site))


class Connector(Agent):
    """An agent that advertises a site and NATs the agents' packets into it."""

    def __init__(
        self,
        settings: ConnectorSettings,
        device: PacketDevice,
        metrics: AgentMetrics,
        *,
        configure_host: bool = True,
    ) -> None:
        super().__init__(settings, device, metrics, configure_host=configure_host)
        self.site = list(settings.site)
        self.nat = NatTable(NAT_TABLE) if configure_host and settings.nat else None
        self._nat_sources: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []

    def session_opened(self, protocol: TunnelProtocol, info: TunnelInfo) -> None:
        """Advertise the site, and masquerade what comes from the agents' pool."""
        assert protocol.stream is not None
        protocol.stream.send_capsules([site_advertisement(self.site)])
        protocol.transmit()
        pools = [n for r in info.routes for n in r.networks()]
        if self.nat is not None and pools != self._nat_sources:
            self.nat.install(pools, tun_name=self.device.name)
            self._nat_sources = pools
        log.info(
            "site advertised",
            extra={"site": [str(p) for p in self.site], "agents": [str(p) for p in pools]},
        )

    def remove_nat(self) -> None:
        """Delete the NAT table (on exit)."""
        if self.nat is not None:
            self.nat.remove()
            self._nat_sources = []
