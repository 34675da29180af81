"""Shared pieces for the relay, agent and connector tests: a PKI, a relay on loopback with an
in-memory egress device, agents on in-memory devices, and packet builders.

Test code, not product code: it lives in this dev-only package so that each service's tests
import it by name (``from zgate_lab.harness import ...``) instead of through a ``pythonpath``
setting, and depend on it as they depend on the services it runs."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mmdb_writer import MMDBWriter
from netaddr import IPSet  # type: ignore[import-untyped]

from zgate_agent.app import Agent
from zgate_agent.metrics import AgentMetrics
from zgate_agent.settings import AgentSettings
from zgate_host.memdev import MemoryPacketDevice
from zgate_pki import ChainVerifier, init_pki, issue_certificate
from zgate_policy import CompiledPolicy, load_and_compile
from zgate_policy.flows import FlowTable
from zgate_proto.h3 import PacketMode
from zgate_proto.ip import ipv4_checksum
from zgate_relay.enforce import Enforcer
from zgate_relay.metrics import RelayMetrics
from zgate_relay.mtls import build_server_configuration
from zgate_relay.pool import AddressPool
from zgate_relay.server import RelayServer

INTERNET = ipaddress.IPv4Address("203.0.113.10")


async def until(condition: Callable[[], bool], timeout: float = 10, what: str = "it") -> None:
    """Await a condition that some event will make true (polled on the event loop)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)
    assert condition(), what


def udp4(src: str, dst: str, payload: bytes, sport: int = 40000, dport: int = 7) -> bytes:
    """A well-formed IPv4/UDP packet (UDP checksum 0 = none, valid for IPv4)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(udp),
        1,
        0,
        64,
        17,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    header = header[:10] + struct.pack("!H", ipv4_checksum(header)) + header[12:]
    return header + udp


def tcp4(src: str, dst: str, sport: int, dport: int, flags: int) -> bytes:
    """A well-formed IPv4/TCP segment without payload (TCP checksum 0: the relay ignores it)."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0)
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        40,
        1,
        0,
        64,
        6,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    header = header[:10] + struct.pack("!H", ipv4_checksum(header)) + header[12:]
    return header + tcp


# ---------------------------------------------------------------- policy and GeoIP inputs

#: The wall clock of the enforcer tests: policies are compiled and decided at this instant.
POLICY_NOW = datetime(2026, 11, 25, tzinfo=UTC)
#: The relay's own tunnel address in the enforcer tests (ICMP "prohibited" comes from it).
RELAY_GATEWAY4 = ipaddress.IPv4Address("10.100.0.1").packed

#: Group eng may reach 203.0.113.0/24 on TCP 443; everything else is denied.
ENG_WEB_POLICY = """
default: deny
groups:
  eng: []        # members come from certificates (--group eng)
rules:
  - {id: eng-web, action: allow, from: ["group:eng"], to: [203.0.113.0/24], ports: [tcp/443]}
"""


def compile_policy(text: str, *, geoip: bool = False) -> CompiledPolicy:
    """`text` validated and compiled at :data:`POLICY_NOW`."""
    return load_and_compile(text, geoip_available=geoip, now=POLICY_NOW)


def make_enforcer(policy: CompiledPolicy, **kw: Any) -> Enforcer:
    """An enforcer of `policy` for relay "r1" at :data:`RELAY_GATEWAY4`, its clock stopped at
    :data:`POLICY_NOW`; `kw` adds or overrides :class:`Enforcer` arguments."""
    options: dict[str, Any] = {
        "flows": FlowTable(),
        "relay_name": "r1",
        "relay_addresses": frozenset({RELAY_GATEWAY4}),
        "wall_clock": lambda: POLICY_NOW,
        **kw,
    }
    return Enforcer(policy, **options)


def write_geoip_db(path: Path, networks: dict[str, dict[str, Any]], *, ip_version: int = 6) -> Path:
    """A MaxMind DB at `path` mapping each network to its record."""
    writer = MMDBWriter(
        ip_version=ip_version, ipv4_compatible=ip_version == 6, database_type="Test-Country"
    )
    for network, record in networks.items():
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return path


def geoip_country(code: str) -> dict[str, Any]:
    """The GeoIP2-Country record of country `code`."""
    return {"country": {"iso_code": code, "names": {"en": code}}, "continent": {"code": "EU"}}


def make_pki(directory: Path, clients: list[str]) -> Path:
    """A CA, a relay certificate for localhost/127.0.0.1, and client certificates."""
    init_pki(directory)
    for client in clients:
        issue_certificate(directory, "client", client)
    return directory


@dataclass
class RelayUnderTest:
    server: RelayServer
    egress: MemoryPacketDevice
    metrics: RelayMetrics
    port: int
    pki: Path


@contextlib.asynccontextmanager
async def running_relay(
    pki: Path, port: int = 0, **kwargs: object
) -> AsyncIterator[RelayUnderTest]:
    """A relay on 127.0.0.1 (random port) with an in-memory egress device."""
    egress = MemoryPacketDevice("egress-mem")
    metrics = RelayMetrics()
    server = RelayServer(
        configuration=build_server_configuration(
            pki / "relay.pem", pki / "relay.key", max_datagram_size=1452
        ),
        verifier=ChainVerifier(pki / "ca.pem", pki / "crl.pem"),
        pool=AddressPool(
            ipaddress.IPv4Network("10.100.0.0/16"), ipaddress.IPv6Network("fd7a:7a67::/64")
        ),
        metrics=metrics,
        egress=egress,
        **kwargs,  # type: ignore[arg-type]
    )
    _, port = await server.start("127.0.0.1", port)
    try:
        yield RelayUnderTest(server, egress, metrics, port, pki)
    finally:
        await server.close()
        egress.close()


@dataclass
class AgentUnderTest:
    agent: Agent
    device: MemoryPacketDevice
    task: asyncio.Task[None]
    metrics: AgentMetrics

    @property
    def address4(self) -> str:
        info = self.agent.status()
        address: str = next(a for a in info["addresses"] if "." in a)
        return address.split("/")[0]

    async def stop(self) -> None:
        self.agent.stop()
        await asyncio.wait_for(self.task, 10)
        self.device.close()


def agent_settings(
    relay: RelayUnderTest, client: str, mode: PacketMode, **kw: object
) -> AgentSettings:
    values: dict[str, object] = {
        "relay": f"127.0.0.1:{relay.port}",
        "ca": relay.pki / "ca.pem",
        "cert": relay.pki / "clients" / f"{client}.pem",
        "key": relay.pki / "clients" / f"{client}.key",
        "server_name": "localhost",
        "mode": mode,
        "metrics": None,
        "backoff_initial": 0.05,
        "backoff_max": 0.5,
    }
    values.update(kw)
    return AgentSettings(**values)  # type: ignore[arg-type]


async def start_agent(
    relay: RelayUnderTest,
    client: str,
    mode: PacketMode = PacketMode.DATAGRAM,
    *,
    wait: bool = True,
    **kw: object,
) -> AgentUnderTest:
    """An agent on an in-memory device, connected to the relay (awaited)."""
    device = MemoryPacketDevice(f"mem-{client}")
    metrics = AgentMetrics()
    agent = Agent(agent_settings(relay, client, mode, **kw), device, metrics, configure_host=False)
    task = asyncio.create_task(agent.run())
    if wait:
        await asyncio.wait_for(agent.connected.wait(), 10)
    return AgentUnderTest(agent, device, task, metrics)
