"""Micro-benchmark of the relay's per-packet path, in one process, no network, no root.

    uv run --frozen python bench/packet_path.py [--packets N] [--quick] [--json FILE]
        [--engine aioquic|qh3|all]

What one 1400-byte TCP data packet costs, measured stage by stage in the same run:
- ``router``: routing from an agent to the egress (source check, destination lookup);
- ``router+flows``: the same with the enforcer and the built-in allow-all policy (flow
  lookup, counters, TCP state);
- ``router+policy1k``: with a 1 000-rule policy (cached per flow, so close to the above);
- ``quic-datagram[ENGINE]``: one packet through a QUIC engine as a CONNECT-IP datagram,
  sender and receiver both: the agent's side as the agent runs it (ClientLink.send_packets,
  the ClientSession, the engine's packet protection) and the relay's session layer
  (the engine, ServerConnection) up to the packet handed to the relay core;
- ``quic-stream[ENGINE]``: the same in stream mode (a DATAGRAM capsule on the CONNECT
  stream);
- ``tun-coalesce``: joining in-sequence TCP segments into super-packets before a TUN write
  (zgate_host.gro, batches of 32 segments of one flow), per segment.
The QUIC stages run once per engine (``--engine``, default all of them), so the same run
gives each engine's per-packet cost. It prints microseconds per packet and each stage's
share of the whole (the datagram path with the default engine). Ratios, not
absolute times, are what compare across machines. `--quick` runs a few thousand packets:
enough for CI to show the script still works, not for figures.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from zgate_agent.link import ClientLink
from zgate_agent.metrics import AgentMetrics
from zgate_host.gro import coalesce
from zgate_pki import ChainVerifier, Identity, init_pki, issue_certificate
from zgate_policy import load_and_compile
from zgate_policy.flows import FlowTable
from zgate_proto.capsules import AddressAssign, AssignedAddress, IPAddressRange, RouteAdvertisement
from zgate_proto.engines import DEFAULT_ENGINE, ENGINES, get_engine
from zgate_proto.engines.base import ClientConfig, QuicConn, ServerConfig
from zgate_proto.session import (
    ClientSession,
    PacketMode,
    ServerConnection,
    SessionRequested,
)
from zgate_proto.session import PacketReceived as ServerPacketReceived
from zgate_relay.enforce import Enforcer
from zgate_relay.policy import BUILTIN_POLICY
from zgate_relay.router import Router

AGENT = bytes([10, 100, 0, 2])
INTERNET = bytes([203, 0, 113, 10])
SERVER_ADDR = ("127.0.0.1", 4433)
CLIENT_ADDR = ("127.0.0.1", 40000)


@dataclass(eq=False)
class Session:
    """The parts of a relay session the router and enforcer read."""

    session_id: str = "s1"
    identity: Identity = field(default_factory=lambda: Identity("client", "c1", None, (), 1))
    raw_addresses: frozenset[bytes] = frozenset({AGENT})


def tcp_packet(flags: int, size: int) -> bytes:
    """An IPv4/TCP packet from the agent to the internet host."""
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, 0, 0x4000, 64, 6, 0, AGENT, INTERNET)
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 1, 1, 0x50, flags, 65535, 0, 0)
    return ip + tcp + bytes(size - 40)


def policy_1k() -> str:
    """1 000 rules that do not match the benchmark's flow, then one that does."""
    lines = ["default: deny", "rules:"]
    for i in range(1000):
        lines.append(
            f"  - {{id: r{i}, action: allow, from: [c{i % 50 + 2}], "
            f"to: [10.{i // 250}.{i % 250}.0/24], ports: [tcp/{1000 + i}]}}"
        )
    lines.append("  - {id: last, action: allow, from: [c1], to: [203.0.113.0/24]}")
    return "\n".join(lines) + "\n"


