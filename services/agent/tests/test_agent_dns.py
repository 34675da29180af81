"""The agent's DNS hook: which servers and domains, the opt-out, failures as one warning,
the status line. The resolver works in a temporary directory."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from zgate_agent.app import Agent
from zgate_agent.cli import main
from zgate_agent.dns import AgentDns, describe
from zgate_agent.link import TunnelInfo
from zgate_agent.metrics import AgentMetrics
from zgate_agent.settings import AgentSettings
from zgate_host.httpd import serve_status
from zgate_host.memdev import MemoryPacketDevice
from zgate_host.resolver import HostResolver, is_managed, nameservers
from zgate_proto.capsules import IPAddressRange
from zgate_proto.session import PacketMode

ORIGINAL = "nameserver 192.0.2.53\nsearch corp.example\n"
EVERYTHING = (
    IPAddressRange(ipaddress.ip_address("0.0.0.0"), ipaddress.ip_address("255.255.255.255"), 0),
)
SITE = (
    IPAddressRange(ipaddress.ip_address("192.168.50.0"), ipaddress.ip_address("192.168.50.255"), 0),
)


def info(*addresses: str, routes: tuple[IPAddressRange, ...] = EVERYTHING) -> TunnelInfo:
    return TunnelInfo(
        tuple(ipaddress.ip_network(a) for a in addresses), routes, PacketMode.DATAGRAM
    )


def make(tmp_path: Path, **settings: object) -> tuple[AgentDns, Path]:
    conf = tmp_path / "resolv.conf"
    if not conf.exists():
        conf.write_text(ORIGINAL)
    s = AgentSettings(state_dir=tmp_path / "state", **settings)  # type: ignore[arg-type]
    resolver = HostResolver(
        state_dir=s.state_dir,
        resolv_conf=conf,
        resolved_dir=tmp_path / "no-resolved",
        mountinfo=tmp_path / "no-mountinfo",
    )
    return AgentDns(s, "zgate-agent0", resolver), conf


def test_full_tunnel_sends_every_name_to_the_relay(tmp_path: Path) -> None:
    dns, conf = make(tmp_path)
    assert dns.status()["state"] == "pending"
    tunnel = info("10.100.0.7/32", "fd7a:7a67::7/128")
    assert dns.extra_routes(tunnel) == []  # the full tunnel covers the servers
    dns.tunnel_up(tunnel)
    assert nameservers(conf.read_text()) == ["10.100.0.1", "fd7a:7a67::1"]
    status = dns.status()
    assert (status["state"], status["method"]) == ("on", "resolv.conf")
    assert describe(status) == (
        f"10.100.0.1, fd7a:7a67::1 via resolv.conf: {conf} (managed, atomic)"
    )
    dns.restore()
    assert conf.read_text() == ORIGINAL


def test_only_families_the_tunnel_carries(tmp_path: Path) -> None:
    dns, conf = make(tmp_path)
    dns.tunnel_up(info("10.100.0.7/32"))
    assert nameservers(conf.read_text()) == ["10.100.0.1"]


def test_no_dns_leaves_the_resolver_alone_but_still_recovers(tmp_path: Path) -> None:
    crashed, conf = make(tmp_path)
    crashed.tunnel_up(info("10.100.0.7/32"))  # and never restored
    dns, _ = make(tmp_path, dns=False)
    dns.recover()
    assert conf.read_text() == ORIGINAL
    dns.tunnel_up(info("10.100.0.7/32"))
    assert conf.read_text() == ORIGINAL
    assert describe(dns.status()) == "off (--no-dns)"


def test_split_tunnel_without_domains_keeps_the_host_resolver(tmp_path: Path) -> None:
    dns, conf = make(tmp_path, full_tunnel=False)
    tunnel = info("10.100.0.7/32", routes=SITE)
    assert dns.extra_routes(tunnel) == []
    dns.tunnel_up(tunnel)
    assert conf.read_text() == ORIGINAL
    assert describe(dns.status()).startswith("off (split tunnel without --dns-domain")


def test_split_tunnel_with_domains_routes_the_server_and_keeps_host_servers(
    tmp_path: Path,
) -> None:
    dns, conf = make(tmp_path, full_tunnel=False, dns_domains=["Corp.Internal."])
    tunnel = info("10.100.0.7/32", routes=SITE)
    server = ipaddress.ip_address("10.100.0.1")
    assert dns.extra_routes(tunnel) == [IPAddressRange(server, server, 0)]
    dns.tunnel_up(tunnel)
    # resolv.conf cannot route by domain: the relay first, the host's server after it.
    assert nameservers(conf.read_text()) == ["10.100.0.1", "192.0.2.53"]
    assert dns.status()["domains"] == ["corp.internal"]
    assert describe(dns.status()).endswith(" for corp.internal")


def test_configured_servers_for_another_pool(tmp_path: Path) -> None:
    dns, conf = make(tmp_path, dns_servers=["172.16.0.1"])
    dns.tunnel_up(info("172.16.0.9/32"))
    assert nameservers(conf.read_text()) == ["172.16.0.1"]


def test_failures_are_one_warning_and_the_tunnel_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    dns, conf = make(tmp_path)
    dns.tunnel_up(info("172.16.0.9/32"))  # not the relay's default pool, no --dns-server
    assert conf.read_text() == ORIGINAL
    assert describe(dns.status()).startswith("not configured: the relay's DNS address")
    # A file that cannot be written (simulated: renaming over it fails, EROFS).
    dns2, conf2 = make(tmp_path)

    def rename(src: str, dst: str) -> None:
        if Path(dst) == conf2:
            raise OSError(30, "Read-only file system")
        os.rename(src, dst)

    dns2.resolver.rename = rename
    dns2.tunnel_up(info("10.100.0.7/32"))
    assert conf2.read_text() == ORIGINAL
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2
    assert all(r.exc_info is None for r in warnings)
    assert f"cannot write {conf2}: Read-only file system" in warnings[1].getMessage()
    assert all("--no-dns" in r.getMessage() for r in warnings)


def test_settings_check_domains() -> None:
    with pytest.raises(ValueError, match="not a DNS domain"):
        AgentSettings(dns_domains=["corp..internal"])
    assert AgentSettings(dns_domains=["a.b", "A.B."]).dns_domains == ["a.b"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("dns", "line"),
    [
        (
            {"state": "on", "method": "systemd-resolved", "servers": ["10.100.0.1"],
             "domains": [], "where": "systemd-resolved on zgate-agent0"},
            "dns:       10.100.0.1 via systemd-resolved on zgate-agent0",
        ),
        ({"state": "off", "reason": "--no-dns"}, "dns:       off (--no-dns)"),
    ],
)  # fmt: skip
def test_status_shows_the_resolver(
    dns: dict[str, object], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = {"state": "connected", "since": 0, "relay": "r:4433", "device": "d", "dns": dns}
    server = serve_status("127.0.0.1", 0, CollectorRegistry(), lambda: status)
    try:
        assert main(["status", "--metrics", f"127.0.0.1:{server.server_address[1]}"]) == 0
    finally:
        server.close()
    assert line in capsys.readouterr().out.splitlines()


def test_managed_marker_is_in_the_file(tmp_path: Path) -> None:
    dns, conf = make(tmp_path)
    dns.tunnel_up(info("10.100.0.7/32"))
    assert is_managed(conf.read_text())
    dns.restore()


def test_an_unexpected_error_is_one_warning_too(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dns, _ = make(tmp_path)

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("surprise")

    dns.resolver.apply = broken  # type: ignore[method-assign,assignment]
    dns.resolver.restore = broken  # type: ignore[method-assign]
    dns.tunnel_up(info("10.100.0.7/32"))
    dns.restore()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.exc_info for r in warnings] == [None, None]
    assert "KeyError: 'surprise'" in warnings[0].getMessage()
    assert dns.status()["state"] == "failed"


async def test_a_reconnect_reuses_the_relay_address_while_dns_points_into_the_tunnel(
    tmp_path: Path,
) -> None:
    """The host's resolver is the relay's DNS, behind the tunnel that is down: resolving
    the relay's name again would time out, so the address it had is used."""
    settings = AgentSettings(relay="relay.invalid:4433", state_dir=tmp_path)
    device = MemoryPacketDevice("t0")
    try:
        agent = Agent(settings, device, AgentMetrics(), manage_dns=True)
        dns, _ = make(tmp_path)
        agent._dns = dns
        asked: list[str] = []
        answers = iter(["198.51.100.1", "198.51.100.2", "198.51.100.3"])

        async def resolve_all(
            host: str, port: int
        ) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
            asked.append(host)
            return [ipaddress.ip_address(next(answers))]

        agent._resolve_all = resolve_all  # type: ignore[method-assign]

        def address() -> str:
            return str(agent._rotation.current.address)

        # The host's own resolver still: asked each time.
        await agent._resolve_relays()
        assert address() == "198.51.100.1"
        await agent._resolve_relays()
        assert address() == "198.51.100.2"
        dns.tunnel_up(info("10.100.0.7/32"))
        assert dns.active
        # Now the resolver is behind the tunnel: the last address, without asking.
        await agent._resolve_relays()
        assert address() == "198.51.100.2"
        assert asked == ["relay.invalid", "relay.invalid"]
        dns.restore()
    finally:
        device.close()
