"""Shared pieces for the relay, agent and connector tests: a PKI, a relay on loopback with an
in-memory egress device, agents on in-memory devices, and packet builders.

Test code, not product code: it lives in this dev-only package so that each service's tests
import it by name (``from zgate_lab.harness import ...``) instead of through a ``pythonpath``
setting, and depend on it as they depend on the services it runs."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
import signal
import socket
import struct
from collections.abc import AsyncIterator, Callable, Iterator
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
from zgate_host.pump import Pump
from zgate_pki import Identity
from zgate_policy import CompiledPolicy, load_and_compile
from zgate_policy.flows import FlowTable
from zgate_proto.capsules import Capsule
from zgate_proto.engines import DEFAULT_ENGINE, ENGINES, get_engine
from zgate_proto.engines.base import Address, ClientConfig, QuicConn, ServerConfig
from zgate_proto.ip import ipv4_checksum
from zgate_proto.session import ClientSession, PacketMode, PacketReceived
from zgate_relay.app import run_relay
from zgate_relay.core import RelayCore
from zgate_relay.enforce import Enforcer
from zgate_relay.metrics import RelayMetrics
from zgate_relay.pool import AddressPool
from zgate_relay.pump import RelayPump
from zgate_relay.router import Deliver
from zgate_relay.session import RelaySession
from zgate_relay.settings import RelaySettings
from zgate_testkit.pki import make_pki as make_test_pki
from zgate_testkit.pki import server_config

INTERNET = ipaddress.IPv4Address("203.0.113.10")

#: Every QUIC engine, for tests that run once per engine (``@pytest.fixture(params=...)``).
QUIC_ENGINES = ENGINES


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


def relay_session(*addresses: str) -> RelaySession:
    """A relay session made up for tests of the router, which reads only its addresses."""
    # While the relay core is rebuilt, RelaySession may still want the stream it used to carry.
    fields = {f.name for f in dataclasses.fields(RelaySession)}
    extra: dict[str, Any] = {"stream": None} if "stream" in fields else {}
    s = RelaySession(
        identity=Identity("client", "t", None, (), 1), peer="p", opened_at=0.0, **extra
    )
    s.set_addresses([ipaddress.ip_address(a) for a in addresses])
    return s


def delivered(result: object, to: RelaySession) -> bytes:
    """The packet of the router's Deliver to ``to`` (failing if ``result`` is anything else)."""
    assert isinstance(result, Deliver), result
    assert result.session is to
    return result.packet


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
    return make_test_pki(directory, clients).directory


@dataclass
class RelayUnderTest:
    #: The relay's pump: sessions, status(), check_revocations(), tick(), router, core.
    server: RelayPump
    egress: MemoryPacketDevice
    metrics: RelayMetrics
    port: int
    pki: Path
    engine: str = DEFAULT_ENGINE

    @property
    def core(self) -> RelayCore:
        """The relay's sans-IO core."""
        return self.server.core


def relay_server_config(pki: Path, **kw: Any) -> ServerConfig:
    """The relay's QUIC server configuration for a PKI made by :func:`make_pki`, with the
    relay's own datagram size unless ``kw`` says otherwise."""
    options: dict[str, Any] = {"max_datagram_size": 1452, **kw}
    return server_config(pki, **options)


@contextlib.asynccontextmanager
async def running_relay(
    pki: Path, port: int = 0, *, engine: str = DEFAULT_ENGINE, **kwargs: object
) -> AsyncIterator[RelayUnderTest]:
    """A relay on 127.0.0.1 (random port) with an in-memory egress device, on the QUIC
    ``engine``; ``kwargs`` go to :class:`RelayCore` (sites, connector_deadline, ...)."""
    egress = MemoryPacketDevice("egress-mem")
    metrics = RelayMetrics()
    quic = get_engine(engine)
    config = relay_server_config(pki)
    quic.server_context(config)
    core = RelayCore(
        engine=quic,
        config=config,
        pool=AddressPool(
            ipaddress.IPv4Network("10.100.0.0/16"), ipaddress.IPv6Network("fd7a:7a67::/64")
        ),
        metrics=metrics,
        egress=True,
        **kwargs,  # type: ignore[arg-type]
    )
    server = RelayPump(core, egress)
    _, port = await server.start("127.0.0.1", port)
    try:
        yield RelayUnderTest(server, egress, metrics, port, pki, engine)
    finally:
        await server.close()
        egress.close()