def router_stage(policy: str | None) -> Callable[[int], float]:
    """Seconds for n packets through Router.from_session (optionally enforcing)."""
    enforcer = None
    if policy is not None:
        compiled = load_and_compile(
            policy, geoip_available=False, now=datetime.datetime.now(datetime.UTC)
        )
        enforcer = Enforcer(compiled, flows=FlowTable(), relay_name="bench")
    router = Router(enforcer)
    session = Session()
    router.attach(session)  # type: ignore[arg-type]
    router.from_session(session, tcp_packet(0x02, 60), 0.0)  # type: ignore[arg-type]
    packet = tcp_packet(0x10, 1400)
    route = router.from_session

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            route(session, packet, 1.0)  # type: ignore[arg-type]
        return time.perf_counter() - start

    return run


class _Discard:
    """The agent's device in the benchmark: packets from the relay go nowhere."""

    def write_batch(self, packets: list[bytes]) -> None:
        pass


def _pki(directory: Path) -> Path:
    init_pki(directory)
    issue_certificate(directory, "client", "bench")
    return directory


def _quic_pair(engine_name: str, pki: Path) -> tuple[QuicConn, QuicConn]:
    """A client and a server connection of one engine, the server made from the client's
    first Initial."""
    engine = get_engine(engine_name)
    client_config = ClientConfig(
        server_name="localhost",
        ca_file=pki / "ca.pem",
        cert_file=pki / "clients" / "bench.pem",
        key_file=pki / "clients" / "bench.key",
        max_datagram_size=1452,
        datagram_queue=1 << 16,
    )
    server_config = ServerConfig(
        cert_file=pki / "relay.pem",
        key_file=pki / "relay.key",
        verifier=ChainVerifier(pki / "ca.pem", pki / "crl.pem"),
        max_datagram_size=1452,
        datagram_queue=1 << 16,
    )
    client = engine.connect(client_config, SERVER_ADDR, 0.0)
    first = client.flush(0.0)
    server = engine.accept(server_config, first[0][0], CLIENT_ADDR, 0.0)
    if server is None:
        raise SystemExit(f"{engine_name}: the server made no connection of the Initial")
    for data, _ in first[1:]:
        server.feed(data, CLIENT_ADDR, 0.0)
    return client, server


def quic_stage(engine_name: str, mode: PacketMode, pki: Path) -> Callable[[int], float]:
    """Seconds for n packets from the agent's link to the relay's session layer."""
    client_quic, server_quic = _quic_pair(engine_name, pki)
    session = ClientSession(
        client_quic, authority="localhost:4433", mode=mode, max_stream_backlog=1 << 30
    )
    link = ClientLink(client_quic, session, _Discard(), AgentMetrics())
    relay = ServerConnection(server_quic, max_stream_backlog=1 << 30)
    arrived = [0]
    clock = [0.0]

    def exchange() -> None:
        now = clock[0]
        for data, _ in link.flush(now):  # what the agent's pump does once per wake-up
            server_quic.feed(data, CLIENT_ADDR, now)
        while (event := server_quic.next_event()) is not None:
            for out in relay.receive(event):
                if type(out) is ServerPacketReceived:
                    arrived[0] += 1
                elif isinstance(out, SessionRequested):
                    relay.accept(out.stream_id, out.mode, _OPEN_CAPSULES)
        for data, _ in server_quic.flush(now):
            link.datagram_received(data, SERVER_ADDR, now)
        clock[0] = now = now + 0.0005
        for conn in (client_quic, server_quic):
            at = conn.deadline()
            if at is not None and at <= now:
                conn.handle_timer(now)

    for _ in range(50):
        exchange()
        if link.ready:
            break
    else:
        raise SystemExit(f"quic-{mode.value}[{engine_name}]: the session did not open")
    packet = tcp_packet(0x10, 1400)
    batch = [packet] * 32  # a batch per wake-up, as the pumps do

    def run(n: int) -> float:
        arrived[0] = 0
        start = time.perf_counter()
        sent = 0
        while sent < n:
            count = min(32, n - sent)
            refused = link.send_packets(batch[:count])
            if refused:
                raise SystemExit(f"quic-{mode.value}[{engine_name}]: packets too big")
            sent += count
            exchange()
        idle = 0
        while idle < 20:  # drain: everything sent must have arrived
            before = arrived[0]
            exchange()
            busy = arrived[0] != before or client_quic.datagrams_queued
            idle = 0 if busy else idle + 1
        elapsed = time.perf_counter() - start
        # Every packet must have arrived, none refused by a full queue.
        if arrived[0] != n:
            raise SystemExit(f"quic-{mode.value}[{engine_name}]: {arrived[0]} of {n} arrived")
        return elapsed

    return run


