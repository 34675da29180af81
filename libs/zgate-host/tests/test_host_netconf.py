"""Addresses, MTU and routes over netlink, checked with iproute2 inside test namespaces."""

from __future__ import annotations

import errno
import ipaddress
import itertools
import json
import os
import subprocess
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Interface, IPv6Network
from typing import Any

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from zgate_host import (
    HostError,
    LinkNotFound,
    PermissionRequired,
    TunDevice,
    add_route,
    configure_interface,
    delete_link,
    delete_route,
    full_tunnel_prefixes,
    link_exists,
    pin_host_route,
    route_get,
)
from zgate_host import netconf as netconf_module

skip_unless_root = pytest.mark.needs(root=True, tools=("ip",), reason="network namespaces")
_names = itertools.count()

RELAY = IPv4Address("198.51.100.10")
GATEWAY = IPv4Address("10.88.0.254")


@pytest.fixture
def netns() -> Iterator[str]:
    """A namespace with a veth pair (v0 10.88.0.1/24, default via 10.88.0.254), deleted after."""
    name = f"zgh-{os.getpid()}-nc{next(_names)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in (
            "link set lo up",
            "link add v0 type veth peer name v1",
            "link set v1 up",
            "link set v0 up",
            "addr add 10.88.0.1/24 dev v0",
            f"route add default via {GATEWAY} dev v0",
        ):
            subprocess.run(["ip", "-n", name, *cmd.split()], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _ip_json(netns: str, *args: str) -> Any:
    out = subprocess.run(
        ["ip", "-n", netns, "-j", *args], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out) if out.strip() else []


def _addresses(netns: str, dev: str) -> set[str]:
    info = _ip_json(netns, "addr", "show", "dev", dev)[0]
    return {
        f"{a['local']}/{a['prefixlen']}" for a in info["addr_info"] if a.get("scope") == "global"
    }


def _routes(netns: str, *args: str) -> list[dict[str, Any]]:
    routes: list[dict[str, Any]] = _ip_json(netns, "route", "show", *args)
    return routes


# --- without root ---


def test_full_tunnel_prefixes_cover_everything_and_only_once() -> None:
    v4 = [p for p in full_tunnel_prefixes(False) if isinstance(p, IPv4Network)]
    assert len(v4) == 2 == len(full_tunnel_prefixes(False))
    assert list(ipaddress.collapse_addresses(v4)) == [IPv4Network("0.0.0.0/0")]
    both = full_tunnel_prefixes(True)
    v6 = [p for p in both if isinstance(p, IPv6Network)]
    assert list(ipaddress.collapse_addresses(v6)) == [IPv6Network("::/0")]
    assert all(p.prefixlen == 1 for p in both)
    assert full_tunnel_prefixes(ipv4=False) == v6


def test_netlink_permission_errors_become_permission_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Refusing:
        def __enter__(self) -> Refusing:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def link_lookup(self, **kwargs: object) -> list[int]:
            raise NetlinkError(errno.EPERM)

    monkeypatch.setattr(netconf_module, "IPRoute", Refusing)
    with pytest.raises(PermissionRequired, match="CAP_NET_ADMIN"):
        link_exists("eth0")


# --- with root, in a namespace ---


@pytest.mark.root
@skip_unless_root
def test_configure_interface_sets_addresses_mtu_and_state(netns: str) -> None:
    with TunDevice.open("zc0", netns=netns) as tun:
        addresses: list[IPv4Interface | IPv6Interface] = [
            IPv4Interface("10.100.0.5/16"),
            IPv6Interface("fd7a:7a67::5/64"),
        ]
        configure_interface(tun.name, addresses, mtu=1280, netns=netns)
        configure_interface(tun.name, addresses, mtu=1280, netns=netns)  # idempotent
        assert _addresses(netns, tun.name) == {"10.100.0.5/16", "fd7a:7a67::5/64"}
        link = _ip_json(netns, "link", "show", "dev", tun.name)[0]
        assert link["mtu"] == 1280
        assert "UP" in link["flags"]

        configure_interface(tun.name, [IPv4Interface("10.100.0.9/16")], netns=netns)
        assert _addresses(netns, tun.name) == {"10.100.0.5/16", "10.100.0.9/16", "fd7a:7a67::5/64"}
        configure_interface(
            tun.name, [IPv4Interface("10.100.0.9/16")], up=False, exclusive=True, netns=netns
        )
        assert _addresses(netns, tun.name) == {"10.100.0.9/16"}
        assert "UP" not in _ip_json(netns, "link", "show", "dev", tun.name)[0]["flags"]


@pytest.mark.root
@skip_unless_root
def test_configure_a_missing_interface_is_link_not_found(netns: str) -> None:
    with pytest.raises(LinkNotFound, match="nosuch0"):
        configure_interface("nosuch0", [IPv4Interface("10.1.0.1/24")], netns=netns)


@pytest.mark.root
@skip_unless_root
def test_add_route_replaces_and_delete_route_tolerates_absence(netns: str) -> None:
    prefix = IPv4Network("203.0.113.0/24")
    add_route(prefix, dev="v0", netns=netns)
    add_route(prefix, dev="v0", netns=netns)
    assert [r["dst"] for r in _routes(netns) if r["dst"] == "203.0.113.0/24"] == ["203.0.113.0/24"]
    add_route(prefix, dev="v0", metric=77, table=100, netns=netns)
    (in_table,) = _routes(netns, "table", "100")
    assert (in_table["dst"], in_table["dev"], in_table["metric"]) == ("203.0.113.0/24", "v0", 77)

    v6 = IPv6Network("2001:db8:5::/48")
    add_route(v6, dev="v0", metric=10, netns=netns)
    assert any(r["dst"] == "2001:db8:5::/48" for r in _ip_json(netns, "-6", "route", "show"))

    delete_route(prefix, dev="v0", netns=netns)
    delete_route(prefix, dev="v0", netns=netns)
    delete_route(prefix, dev="gone0", netns=netns)
    delete_route(prefix, dev="v0", metric=77, table=100, netns=netns)
    delete_route(v6, dev="v0", metric=10, netns=netns)
    assert not [r for r in _routes(netns) if r["dst"] == "203.0.113.0/24"]
    assert _routes(netns, "table", "100") == []
    assert not any(r["dst"] == "2001:db8:5::/48" for r in _ip_json(netns, "-6", "route", "show"))


@pytest.mark.root
@skip_unless_root
def test_add_route_to_a_missing_device_fails(netns: str) -> None:
    with pytest.raises(LinkNotFound):
        add_route(IPv4Network("203.0.113.0/24"), dev="gone0", netns=netns)


@pytest.mark.root
@skip_unless_root
def test_route_get_reports_gateway_device_and_source(netns: str) -> None:
    info = route_get(RELAY, netns=netns)
    assert (info.gateway, info.dev, info.src) == (GATEWAY, "v0", IPv4Address("10.88.0.1"))
    assert not info.local
    on_link = route_get(IPv4Address("10.88.0.7"), netns=netns)
    assert (on_link.gateway, on_link.dev) == (None, "v0")
    assert route_get(IPv4Address("10.88.0.1"), netns=netns).local
    with pytest.raises(HostError):
        route_get(ipaddress.ip_address("2001:db8::1"), netns=netns)  # no IPv6 route at all


@pytest.mark.root
@skip_unless_root
def test_pinned_relay_route_survives_full_tunnel_routes(netns: str) -> None:
    with TunDevice.open("zt0", netns=netns) as tun:
        configure_interface(tun.name, [IPv4Interface("10.100.0.2/16")], netns=netns)
        pin = pin_host_route(RELAY, netns=netns)
        assert pin.active and pin.gateway == GATEWAY and pin.dev == "v0"
        for prefix in full_tunnel_prefixes(False):
            add_route(prefix, dev=tun.name, netns=netns)
        assert route_get(IPv4Address("198.51.100.99"), netns=netns).dev == tun.name
        relay = route_get(RELAY, netns=netns)
        assert (relay.dev, relay.gateway) == ("v0", GATEWAY)

        pin.remove()
        pin.remove()
        assert not pin.active
        assert route_get(RELAY, netns=netns).dev == tun.name


@pytest.mark.root
@skip_unless_root
def test_pinning_an_address_of_this_host_is_a_no_op(netns: str) -> None:
    before = _routes(netns)
    with pin_host_route(IPv4Address("10.88.0.1"), netns=netns) as pin:
        assert not pin.active
    assert _routes(netns) == before


@pytest.mark.root
@skip_unless_root
def test_delete_link_and_link_exists(netns: str) -> None:
    assert link_exists("v0", netns=netns)
    delete_link("v0", netns=netns)
    assert not link_exists("v0", netns=netns)
    assert not link_exists("v1", netns=netns)  # a veth peer goes with it
    delete_link("v0", netns=netns)


@pytest.mark.root
@skip_unless_root
async def test_calls_work_from_inside_a_running_event_loop(netns: str) -> None:
    # pyroute2's synchronous API refuses a thread with a running loop; ours must not.
    add_route(IPv4Network("203.0.113.0/24"), dev="v0", netns=netns)
    assert route_get(IPv4Address("203.0.113.1"), netns=netns).gateway is None
    assert link_exists("lo")
