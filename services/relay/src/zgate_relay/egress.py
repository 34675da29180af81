"""The relay's way out: its TUN device, IP forwarding and the nftables masquerade table.
The only module of the relay that changes the host; everything it sets up, it removes."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from zgate_host.netconf import add_route, configure_interface
from zgate_host.nft import NatTable
from zgate_host.sysctl import ForwardingState, enable_forwarding
from zgate_host.tun import TunDevice

__all__ = ["NAT_TABLE", "Egress"]

#: The relay's own nftables table; a stale one left by a crash is replaced at start.
NAT_TABLE = "zgate_relay"

log = logging.getLogger("zgate.relay.egress")


@dataclass
class Egress:
    """TUN device + forwarding + NAT, opened together and closed together."""

    device: TunDevice
    table: NatTable | None
    forwarding: ForwardingState
    pools: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(default_factory=list)

    @classmethod
    def open(
        cls,
        *,
        name: str,
        mtu: int,
        gateways: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface],
        nat: bool,
        offload: bool = False,
        site_routes: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
    ) -> Egress:
        """Create the TUN device with the relay's pool addresses, enable forwarding and
        (optionally) masquerade the pools."""
        device = TunDevice.open(name, mtu=mtu, offload=offload)
        try:
            configure_interface(device.name, gateways, mtu=mtu, up=True)
            # The relay's own traffic to private sites (its DNS service asking a site's
            # resolver) enters the TUN device; the router hands it to a connector.
            for prefix in site_routes:
                add_route(prefix, dev=device.name)
            forwarding = enable_forwarding(ipv4=True, ipv6=True)
            pools = [g.network for g in gateways]
            table = None
            if nat:
                table = NatTable(NAT_TABLE)
                table.install(pools, tun_name=device.name)
        except Exception:
            device.close()
            raise
        log.info(
            "egress ready",
            extra={"device": device.name, "mtu": mtu, "pools": [str(p) for p in pools], "nat": nat},
        )
        return cls(device=device, table=table, forwarding=forwarding, pools=pools)

    def close(self) -> None:
        """Remove the NAT table, restore forwarding, delete the TUN device."""
        if self.table is not None:
            try:
                self.table.remove()
            except Exception as exc:
                log.error("could not remove nftables table", extra={"error": str(exc)})
        self.forwarding.restore()
        self.device.close()
        log.info("egress removed", extra={"device": self.device.name})
