"""Fair sharing through one relay: agent B's ping RTT, quiet and while agent A floods.

Run as root from the workspace root:

    uv run --frozen python bench/fairness.py [--seconds 6] [--rounds 2] [--json FILE]

One lab (zgate_lab.lab): a relay, two agents A (agent1) and B (agent2) and the internet host
203.0.113.10. For each queue discipline of ``--queues`` (relay and both agents started with
``--queue Q``; ``default`` starts them without the flag), in rounds (one repetition of each
discipline per round, on freshly started daemons, so a drift in the machine's load spreads
over all of them):

1. B pings the internet host every 20 ms: its quiet RTTs;
2. A sends UDP through the tunnel at ``--rate`` (iperf3 -u, 1200-byte payloads, upload; with
   ``--direction down`` the internet host sends to A instead) for ``--seconds``; once the
   flood has run for a second B pings again: its RTTs under A's flood, and its loss.

The result per discipline: B's quiet and loaded RTT p50/p99 (nearest rank, over all rounds'
pings), loaded p99 / quiet p99, B's ping loss, and what A's flood got through. The issue's
goal is loaded p99 <= 3x quiet p99. On a shared 2-core machine, compare disciplines within
one run (ratios), not across runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from zgate_lab.lab import INET_IP, IPERF_PORT, Daemon, Lab

PING_INTERVAL = 0.02
SLACK = 20


@dataclass
class Result:
    """One discipline's figures over all rounds."""

    queue: str
    quiet_ms: list[float] = field(default_factory=list)
    loaded_ms: list[float] = field(default_factory=list)
    loaded_sent: int = 0
    flood_mbps: list[float] = field(default_factory=list)
    flood_loss_pct: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        quiet99 = percentile(self.quiet_ms, 99)
        loaded99 = percentile(self.loaded_ms, 99)
        lost = self.loaded_sent - len(self.loaded_ms)
        return {
            "queue": self.queue,
            "quiet_p50_ms": percentile(self.quiet_ms, 50),
            "quiet_p99_ms": quiet99,
            "loaded_p50_ms": percentile(self.loaded_ms, 50),
            "loaded_p99_ms": loaded99,
            "p99_ratio": round(loaded99 / quiet99, 2) if quiet99 and loaded99 else None,
            "loaded_ping_loss_pct": round(100.0 * lost / self.loaded_sent, 2)
            if self.loaded_sent
            else None,
            "flood_mbps": median(self.flood_mbps),
            "flood_loss_pct": median(self.flood_loss_pct),
        }


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(pct / 100 * len(ordered))) - 1]


def median(values: list[float]) -> float | None:
    return percentile(values, 50)


def rtts(output: str) -> list[float]:
    return [float(t) for t in re.findall(r"time=([\d.]+) ms", output)]


def ping(lab: Lab, n: int, count: int) -> list[float]:
    """``count`` pings from agent n to the internet host, 20 ms apart: the RTTs (ms)."""
    cmd = ["ping", "-n", "-c", str(count), "-i", str(PING_INTERVAL), "-W", "3", INET_IP]
    proc = lab.ns(lab.agent_ns(n), *cmd, check=False, timeout=count * PING_INTERVAL + SLACK)
    return rtts(proc.stdout)


