"""Micro-benchmark of the relay's per-packet path, in one process, no network, no root.

    uv run --frozen python bench/packet_path.py [--packets N] [--quick] [--json FILE]

What one 1400-byte TCP data packet costs, measured stage by stage in the same run:
- ``router``: routing from an agent to the egress (source check, destination lookup);
- ``router+flows``: the same with the enforcer and the built-in allow-all policy (flow
  lookup, counters, TCP state);
- ``router+policy1k``: with a 1 000-rule policy (cached per flow, so close to the above);
- ``quic-datagram``: one packet through aioquic as a CONNECT-IP datagram, sender and
  receiver both (ConnectIpStream.send_packet, packet protection, parsing, HTTP/3);
- ``quic-stream``: the same in stream mode (a DATAGRAM capsule on the CONNECT stream);
- ``tun-coalesce``: joining in-sequence TCP segments into super-packets before a TUN write
  (zgate_host.gro, batches of 32 segments of one flow), per segment.
It prints microseconds per packet and each stage's share of the whole. Ratios, not
absolute times, are what compare across machines. `--quick` runs a few thousand packets:
enough for CI to show the script still works, not for figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aioquic.h3.events import DatagramReceived, DataReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from zgate_host.gro import coalesce
from zgate_pki import Identity
from zgate_policy import load_and_compile
from zgate_policy.flows import FlowTable
from zgate_proto.h3 import ConnectIpH3Connection, ConnectIpStream, PacketMode
from zgate_proto.request import build_connect_ip_request
from zgate_relay.enforce import Enforcer
from zgate_relay.policy import BUILTIN_POLICY
from zgate_relay.router import Router

AGENT = bytes([10, 100, 0, 2])
INTERNET = bytes([203, 0, 113, 10])
ADDR = ("127.0.0.1", 4433)


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


def _quic_pair() -> tuple[QuicConnection, QuicConnection]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    common = {
        "alpn_protocols": ["h3"],
        "max_datagram_frame_size": 65536,
        "max_datagram_size": 1452,
        "max_data": 1 << 30,
        "max_stream_data": 1 << 30,
    }
    server_config = QuicConfiguration(is_client=False, **common)  # type: ignore[arg-type]
    server_config.certificate, server_config.private_key = cert, key
    client_config = QuicConfiguration(is_client=True, server_name="localhost", **common)  # type: ignore[arg-type]
    client_config.load_verify_locations(cadata=cert.public_bytes(Encoding.PEM))
    client = QuicConnection(configuration=client_config)
    server = QuicConnection(
        configuration=server_config,
        original_destination_connection_id=client.original_destination_connection_id,
    )
    client.connect(ADDR, now=0.0)
    return client, server


def quic_stage(mode: PacketMode) -> Callable[[int], float]:
    """Seconds for n packets from an agent's ConnectIpStream to the relay's HTTP/3 layer."""
    client_quic, server_quic = _quic_pair()
    client, server = ConnectIpH3Connection(client_quic), ConnectIpH3Connection(server_quic)
    clock = [0.0]

    def exchange() -> int:
        delivered = 0
        for src, dst, h3 in (
            (client_quic, server_quic, server),
            (server_quic, client_quic, client),
        ):
            for data, _ in src.datagrams_to_send(now=clock[0]):
                dst.receive_datagram(data, ADDR, now=clock[0])
            while (event := dst.next_event()) is not None:
                for h3_event in h3.handle_event(event):
                    if isinstance(h3_event, DatagramReceived | DataReceived):
                        delivered += 1
        clock[0] += 0.0005
        return delivered

    for _ in range(20):
        exchange()
    sid = client_quic.get_next_available_stream_id()
    client.send_headers(sid, build_connect_ip_request("localhost:4433"), end_stream=False)
    exchange()
    server.send_headers(sid, [(b":status", b"200"), (b"capsule-protocol", b"?1")])
    exchange()
    stream = ConnectIpStream(client, sid, mode, max_queued=1 << 20, max_stream_backlog=1 << 30)
    packet = tcp_packet(0x10, 1400)

    def run(n: int) -> float:
        start = time.perf_counter()
        sent = delivered = 0
        while sent < n:
            for _ in range(min(32, n - sent)):  # a batch per wake-up, as the pumps do
                stream.send_packet(packet)
            sent += min(32, n - sent)
            delivered += exchange()
        idle = 0
        while idle < 20:  # drain: everything sent must have arrived
            got = exchange()
            delivered += got
            idle = 0 if got or stream.queue_depth else idle + 1
        elapsed = time.perf_counter() - start
        # Every datagram must have arrived (stream data may come in fewer, larger pieces).
        if mode is PacketMode.DATAGRAM and delivered != n:
            raise SystemExit(f"quic-datagram: {delivered} of {n} packets arrived")
        return elapsed

    return run


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
    args = parser.parse_args(argv)
    packets, repeat = (2000, 1) if args.quick else (args.packets, args.repeat)
    stages = {
        "router": router_stage(None),
        "router+flows": router_stage(BUILTIN_POLICY),
        "router+policy1k": router_stage(policy_1k()),
        "quic-datagram": quic_stage(PacketMode.DATAGRAM),
        "quic-stream": quic_stage(PacketMode.STREAM),
        "tun-coalesce": coalesce_stage(),
    }
    results = {name: round(measure(run, packets, repeat), 3) for name, run in stages.items()}
    total = results["router+flows"] + results["quic-datagram"]
    print(f"{'stage':<18}{'us/packet':>10}{'share of datagram path':>26}")
    for name, us in results.items():
        share = f"{us / total:.1%}" if not name.startswith("quic-stream") else "-"
        print(f"{name:<18}{us:>10.2f}{share:>26}")
    enforcement = results["router+flows"] - results["router"]
    print(
        f"\nenforcement adds {enforcement:.2f} us/packet = {enforcement / total:.1%} of the "
        f"datagram path's {total:.1f} us (relay side; the QUIC figure counts both ends)"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {"us_per_packet": results, "quick": args.quick, "python": sys.version.split()[0]},
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
