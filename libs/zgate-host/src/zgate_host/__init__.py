"""What a zgate daemon needs from its Linux host: TUN devices, addresses and routes,
nftables NAT, forwarding switches, privilege checks and structured logs."""

from zgate_host.errors import (
    CommandFailed,
    HostError,
    InvalidArgument,
    IPv6Disabled,
    LinkNotFound,
    PermissionRequired,
    SysctlNotWritable,
    ToolMissing,
    TunUnavailable,
)
from zgate_host.logs import BoundLogger, bind, configure_logging
from zgate_host.memdev import MemoryPacketDevice
from zgate_host.netconf import (
    PinnedRoute,
    RouteInfo,
    add_route,
    configure_interface,
    delete_link,
    delete_route,
    full_tunnel_prefixes,
    link_exists,
    pin_host_route,
    route_get,
)
from zgate_host.netns import run_in_netns
from zgate_host.nft import NatTable, run_nft
from zgate_host.privileges import has_net_admin, require_net_admin
from zgate_host.sysctl import ForwardingState, enable_forwarding
from zgate_host.tun import PacketDevice, TunDevice

__all__ = [
    "BoundLogger",
    "CommandFailed",
    "ForwardingState",
    "HostError",
    "IPv6Disabled",
    "InvalidArgument",
    "LinkNotFound",
    "MemoryPacketDevice",
    "NatTable",
    "PacketDevice",
    "PermissionRequired",
    "PinnedRoute",
    "RouteInfo",
    "SysctlNotWritable",
    "ToolMissing",
    "TunDevice",
    "TunUnavailable",
    "add_route",
    "bind",
    "configure_interface",
    "configure_logging",
    "delete_link",
    "delete_route",
    "enable_forwarding",
    "full_tunnel_prefixes",
    "has_net_admin",
    "link_exists",
    "pin_host_route",
    "require_net_admin",
    "route_get",
    "run_in_netns",
    "run_nft",
]
