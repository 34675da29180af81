"""The agent's host configuration: the TUN device's addresses and the routes into it,
keeping the route to the relay itself outside the tunnel. Everything added is removed."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from zgate_host.netconf import (
    PinnedRoute,
    add_route,
    configure_interface,
    delete_route,
    full_tunnel_prefixes,
    pin_host_route,
)
from zgate_proto.capsules import IPAddressRange

__all__ = ["HostRoutes", "prefixes_for"]

log = logging.getLogger("zgate.agent.routes")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def prefixes_for(
    ranges: Sequence[IPAddressRange], *, full_tunnel: bool, ipv6: bool
) -> list[Network]:
    """The prefixes to route into the tunnel.

    A whole address family becomes two half routes (0.0.0.0/1 + 128.0.0.0/1, ::/1 + 8000::/1),
    which win over the default route without replacing it.
    """
    if full_tunnel:
        return full_tunnel_prefixes(ipv6=ipv6)
    prefixes: list[Network] = []
    for r in ranges:
        if r.start.version == 6 and not ipv6:
            continue
        for net in ipaddress.summarize_address_range(r.start, r.end):
            if net.prefixlen == 0:
                prefixes.extend(full_tunnel_prefixes(ipv6=net.version == 6, ipv4=net.version == 4))
            else:
                prefixes.append(net)
    return prefixes


@dataclass
class HostRoutes:
    """Addresses and routes of the agent's TUN device, applied and removed as a whole."""

    device: str
    relay_ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    full_tunnel: bool
    routes: list[Network] = field(default_factory=list)
    pinned: PinnedRoute | None = None

    def apply(self, addresses: Sequence[Network], ranges: Sequence[IPAddressRange]) -> None:
        """Give the device the assigned addresses and route the tunnel's prefixes to it."""
        interfaces = [
            ipaddress.ip_interface(f"{a.network_address}/{a.max_prefixlen}") for a in addresses
        ]
        configure_interface(self.device, interfaces, up=True, exclusive=True)
        has_v6 = any(a.version == 6 for a in addresses)
        wanted = prefixes_for(ranges, full_tunnel=self.full_tunnel, ipv6=has_v6)
        if self.pinned is None and any(self.relay_ip in p for p in wanted):
            self.pinned = pin_host_route(self.relay_ip)
            log.info(
                "pinned the route to the relay outside the tunnel",
                extra={"relay": str(self.relay_ip), "dev": self.pinned.dev},
            )
        for stale in [p for p in self.routes if p not in wanted]:
            delete_route(stale, dev=self.device)
        for prefix in wanted:
            add_route(prefix, dev=self.device)
        self.routes = wanted
        log.info(
            "tunnel configured",
            extra={
                "device": self.device,
                "addresses": [str(i) for i in interfaces],
                "routes": [str(p) for p in wanted],
            },
        )

    def remove(self) -> None:
        """Delete the routes added and the pinned relay route (idempotent)."""
        for prefix in self.routes:
            try:
                delete_route(prefix, dev=self.device)
            except Exception as exc:
                log.debug("route removal failed", extra={"route": str(prefix), "error": str(exc)})
        self.routes = []
        if self.pinned is not None:
            self.pinned.remove()
            self.pinned = None
