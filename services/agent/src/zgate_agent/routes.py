"""The agent's host configuration: the TUN device's addresses and the routes into it,
keeping the routes to the relays themselves outside the tunnel (every relay the agent may
fail over to, so that the next one is reached while the tunnel's routes stay up).
Everything added is removed."""

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
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


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
    relay_ips: list[IPAddress]
    full_tunnel: bool
    routes: list[Network] = field(default_factory=list)
    pinned: dict[IPAddress, PinnedRoute] = field(default_factory=dict)

    def apply(
        self,
        addresses: Sequence[Network],
        ranges: Sequence[IPAddressRange],
        relay_ips: Sequence[IPAddress] = (),
    ) -> None:
        """Give the device the assigned addresses and route the tunnel's prefixes to it,
        after pinning the routes to the relays (``relay_ips`` adds to those known) that
        these prefixes would otherwise catch."""
        for ip in relay_ips:
            if ip not in self.relay_ips:
                self.relay_ips.append(ip)
        interfaces = [
            ipaddress.ip_interface(f"{a.network_address}/{a.max_prefixlen}") for a in addresses
        ]
        configure_interface(self.device, interfaces, up=True, exclusive=True)
        has_v6 = any(a.version == 6 for a in addresses)
        wanted = prefixes_for(ranges, full_tunnel=self.full_tunnel, ipv6=has_v6)
        for ip in self.relay_ips:
            if ip not in self.pinned and any(ip in p for p in wanted):
                self._pin(ip)
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

    def _pin(self, ip: IPAddress) -> None:
        pinned = pin_host_route(ip)
        if pinned.dev == self.device:
            # A relay first seen once the tunnel's routes were up: its route already leads
            # into the tunnel, and a pin there would not help it.
            pinned.remove()
            log.warning(
                "cannot pin the route to this relay outside the tunnel (it became known "
                "after the tunnel's routes were set)",
                extra={"relay": str(ip)},
            )
            return
        self.pinned[ip] = pinned
        log.info(
            "pinned the route to the relay outside the tunnel",
            extra={"relay": str(ip), "dev": pinned.dev},
        )

    def remove(self) -> None:
        """Delete the routes added and the pinned relay routes (idempotent)."""
        for prefix in self.routes:
            try:
                delete_route(prefix, dev=self.device)
            except Exception as exc:
                log.debug("route removal failed", extra={"route": str(prefix), "error": str(exc)})
        self.routes = []
        for pinned in self.pinned.values():
            pinned.remove()
        self.pinned.clear()
