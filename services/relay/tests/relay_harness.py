"""Shared pieces for the relay/agent integration tests: a PKI, a relay on loopback with an
in-memory egress device, agents on in-memory devices, and packet builders."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from zgate_agent.app import Agent
from zgate_agent.metrics import AgentMetrics
from zgate_agent.settings import AgentSettings
from zgate_host.memdev import MemoryPacketDevice
from zgate_pki import ChainVerifier, init_pki, issue_certificate
from zgate_proto.h3 import PacketMode
from zgate_proto.ip import ipv4_checksum
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
        return next(a for a in info["addresses"] if "." in a).split("/")[0]

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
