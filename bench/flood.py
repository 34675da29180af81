"""A handshake flood against the relay, before and after its front door, in one run.

Run as root from the workspace root:

    uv run --frozen python bench/flood.py [--rate 20000] [--seconds 5] [--json FILE]

One lab (zgate_lab.lab): a relay, agent 1 connected and pinging the internet host
203.0.113.10 through its tunnel, and agent namespace 3 (no agent) as the attacker: it sends
forged QUIC v1 Initials (zgate_lab.flood: 1200 bytes, a new connection ID each, a real
ClientHello inside; forged before the measurement, then only sent) at ``--rate`` for
``--seconds``: the issue's flood is 20 000/s for 5 s.

For each variant of ``--variants`` (a fresh relay and agent each, in the order given):

- ``before``: the relay as main was before issue 14: no Retry, no limits, no handshake
  deadline (``--retry never``, every limit 0) and one FIFO where datagrams wait
  (``--queue fifo``);
- ``door-off``: the front door off as in ``before``, the rest of the relay's defaults
  (fq-codel queues);
- ``after``: the relay's defaults;
- ``after-smallbuf``: the defaults but the kernel's default socket receive buffer
  (``--udp-receive-buffer=0``, as before) instead of 4 MiB;

it measures: the agent's ping RTT p50/p99 quiet (``--quiet`` s) and during the flood (from
its start to one second after its end), the ping loss during the flood, the relay's RSS
before, at its peak (sampled every 0.1 s) and ``--settle`` s after the flood, the relay's
CPU during the flood, the kernel's UDP receive-buffer drops in the relay's namespace, and the
relay's front-door counters (connections made, Retry packets, drops by reason).

The machine has two cores, which the relay, the agent, the pinger and the flood's sender
share (and, on a shared machine, other work): compare the variants of one run.
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
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from zgate_lab.lab import INET_IP, RELAY_LAN_IP, Daemon, Lab, metric_value

PING_INTERVAL = 0.02
FLOOD_NS_AGENT = 3
CLK_TCK = os.sysconf("SC_CLK_TCK")

#: Relay flags per variant (see the module docstring).
DOOR_OFF = (
    "--retry=never",
    "--max-half-open=0",
    "--max-half-open-per-source=0",
    "--new-connections-per-source=0",
    "--handshake-deadline=0",
)
VARIANTS: dict[str, tuple[str, ...]] = {
    "before": (*DOOR_OFF, "--queue=fifo"),
    "door-off": DOOR_OFF,
    "after": (),
    "after-smallbuf": ("--udp-receive-buffer=0",),
}
DROP_REASONS = (
    "source_rate",
    "half_open_full",
    "source_half_open",
    "short_dcid",
    "malformed_token",
    "bad_token",
    "expired_token",
    "handshake_timeout",
)


@dataclass
class Figures:
    """One variant's measurements."""

    variant: str
    relay_flags: list[str]
    quiet_ms: list[float] = field(default_factory=list)
    flood_ms: list[float] = field(default_factory=list)
    flood_pings_sent: int = 0
    flood: dict[str, float] = field(default_factory=dict)
    rss_before_mb: float = 0.0
    rss_peak_mb: float = 0.0
    rss_after_mb: float = 0.0
    relay_cpu_pct: float = 0.0
    udp_rcvbuf_errors: int = 0
    counters: dict[str, float] = field(default_factory=dict)
    agent_alive: bool = True

    def summary(self) -> dict[str, object]:
        quiet99 = percentile(self.quiet_ms, 99)
        flood99 = percentile(self.flood_ms, 99)
        lost = self.flood_pings_sent - len(self.flood_ms)
        return {
            "variant": self.variant,
            "relay_flags": self.relay_flags,
            "flood_sent": self.flood.get("sent"),
            "flood_rate": self.flood.get("rate"),
            "quiet_p50_ms": percentile(self.quiet_ms, 50),
            "quiet_p99_ms": quiet99,
            "flood_p50_ms": percentile(self.flood_ms, 50),
            "flood_p99_ms": flood99,
            "p99_ratio": round(flood99 / quiet99, 2) if quiet99 and flood99 else None,
            "ping_loss_pct": round(100.0 * lost / self.flood_pings_sent, 2)
            if self.flood_pings_sent
            else None,
            "rss_before_mb": round(self.rss_before_mb, 1),
            "rss_peak_mb": round(self.rss_peak_mb, 1),
            "rss_after_mb": round(self.rss_after_mb, 1),
            "relay_cpu_pct": round(self.relay_cpu_pct, 1),
            "udp_rcvbuf_errors": self.udp_rcvbuf_errors,
            "counters": self.counters,
            "agent_alive": self.agent_alive,
        }


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(pct / 100 * len(ordered))) - 1]


