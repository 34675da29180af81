"""Interface addresses, MTU, link state and routes over netlink (pyroute2).

Every call opens a netlink socket, does its work and closes it. The work runs in a
short-lived thread (see zgate_host.netns): pyroute2's synchronous API refuses to run on a
thread with a running asyncio loop, and the thread is also how `netns=` reaches a namespace.
The calls are quick, so daemons may call them straight from async code during set-up.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from types import TracebackType
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkDecodeError, NetlinkError

from zgate_host.errors import (
    NET_ADMIN_FIX,
    HostError,
    IPv6Disabled,
    LinkNotFound,
    PermissionRequired,
    describe_errno,
)
from zgate_host.netns import run_in_netns
from zgate_host.tun import validate_ifname

__all__ = [
    "IPAddress",
    "IPInterface",
    "IPNetwork",
    "PinnedRoute",
    "RouteInfo",
    "add_route",
    "configure_interface",
    "delete_link",
    "delete_route",
    "full_tunnel_prefixes",
    "link_exists",
    "pin_host_route",
    "route_get",
]

IPAddress = IPv4Address | IPv6Address
IPInterface = IPv4Interface | IPv6Interface
IPNetwork = IPv4Network | IPv6Network

T = TypeVar("T")

_IFA_F_NODAD = 0x02
_RT_SCOPE_LINK = 253
_RTN_UNICAST = 1
# A route that is already gone answers ESRCH (or ENOENT for some IPv6 paths).
_ROUTE_MISSING = (errno.ESRCH, errno.ENOENT)


class _Step:
    """The netlink operation under way, so an error can say which one failed."""

    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = ""


@dataclass(frozen=True, slots=True)
class RouteInfo:
    """What the kernel would do with a packet to one address (`ip route get`)."""

    gateway: IPAddress | None
    dev: str
    src: IPAddress | None
    ifindex: int
    local: bool = False
    """True for addresses of this host (type local): no gateway or device applies."""


def configure_interface(
    name: str,
    addresses: Sequence[IPInterface],
    *,
    mtu: int | None = None,
    up: bool = True,
    exclusive: bool = False,
    netns: str | None = None,
) -> None:
    """Set the MTU, add `addresses` (idempotent) and bring the link up (or down).

    IPv6 addresses skip duplicate address detection: a tunnel address is assigned by the
    relay and must be usable at once. With `exclusive`, other global addresses on the link
    (a previous session's) are removed; link-local ones are kept.

    An interface with IPv6 disabled (net.ipv6.conf.NAME.disable_ipv6=1: Docker's default in
    a container) gets IPv6 enabled when an IPv6 address is asked for; where /proc/sys is
    read-only that is impossible and IPv6Disabled names the setting that fixes it.
    """
    validate_ifname(name)
    step = _Step()

    def work(ipr: Any) -> None:
        step.now = "looking up the link"
        index = _index(ipr, name)
        if mtu is not None:
            step.now = f"setting MTU {mtu}"
            ipr.link("set", index=index, mtu=mtu)
        wanted = {(str(a.ip), a.network.prefixlen) for a in addresses}
        if exclusive:
            step.now = "listing addresses"
            for msg in ipr.addr("dump", index=index):
                key = (msg.get_attr("IFA_ADDRESS"), msg["prefixlen"])
                if msg["scope"] != _RT_SCOPE_LINK and key not in wanted:
                    step.now = f"deleting address {key[0]}/{key[1]}"
                    ipr.addr("del", index=index, address=key[0], prefixlen=key[1])
        for iface in addresses:
            step.now = f"adding address {iface}"
            extra = {"flags": _IFA_F_NODAD} if iface.version == 6 else {}
            spec = {
                "index": index,
                "address": str(iface.ip),
                "prefixlen": iface.network.prefixlen,
                **extra,
            }
            try:
                ipr.addr("replace", **spec)
            except NetlinkError as exc:
                # The kernel answers EACCES, not a missing capability, when IPv6 is off.
                if iface.version != 6 or exc.code != errno.EACCES or not _ipv6_disabled(name):
                    raise
                _enable_ipv6(name, iface)
                ipr.addr("replace", **spec)
        step.now = f"setting the link {'up' if up else 'down'}"
        ipr.link("set", index=index, state="up" if up else "down")

    _netlink(netns, f"configuring {name}", work, step)


def _ipv6_disabled(name: str) -> bool:
    try:
        with open(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", encoding="ascii") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def _enable_ipv6(name: str, iface: IPInterface) -> None:
    """Turn IPv6 on for our own interface `name` (runs in its namespace), or explain why not."""
    try:
        with open(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "w", encoding="ascii") as f:
            f.write("0\n")
    except OSError as exc:
        raise IPv6Disabled(
            f"configuring {name}: adding address {iface}: {describe_errno(errno.EACCES)}: "
            f"IPv6 is disabled on {name} (net.ipv6.conf.{name}.disable_ipv6 is 1, inherited "
            f"from net.ipv6.conf.default) and enabling it failed: "
            f"{describe_errno(exc.errno, exc.strerror)}; Docker disables IPv6 in containers: "
            'set it in compose (sysctls: net.ipv6.conf.all.disable_ipv6: "0"), with docker run '
            "--sysctl net.ipv6.conf.all.disable_ipv6=0, or in the pod's securityContext.sysctls",
            code=errno.EACCES,
        ) from exc


def add_route(
    prefix: IPNetwork,
    *,
    dev: str,
    gateway: IPAddress | None = None,
    metric: int | None = None,
    table: int | None = None,
    netns: str | None = None,
) -> None:
    """Route `prefix` to `dev` (optionally via `gateway`); replaces an equal route."""
    validate_ifname(dev)

    def work(ipr: Any) -> None:
        spec = _route_spec(prefix, _index(ipr, dev), gateway, metric, table)
        ipr.route("replace", **spec)

    _netlink(netns, f"adding route {prefix} dev {dev}", work)


def delete_route(
    prefix: IPNetwork,
    *,
    dev: str | None = None,
    gateway: IPAddress | None = None,
    metric: int | None = None,
    table: int | None = None,
    netns: str | None = None,
) -> None:
    """Delete a route to `prefix` (matching `dev`/`gateway`/`metric` when given).

    A route or device that is already gone is not an error: clean-up must be repeatable.
    """

    def work(ipr: Any) -> None:
        index: int | None = None
        if dev is not None:
            found = ipr.link_lookup(ifname=validate_ifname(dev))
            if not found:
                return
            index = found[0]
        try:
            ipr.route("del", **_route_spec(prefix, index, gateway, metric, table))
        except NetlinkError as exc:
            if exc.code not in _ROUTE_MISSING:
                raise

    _netlink(netns, f"deleting route {prefix}", work)


def route_get(dest: IPAddress, *, netns: str | None = None) -> RouteInfo:
    """Ask the kernel how it would reach `dest` right now (like `ip route get`)."""

    def work(ipr: Any) -> RouteInfo:
        msg = ipr.route("get", dst=str(dest))[0]
        index = msg.get_attr("RTA_OIF")
        dev = ""
        if index is not None:
            dev = ipr.link("get", index=index)[0].get_attr("IFLA_IFNAME")
        gateway = msg.get_attr("RTA_GATEWAY")
        src = msg.get_attr("RTA_PREFSRC")
        return RouteInfo(
            gateway=ipaddress.ip_address(gateway) if gateway else None,
            dev=dev,
            src=ipaddress.ip_address(src) if src else None,
            ifindex=index or 0,
            local=msg["type"] != _RTN_UNICAST,
        )

    return _netlink(netns, f"looking up the route to {dest}", work)


@dataclass(slots=True)
class PinnedRoute:
    """A host route added by pin_host_route(); remove() takes it away again (idempotent)."""

    prefix: IPNetwork
    dev: str
    gateway: IPAddress | None
    metric: int | None = None
    table: int | None = None
    netns: str | None = None
    active: bool = True
    """False once removed, or if nothing needed pinning (the destination is this host)."""

    def remove(self) -> None:
        """Delete the pinned route if we added it; safe to call more than once."""
        if self.active:
            delete_route(
                self.prefix,
                dev=self.dev,
                gateway=self.gateway,
                metric=self.metric,
                table=self.table,
                netns=self.netns,
            )
        self.active = False

    def __enter__(self) -> PinnedRoute:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()


def pin_host_route(
    dest: IPAddress,
    *,
    metric: int | None = None,
    table: int | None = None,
    netns: str | None = None,
) -> PinnedRoute:
    """Add a /32 (or /128) route to `dest` via its current gateway and device.

    A full-tunnel agent calls this for its relay before it points the default routes into
    the tunnel, so the tunnel's own packets keep leaving by the physical interface. An
    address of this host needs no pin: the result is then inactive and remove() does nothing.
    """
    info = route_get(dest, netns=netns)
    prefix = ipaddress.ip_network(dest)
    if info.local:
        return PinnedRoute(prefix, info.dev, None, netns=netns, active=False)
    add_route(prefix, dev=info.dev, gateway=info.gateway, metric=metric, table=table, netns=netns)
    return PinnedRoute(prefix, info.dev, info.gateway, metric, table, netns)


def delete_link(name: str, *, netns: str | None = None) -> None:
    """Delete the interface `name`; one that does not exist is not an error."""
    validate_ifname(name)

    def work(ipr: Any) -> None:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return
        try:
            ipr.link("del", index=found[0])
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise

    _netlink(netns, f"deleting link {name}", work)


def link_exists(name: str, *, netns: str | None = None) -> bool:
    """True if an interface called `name` exists."""
    validate_ifname(name)
    return _netlink(
        netns, f"looking up link {name}", lambda ipr: bool(ipr.link_lookup(ifname=name))
    )


def full_tunnel_prefixes(ipv6: bool = True, *, ipv4: bool = True) -> list[IPNetwork]:
    """The half-space routes that send everything into a tunnel without replacing the default.

    Two /1 routes beat the default route by prefix length and leave it in place, so removing
    them restores the host exactly.
    """
    prefixes: list[IPNetwork] = []
    if ipv4:
        prefixes += [IPv4Network("0.0.0.0/1"), IPv4Network("128.0.0.0/1")]
    if ipv6:
        prefixes += [IPv6Network("::/1"), IPv6Network("8000::/1")]
    return prefixes


def _route_spec(
    prefix: IPNetwork,
    index: int | None,
    gateway: IPAddress | None,
    metric: int | None,
    table: int | None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "dst": str(prefix),
        "family": socket.AF_INET if prefix.version == 4 else socket.AF_INET6,
    }
    if index is not None:
        spec["oif"] = index
    if gateway is not None:
        spec["gateway"] = str(gateway)
    if metric is not None:
        spec["priority"] = metric
    if table is not None:
        spec["table"] = table
    return spec


def _index(ipr: Any, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise LinkNotFound(f"no network interface named {name!r}", code=errno.ENODEV)
    index: int = found[0]
    return index


def _netlink(
    netns: str | None, what: str, work: Callable[[Any], T], step: _Step | None = None
) -> T:
    """Run `work(ipr)` with a fresh IPRoute off the caller's thread; translate its errors.

    Messages name the operation (`what`, and the `step` under way when one is tracked) and
    the errno. Only EPERM, the kernel's answer to a missing CAP_NET_ADMIN, blames privileges.
    """

    def where() -> str:
        return f"{what}: {step.now}" if step is not None and step.now else what

    def call() -> T:
        try:
            with IPRoute() as ipr:
                return work(ipr)
        except NetlinkError as exc:
            code = exc.code
            text = exc.args[-1] if isinstance(exc.args[-1], str) else None
            if code == errno.EPERM:
                raise PermissionRequired(
                    f"{where()}: {describe_errno(code, text)}: needs CAP_NET_ADMIN: "
                    f"{NET_ADMIN_FIX}",
                    code=code,
                ) from exc
            raise HostError(f"{where()}: {describe_errno(code, text)}", code=code) from exc
        except NetlinkDecodeError as exc:
            raise HostError(f"{where()}: undecodable netlink reply ({exc})") from exc
        except OSError as exc:
            raise HostError(
                f"{where()}: {describe_errno(exc.errno, exc.strerror)}", code=exc.errno
            ) from exc

    return run_in_netns(netns, call)
