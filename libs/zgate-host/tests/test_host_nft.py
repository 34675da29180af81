"""The relay's NAT table: the script it renders, and the real thing inside namespaces."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
from collections.abc import Iterator
from ipaddress import IPv4Network, IPv6Network, ip_network

import pytest

from zgate_host import CommandFailed, HostError, InvalidArgument, NatTable, run_nft

skip_unless_root = pytest.mark.needs(
    root=True, tools=("ip", "nft"), reason="network namespaces and nftables"
)
_names = itertools.count()

POOL4 = IPv4Network("10.100.0.0/16")
POOL6 = IPv6Network("fd7a:7a67::/64")


def _new_netns(tag: str) -> str:
    name = f"zgh-{os.getpid()}-{tag}{next(_names)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    return name


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace, deleted afterwards (its nftables go with it)."""
    name = _new_netns("nft")
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def relay_and_internet() -> Iterator[tuple[str, str]]:
    """Two namespaces joined by veth: relay (198.51.100.1, owns 10.100.0.1) and internet."""
    relay, internet = _new_netns("relay"), _new_netns("inet")
    try:
        subprocess.run(
            ["ip", "-n", relay, "link", "add", "up0", "type", "veth", "peer", "name", "down0",
             "netns", internet],
            check=True,
        )  # fmt: skip
        for ns, cmd in (
            (relay, "addr add 198.51.100.1/24 dev up0"),
            (relay, "link set up0 up"),
            (relay, "addr add 10.100.0.1/32 dev lo"),
            (internet, "addr add 198.51.100.2/24 dev down0"),
            (internet, "link set down0 up"),
        ):
            subprocess.run(["ip", "-n", ns, *cmd.split()], check=True)
        yield relay, internet
    finally:
        subprocess.run(["ip", "netns", "del", relay], check=False)
        subprocess.run(["ip", "netns", "del", internet], check=False)


# --- without root ---


def test_render_masquerades_each_family_and_merges_overlaps() -> None:
    script = NatTable("zt").render(
        [POOL4, ip_network("10.100.7.0/24"), POOL6, ip_network("10.200.0.0/16")],
        oifname="eth0",
        tun_name="zgate0",
    )
    assert script.startswith("table inet zt\ndelete table inet zt\ntable inet zt {\n")
    assert 'ip saddr { 10.100.0.0/16, 10.200.0.0/16 } oifname "eth0" counter masquerade' in script
    assert 'ip6 saddr { fd7a:7a67::/64 } oifname "eth0" counter masquerade' in script
    assert 'iifname "zgate0" counter accept' in script
    assert 'oifname "zgate0" counter accept' in script
    assert "policy accept" in script


def test_render_without_egress_device_keeps_tunnel_traffic_unmasqueraded() -> None:
    script = NatTable().render([POOL4], tun_name="zgate0")
    assert 'ip saddr { 10.100.0.0/16 } oifname != "zgate0" counter masquerade' in script
    assert "ip6 saddr" not in script
    assert "chain forward" not in NatTable().render([POOL4])


@pytest.mark.parametrize("bad", ['eth0" accept', "a b", "x" * 16, "e;0", "é"])
def test_interface_names_cannot_inject_rules(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        NatTable().render([POOL4], oifname=bad)
    with pytest.raises(InvalidArgument):
        NatTable().render([POOL4], tun_name=bad)


@pytest.mark.parametrize("bad", ["", "1abc", "a b", "a;b", "x" * 65])
def test_table_names_are_checked(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        NatTable(bad)


# --- with root, in a namespace ---


@pytest.mark.root
@skip_unless_root
def test_install_remove_and_exists(netns: str) -> None:
    table = NatTable(netns=netns)
    assert not table.exists()
    assert table.installed_ruleset() == ""
    table.install([POOL4, POOL6], tun_name="zgate0")
    assert table.exists()
    ruleset = table.installed_ruleset()
    assert "type nat hook postrouting priority srcnat" in ruleset
    assert re.search(r"ip saddr 10\.100\.0\.0/16 .*masquerade", ruleset)
    assert re.search(r"ip6 saddr fd7a:7a67::/64 .*masquerade", ruleset)
    assert 'iifname "zgate0"' in ruleset
    assert not NatTable().exists(), "the table must be in the namespace only"
    table.remove()
    table.remove()
    assert not table.exists()


@pytest.mark.root
@skip_unless_root
def test_install_replaces_a_stale_table_and_leaves_others_alone(netns: str) -> None:
    run_nft(
        ["-f", "-"],
        script="add table inet zgate_relay\nadd chain inet zgate_relay leftover\n"
        "add table inet someone_else\n",
        netns=netns,
    )
    table = NatTable(netns=netns)
    table.install([IPv4Network("10.1.0.0/16")], oifname="eth9")
    table.install([POOL4], oifname="eth0")
    ruleset = table.installed_ruleset()
    assert "leftover" not in ruleset
    assert "10.1.0.0/16" not in ruleset
    assert 'ip saddr 10.100.0.0/16 oifname "eth0"' in ruleset
    table.remove()
    assert "table inet someone_else" in run_nft(["list", "tables"], netns=netns)


@pytest.mark.root
@skip_unless_root
def test_failures_carry_nfts_stderr(netns: str) -> None:
    with pytest.raises(CommandFailed, match="syntax error") as caught:
        run_nft(["-f", "-"], script="this is not nft\n", netns=netns)
    assert "syntax error" in caught.value.stderr
    assert caught.value.returncode != 0
    with pytest.raises(HostError, match="does not exist"):
        NatTable(netns=f"zgh-{os.getpid()}-absent").exists()


@pytest.mark.root
@skip_unless_root
def test_masquerade_lets_pool_addresses_reach_the_outside(
    relay_and_internet: tuple[str, str],
) -> None:
    relay, _ = relay_and_internet
    ping = ["ip", "netns", "exec", relay, "ping", "-c", "1", "-I", "10.100.0.1"]
    # Without NAT the far side has no route back to the pool address.
    unnatted = subprocess.run([*ping, "-W", "1", "198.51.100.2"], capture_output=True)
    assert unnatted.returncode != 0
    table = NatTable(netns=relay)
    table.install([POOL4], oifname="up0")
    done = subprocess.run([*ping, "-W", "5", "198.51.100.2"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"counter packets [1-9]\d* bytes \d+ masquerade", table.installed_ruleset())