class RawClient:
    """A CONNECT-IP client straight on a QUIC engine and the session core, over loopback
    UDP: for relay tests that must do what an agent would not (send garbage, fall silent,
    advertise routes), without reaching into an agent's internals.

    Packets it receives are kept in :attr:`packets`; every other session event in
    :attr:`events`."""

    def __init__(
        self,
        relay: RelayUnderTest,
        client: str,
        mode: PacketMode = PacketMode.DATAGRAM,
        *,
        engine: str | None = None,
        keepalive: float | None = None,
    ) -> None:
        self.relay = relay
        self.client = client
        self.mode = mode
        self.engine = get_engine(engine or relay.engine)
        self.keepalive = keepalive
        self.packets: asyncio.Queue[bytes] = asyncio.Queue()
        self.events: list[object] = []
        #: While set, nothing is sent (a host that crashed, a cut cable).
        self.silent = False
        self._pump: Pump | None = None
        self._quic: QuicConn | None = None
        self._session: ClientSession | None = None
        self._pinger: asyncio.Task[None] | None = None

    @property
    def quic(self) -> QuicConn:
        assert self._quic is not None, "start() first"
        return self._quic

    @property
    def session(self) -> ClientSession:
        assert self._session is not None, "start() first"
        return self._session

    @property
    def address4(self) -> str:
        """The tunnel IPv4 address the relay assigned."""
        return next(str(a.network_address) for a in self.session.addresses if a.version == 4)

    async def start(self, *, wait: bool = True) -> RawClient:
        """Dial the relay; with ``wait``, until the session is ready."""
        pki = self.relay.pki
        folder = pki / "clients"
        config = ClientConfig(
            server_name="localhost",
            ca_file=pki / "ca.pem",
            cert_file=folder / f"{self.client}.pem",
            key_file=folder / f"{self.client}.key",
            max_datagram_size=1452,
        )
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        self._pump = pump = Pump(sock, self)
        self._quic = self.engine.connect(config, ("127.0.0.1", self.relay.port), pump.now)
        self._session = ClientSession(self._quic, authority="localhost", mode=self.mode)
        pump.wake()
        if self.keepalive is not None:
            self._pinger = asyncio.create_task(self._ping(self.keepalive))
        if wait:
            await until(lambda: self.session.ready, what=f"{self.client}'s session")
        return self

    async def _ping(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.quic.ping()
            self.wake()

    # The pump's endpoint.
    def datagram_received(self, data: bytes, addr: Address, now: float) -> None:
        self.quic.feed(data, addr, now)
        self._drain()

    def handle_timer(self, now: float) -> None:
        self.quic.handle_timer(now)
        self._drain()

    def flush(self, now: float) -> list[tuple[bytes, Address]]:
        datagrams = self.quic.flush(now)
        return [] if self.silent else datagrams

    def deadline(self) -> float | None:
        return self.quic.deadline()

    def _drain(self) -> None:
        while (event := self.quic.next_event()) is not None:
            for session_event in self.session.receive(event):
                if isinstance(session_event, PacketReceived):
                    self.packets.put_nowait(session_event.packet)
                else:
                    self.events.append(session_event)

    def wake(self) -> None:
        """Send what the connection has to send now."""
        if self._pump is not None:
            self._pump.wake()

    def send_packet(self, packet: bytes) -> None:
        self.session.send_packet(packet)
        self.wake()

    def send_capsules(self, capsules: list[Capsule]) -> None:
        self.session.send_capsules(capsules)
        self.wake()

    async def received(self, timeout: float = 5.0) -> bytes:
        """The next packet from the relay."""
        return await asyncio.wait_for(self.packets.get(), timeout)

    def drain(self) -> list[bytes]:
        """Every packet received and not taken yet."""
        out = []
        while not self.packets.empty():
            out.append(self.packets.get_nowait())
        return out

    async def stop(self) -> None:
        """End the session and the connection, and close the socket."""
        if self._pinger is not None:
            self._pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pinger
        if self._pump is not None:
            self.silent = False
            self.session.close()
            self.quic.close(0, "done")
            self._pump.wake()
            self._pump.close()
            self._pump = None


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
    """An agent's settings for `client` of a relay under test."""
    return agent_settings_for(relay.port, relay.pki, client, mode, **kw)


def agent_settings_for(
    port: int, pki: Path, client: str, mode: PacketMode, **kw: object
) -> AgentSettings:
    """An agent's settings for `client` (certificate from `pki`) of a relay on 127.0.0.1:`port`,
    reconnecting quickly, no metrics."""
    values: dict[str, object] = {
        "relay": f"127.0.0.1:{port}",
        "ca": pki / "ca.pem",
        "cert": pki / "clients" / f"{client}.pem",
        "key": pki / "clients" / f"{client}.key",
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


# ------------------------------------------------- the whole relay app (run_relay) in process

#: Bound on any one await of the in-process relay and agent below; each finishes far sooner.
WAIT = 10.0


def free_udp_port() -> int:
    """A loopback UDP port free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LogWatcher(logging.Handler):
    """Collects log messages; ``await wait_for(text)`` until one contains it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(logging.INFO)
        self.loop = loop
        self.records: list[logging.LogRecord] = []
        self.changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.loop.call_soon_threadsafe(self.changed.set)

    def messages(self) -> list[str]:
        """Every message so far (a copy: records may arrive from other threads)."""
        return [r.getMessage() for r in list(self.records)]

    def count(self, text: str) -> int:
        """How many messages contain `text`."""
        return sum(text in m for m in self.messages())

    async def wait_for(self, text: str, count: int = 1) -> None:
        """Until `count` messages contain `text` (TimeoutError after WAIT)."""
        async with asyncio.timeout(WAIT):
            while self.count(text) < count:
                self.changed.clear()
                await self.changed.wait()


@contextlib.contextmanager
def watching_logs(name: str = "zgate") -> Iterator[LogWatcher]:
    """A LogWatcher on logger `name` (at INFO) while the block runs; call it in a loop."""
    watcher = LogWatcher(asyncio.get_running_loop())
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(watcher)
    try:
        yield watcher
    finally:
        logger.removeHandler(watcher)
        logger.setLevel(level)


@dataclass
class RunningRelayApp:
    """run_relay running in this process, with its in-memory egress device."""

    settings: RelaySettings
    egress: MemoryPacketDevice
    task: asyncio.Task[None]

    @property
    def port(self) -> int:
        """The UDP port it listens on."""
        return int(self.settings.listen.rpartition(":")[2])


@contextlib.asynccontextmanager
async def relay_app(settings: RelaySettings) -> AsyncIterator[RunningRelayApp]:
    """run_relay in a task with an in-memory egress device, awaited until ready (what stopped
    it is raised if it stops first); SIGTERM ends it at the end."""
    egress = MemoryPacketDevice("egress-mem")
    ready = asyncio.Event()
    task = asyncio.create_task(run_relay(settings, ready=ready, egress_device=egress))
    try:
        waiter = asyncio.create_task(ready.wait())
        done, _ = await asyncio.wait(
            {task, waiter}, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED
        )
        waiter.cancel()
        if task in done:
            task.result()  # raises what stopped it
        assert ready.is_set(), "the relay did not get ready"
        yield RunningRelayApp(settings, egress, task)
    finally:
        if not task.done():
            # SIGTERM only once run_relay's handler is installed (ready); before that the
            # default action would end the test run itself.
            if ready.is_set():
                os.kill(os.getpid(), signal.SIGTERM)
            else:
                task.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(task, WAIT)
        egress.close()


@contextlib.asynccontextmanager
async def app_agent(running: RunningRelayApp, pki: Path, client: str) -> AsyncIterator[Agent]:
    """An agent of `client` (datagram mode, in-memory device) connected to `running`."""
    settings = agent_settings_for(running.port, pki, client, PacketMode.DATAGRAM)
    device = MemoryPacketDevice(f"mem-{client}")
    tunnel = Agent(settings, device, AgentMetrics(), configure_host=False)
    task = asyncio.create_task(tunnel.run())
    try:
        await asyncio.wait_for(tunnel.connected.wait(), WAIT)
        yield tunnel
    finally:
        tunnel.stop()
        await asyncio.wait_for(task, WAIT)
        device.close()


def address4(tunnel: Agent) -> str:
    """The agent's tunnel IPv4 address."""
    addresses = tunnel.status()["addresses"]
    assert isinstance(addresses, list)
    return str(next(a for a in addresses if "." in a)).split("/")[0]


def device_of(tunnel: Agent) -> MemoryPacketDevice:
    """The agent's in-memory device."""
    device = tunnel.device
    assert isinstance(device, MemoryPacketDevice)
    return device