def rss_mb(pid: int) -> float:
    match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(match.group(1)) / 1024 if match else 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def udp_rcvbuf_errors(lab: Lab) -> int:
    snmp = lab.ns(lab.relay_ns, "cat", "/proc/net/snmp").stdout.splitlines()
    names, values = [line.split() for line in snmp if line.startswith("Udp:")][:2]
    return int(values[names.index("RcvbufErrors")])


def ping(lab: Lab, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", lab.agent_ns(1), "ping", "-n", "-c", str(count), "-i",
         str(PING_INTERVAL), "-W", "2", INET_IP],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def rtts(output: str) -> list[float]:
    return [float(m) for m in re.findall(r"time=([\d.]+) ms", output)]


def attacker_addresses(lab: Lab, count: int) -> list[str]:
    """``count`` addresses on the attacker's LAN interface (198.51.100.100 on); [] for one
    (it sends from its own)."""
    if count == 1:
        return []
    dev = f"a{FLOOD_NS_AGENT}{lab.tag}"
    addresses = [f"198.51.100.{100 + i}" for i in range(count)]
    for address in addresses:
        lab.ns(lab.agent_ns(FLOOD_NS_AGENT), "ip", "addr", "add", f"{address}/24", "dev", dev)
    return addresses


def start_flood(lab: Lab, rate: float, seconds: float, sources: list[str]) -> subprocess.Popen[str]:
    """The flood's sender in the attacker's namespace, forged and waiting for "go"."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", lab.agent_ns(FLOOD_NS_AGENT), sys.executable, "-m",
         "zgate_lab.flood", "--target", f"{RELAY_LAN_IP}:4433", "--rate", str(rate),
         "--duration", str(seconds), "--go-on-stdin",
         *(f"--source={s}" for s in sources)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "forged" not in line:
        raise RuntimeError(f"the flood did not start: {line!r}")
    return proc


def one_variant(lab: Lab, name: str, args: argparse.Namespace) -> Figures:
    flags = [*VARIANTS[name], *args.relay_flag]
    figures = Figures(name, flags)
    relay: Daemon = lab.start_relay(*flags, "--no-dns")
    agent = lab.start_agent(1)
    try:
        pid = relay.proc.pid
        quiet = ping(lab, int(args.quiet / PING_INTERVAL))
        figures.quiet_ms = rtts(quiet.communicate(timeout=args.quiet + 30)[0])
        flood = start_flood(lab, args.rate, args.seconds, args.source_ips)
        figures.rss_before_mb = rss_mb(pid)
        peak = [figures.rss_before_mb]
        done = threading.Event()

        def watch() -> None:
            while not done.wait(0.1):
                peak[0] = max(peak[0], rss_mb(pid))

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        udp0, cpu0, t0 = udp_rcvbuf_errors(lab), cpu_seconds(pid), time.monotonic()
        figures.flood_pings_sent = int((args.seconds + 1) / PING_INTERVAL)
        pinger = ping(lab, figures.flood_pings_sent)
        assert flood.stdin is not None
        flood.stdin.write("go\n")
        flood.stdin.flush()
        out, _ = flood.communicate(timeout=args.seconds + 120)
        cpu1, t1 = cpu_seconds(pid), time.monotonic()
        figures.flood = json.loads(out.strip().splitlines()[-1])
        figures.flood_ms = rtts(pinger.communicate(timeout=60)[0])
        figures.relay_cpu_pct = 100.0 * (cpu1 - cpu0) / (t1 - t0)
        figures.udp_rcvbuf_errors = udp_rcvbuf_errors(lab) - udp0
        text = lab.relay_metrics_text()
        counters = {
            f"{o}": metric_value(text, "zgate_relay_front_door_total", outcome=o)
            for o in ("accepted", "retry_sent", "validated")
        }
        counters |= {
            f"drop_{r}": metric_value(text, "zgate_relay_handshake_drops_total", reason=r)
            for r in DROP_REASONS
        }
        counters["half_open_at_end"] = metric_value(text, "zgate_relay_half_open_connections")
        figures.counters = {k: v for k, v in counters.items() if v}
        time.sleep(args.settle)
        done.set()
        watcher.join()
        figures.rss_peak_mb = peak[0]
        figures.rss_after_mb = rss_mb(pid)
        figures.agent_alive = agent.proc.poll() is None
    finally:
        agent.stop()
        relay.stop()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Needs root (network namespaces, TUN, nftables). See the module docstring.",
    )
    parser.add_argument("--rate", type=float, default=20000, help="forged Initials/s [20000]")
    parser.add_argument("--seconds", type=float, default=5.0, help="flood duration [5]")
    parser.add_argument("--quiet", type=float, default=3.0, help="quiet pinging, s [3]")
    parser.add_argument(
        "--settle", type=float, default=5.0, help="s after the flood for 'RSS after' [5]"
    )
    parser.add_argument(
        "--variants",
        default="before,door-off,after",
        help=f"comma-separated, from {', '.join(VARIANTS)} [before,door-off,after]",
    )
    parser.add_argument(
        "--relay-flag",
        action="append",
        default=[],
        metavar="FLAG",
        help="one more relay flag for every variant (repeatable), "
        "e.g. --relay-flag=--quic-engine=aioquic",
    )
    parser.add_argument(
        "--sources",
        type=int,
        default=1,
        help="source addresses the flood comes from, in turn (up to 100; more than one "
        "shows Retry at work, which per-source limits alone cannot stop) [1]",
    )
    parser.add_argument(
        "--json", type=Path, default=Path("bench/results/flood.json"), help="[%(default)s]"
    )
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not 0 < args.seconds <= 30 or not 0 < args.rate <= 100000:
        parser.error(f"unknown variants {unknown}" if unknown else "rate 1-100000, seconds 1-30")
    if not 1 <= args.sources <= 100:
        parser.error("--sources: 1 to 100")
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces)")
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="zgate-flood-") as tmp:
        lab = Lab(tag=f"fl{os.getpid() % 100000}", workdir=Path(tmp))
        try:
            lab.build(agents=FLOOD_NS_AGENT)
            lab.make_pki(clients=("agent1",))
            lab.start_inet_services()
            args.source_ips = attacker_addresses(lab, args.sources)
            for name in variants:
                print(f"-- {name} ...", flush=True)
                summary = one_variant(lab, name, args).summary()
                results.append(summary)
                print(json.dumps(summary), flush=True)
        finally:
            lab.teardown()
    print()
    print(f"{'variant':10} {'loss%':>6} {'p50 q/f ms':>14} {'p99 q/f ms':>16} {'x':>6} "
          f"{'RSS before/peak/after MB':>26} {'CPU%':>5} {'rcvbuf':>7}")  # fmt: skip
    for r in results:
        print(
            f"{r['variant']:10} {fmt(r['ping_loss_pct']):>6} "
            f"{fmt(r['quiet_p50_ms'])}/{fmt(r['flood_p50_ms']):>7} "
            f"{fmt(r['quiet_p99_ms'])}/{fmt(r['flood_p99_ms']):>8} {fmt(r['p99_ratio']):>6} "
            f"{r['rss_before_mb']}/{r['rss_peak_mb']}/{r['rss_after_mb']:>14} "
            f"{r['relay_cpu_pct']:>5} {r['udp_rcvbuf_errors']:>7}"
        )
        print(f"{'':10} {r['counters']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "args": vars(args) | {"json": str(args.json)},
        "machine": {"cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg()},
        "results": results,
    }
    args.json.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"\nwritten to {args.json}")
    return 0


def fmt(value: object) -> str:
    return "-" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    sys.exit(main())