def flood_with_pings(lab: Lab, seconds: int, rate: str, direction: str, result: Result) -> None:
    """A floods (iperf3 -u at ``rate``); B pings once the flood has run for a second."""
    args = ["-u", "-b", rate, "-l", "1200"] + (["-R"] if direction == "down" else [])
    cmd = ["iperf3", "-c", INET_IP, "-p", str(IPERF_PORT), "-t", str(seconds), "-J", *args]
    with subprocess.Popen(
        ["ip", "netns", "exec", lab.agent_ns(1), *cmd],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            time.sleep(1.0)  # let the flood fill whatever queue it fills
            count = max(10, int((seconds - 2) / PING_INTERVAL))
            result.loaded_ms += ping(lab, 2, count)
            result.loaded_sent += count
            stdout, _ = proc.communicate(timeout=seconds + SLACK)
        finally:
            if proc.poll() is None:
                proc.kill()
    try:
        report = json.loads(stdout)
        end = report["end"]
        summary = end.get("sum_received") or end.get("sum")
        result.flood_mbps.append(summary["bits_per_second"] / 1e6)
        result.flood_loss_pct.append(summary.get("lost_percent", 0.0))
    except (ValueError, KeyError, TypeError):
        print(f"  (iperf3 gave no usable report: {stdout[-300:]!r})", file=sys.stderr)


def queue_flags(queue: str, extra: list[str]) -> list[str]:
    return ([] if queue == "default" else ["--queue", queue]) + extra


def one_round(lab: Lab, queue: str, args: argparse.Namespace, result: Result) -> None:
    relay = lab.start_relay(*queue_flags(queue, args.relay_flag), engine=args.engine)
    daemons: list[Daemon] = [relay]
    try:
        for n in (1, 2):
            daemons.append(
                lab.start_agent(n, engine=args.engine, extra=queue_flags(queue, args.agent_flag))
            )
        ping(lab, 2, 5)  # warm the flow (policy decision, ARP) before measuring
        result.quiet_ms += ping(lab, 2, args.quiet_pings)
        flood_with_pings(lab, args.seconds, args.rate, args.direction, result)
    finally:
        for daemon in reversed(daemons):
            daemon.stop()
            lab.daemons.remove(daemon)


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Agent B's ping RTT through one relay, quiet and while agent A floods "
        "UDP, for each queue discipline in the same run (root; builds its own namespaces)."
    )
    parser.add_argument(
        "--queues",
        default="fifo,fq-codel",
        help="comma-separated --queue values for relay and agents; 'default' runs them "
        "without the flag [fifo,fq-codel]",
    )
    parser.add_argument("--rounds", type=int, default=2, help="repetitions of each [2]")
    parser.add_argument("--seconds", type=int, default=6, help="length of A's flood [6]")
    parser.add_argument("--rate", default="1G", help="A's offered UDP rate (iperf3 -b) [1G]")
    parser.add_argument(
        "--direction",
        choices=("up", "down"),
        default="up",
        help="up: A sends to the internet host; down: the host sends to A [up]",
    )
    parser.add_argument("--quiet-pings", type=int, default=100, help="B's quiet pings [100]")
    parser.add_argument("--engine", default=None, help="--quic-engine for all daemons")
    parser.add_argument(
        "--relay-flag", action="append", default=[], help="extra relay flag (repeatable)"
    )
    parser.add_argument(
        "--agent-flag", action="append", default=[], help="extra agent flag (repeatable)"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("fairness.py: run as root (it builds network namespaces)", file=sys.stderr)
        return 2
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    results = {q: Result(q) for q in queues}
    with tempfile.TemporaryDirectory(prefix="zgate-fair-") as tmp:
        lab = Lab(tag=f"f{os.getpid() % 100000}", workdir=Path(tmp))
        try:
            lab.build(agents=2)
            lab.make_pki(clients=("agent1", "agent2"))
            lab.start_inet_services(blob_size=1024)
            lab.start_iperf_server()
            for r in range(args.rounds):
                for queue in queues:
                    print(f"round {r + 1}/{args.rounds}: {queue}", file=sys.stderr)
                    one_round(lab, queue, args, results[queue])
        finally:
            lab.teardown()
    summaries = [results[q].summary() for q in queues]
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"load average at the end: {' '.join(load)} (2 cores, shared machine)")
    header = "queue       quiet p50/p99 ms   loaded p50/p99 ms   p99 x   B loss %  A Mbit/s"
    print(header)
    for s in summaries:
        print(
            f"{s['queue']:<11} {fmt(s['quiet_p50_ms'])}/{fmt(s['quiet_p99_ms']):<9}"
            f" {fmt(s['loaded_p50_ms'])}/{fmt(s['loaded_p99_ms']):<10}"
            f" {fmt(s['p99_ratio']):>6} {fmt(s['loaded_ping_loss_pct']):>9}"
            f" {fmt(s['flood_mbps']):>9}"
        )
    if args.json:
        document = {"args": vars(args) | {"json": str(args.json)}, "results": summaries}
        document["raw"] = [asdict(results[q]) for q in queues]
        args.json.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return 0


def fmt(value: object) -> str:
    return "-" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    sys.exit(main())