_OPEN_CAPSULES = [
    AddressAssign((AssignedAddress(0, ipaddress.ip_network("10.100.0.2/32")),)),
    RouteAdvertisement(
        (IPAddressRange(ipaddress.IPv4Address(0), ipaddress.IPv4Address(2**32 - 1), 0),)
    ),
]


def coalesce_stage() -> Callable[[int], float]:
    """TUN-write coalescing of 32-segment batches of one TCP flow, per segment."""
    size, batch = 1400, 32
    segments = []
    for i in range(batch):
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, i, 0x4000, 64, 6, 0, INTERNET, AGENT)
        tcp = struct.pack("!HHIIBBHHH", 5201, 40000, 1 + i * (size - 40), 1, 0x50, 0x10, 512, 0, 0)
        segments.append(ip + tcp + bytes(size - 40))

    def run(n: int) -> float:
        started = time.perf_counter()
        for _ in range(max(1, n // batch)):
            coalesce(segments)
        return (time.perf_counter() - started) * n / (max(1, n // batch) * batch)

    return run


def measure(run: Callable[[int], float], packets: int, repeat: int) -> float:
    """Median microseconds per packet over ``repeat`` runs (after one warm-up)."""
    run(max(100, packets // 10))
    return statistics.median(run(packets) / packets * 1e6 for _ in range(repeat))


def main(argv: list[str] | None = None) -> int:
    """Measure every stage and print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--packets", type=int, default=20000, help="packets per run [20000]")
    parser.add_argument("--repeat", type=int, default=3, help="runs per stage (median) [3]")
    parser.add_argument("--quick", action="store_true", help="a smoke run for CI (no figures)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--engine",
        choices=[*ENGINES, "all"],
        default="all",
        help="the QUIC engine(s) of the quic-* stages [all]",
    )
    args = parser.parse_args(argv)
    packets, repeat = (2000, 1) if args.quick else (args.packets, args.repeat)
    engines = list(ENGINES) if args.engine == "all" else [args.engine]
    with tempfile.TemporaryDirectory(prefix="zgate-bench-") as tmp:
        pki = _pki(Path(tmp) / "pki")
        stages: dict[str, Callable[[int], float]] = {
            "router": router_stage(None),
            "router+flows": router_stage(BUILTIN_POLICY),
            "router+policy1k": router_stage(policy_1k()),
        }
        for engine in engines:
            for mode in (PacketMode.DATAGRAM, PacketMode.STREAM):
                stages[f"quic-{mode.value}[{engine}]"] = quic_stage(engine, mode, pki)
        stages["tun-coalesce"] = coalesce_stage()
        results = {name: round(measure(run, packets, repeat), 3) for name, run in stages.items()}
    reference = DEFAULT_ENGINE if DEFAULT_ENGINE in engines else engines[0]
    total = results["router+flows"] + results[f"quic-datagram[{reference}]"]
    print(f"{'stage':<24}{'us/packet':>10}{'share of datagram path':>26}")
    for name, us in results.items():
        counted = not name.startswith("quic-") or name == f"quic-datagram[{reference}]"
        share = f"{us / total:.1%}" if counted else "-"
        print(f"{name:<24}{us:>10.2f}{share:>26}")
    enforcement = results["router+flows"] - results["router"]
    print(
        f"\nenforcement adds {enforcement:.2f} us/packet = {enforcement / total:.1%} of the "
        f"datagram path's {total:.1f} us with {reference} (relay side; the QUIC figures count "
        f"both ends)"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "us_per_packet": results,
                    "engines": engines,
                    "quick": args.quick,
                    "python": sys.version.split()[0],
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
