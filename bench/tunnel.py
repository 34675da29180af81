"""Benchmark the zgate tunnel against a plain veth path, in throw-away network namespaces.

Run as root from the workspace root:

    uv run --frozen python bench/tunnel.py [--seconds 5] [--repeat 3] [--json FILE]
    uv run --frozen python bench/tunnel.py --quick           # one short round: a comparison
    uv run --frozen python bench/tunnel.py --enforcement     # only what access control costs

One run builds a lab (zgate_lab.lab: agent, relay and "internet" namespaces, plus a direct
agent <-> internet veth in 192.0.2.0/24 as the baseline), then measures these paths:

    veth                      agent ns -> internet host over one veth, no tunnel
    zgate-datagram[ENGINE]    agent (datagram mode) -> relay -> NAT -> internet host
                              (203.0.113.10); the relay enforces its built-in allow-all policy
    zgate-stream[ENGINE]      the same with the agent in stream mode
    wireguard-go              wireguard-go in the same namespaces (bench/wireguard.py)
    zgate-datagram-noenforce[ENGINE]  datagram mode, relay started with --no-enforce
    zgate-datagram-policy1k[ENGINE]   datagram mode, relay enforcing a generated policy of
                              1 000 rules whose rule for the benchmark's traffic comes near the end
    zgate-datagram-fifo[ENGINE]       datagram mode, relay and agent with --queue fifo (one
                              tail-dropping queue, as before issue 14) instead of the default
                              fq-codel: the before/after of fair queueing in the same run

ENGINE is the QUIC engine relay and agent both run (--quic-engine): each zgate path is
measured once per engine of --engines (all of them by default), in the same rounds, so the
engines are compared with each other and with wireguard-go in one run. A zgate path named
without an engine in --paths means it on every engine of --engines.

For each: iperf3 TCP, one stream, upload and download (receiver throughput); ping RTT (mean
and p99 of the per-packet times), alone and while the TCP upload runs; the CPU seconds the relay
and agent processes used during the TCP upload, and the relay's CPU time per packet it moved.
On veth, zgate-datagram and zgate-stream also iperf3 UDP at a fixed offered rate (loss and
received throughput). Each figure is the median over --repeat runs (--baseline-repeat, default
1, on veth). The tunnel paths are measured in rounds, one repetition of each per round and each
on a freshly started relay and agent, so a drift in the machine's load spreads over all of them
instead of biasing one. In the last round zgate-datagram and zgate-stream get a "flood": UDP
from the internet host to the agent far above what the tunnel can carry, with pings alongside,
to show where the excess goes (dropped at a bounded queue, or queued at the cost of latency and
memory). With enforcement off among the paths, the run ends by timing the relay's router
in-process, with and without enforcement: the microseconds enforcement adds to each packet,
and their share of the relay's CPU time per packet. The lab is always torn down, even on Ctrl-C.

With wireguard-go among the paths, the run ends with issue 11's goal for each zgate mode on
each engine: single-stream TCP upload and download at least 1.0x wireguard-go's, ping RTT and
the RTT inside the TCP upload at most 1.5x wireguard-go's.

--loss PCT makes the underlay lossy (nftables drops PCT % of the tunnel's UDP packets each
way at the relay, and of the baseline link's packets): how each mode copes with loss.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from types import FrameType
from typing import TypeVar

# bench/packet_path.py: Python puts this script's directory first on sys.path.
import packet_path
import quiet
import wireguard
import yaml
from path_names import ENFORCEMENT_RATIOS, MODES, WIREGUARD, named, ratio_pairs, split

from zgate_lab.lab import INET_IP, IPERF_PORT, VENV_BIN, Daemon, Lab, have_tools
from zgate_lab.lab import run as run_cmd
from zgate_proto.engines import ENGINES
from zgate_relay.policy import BUILTIN_POLICY


@dataclass(frozen=True)
class PathSpec:
    """How a path is set up and what is measured on it."""

    kind: str  # "veth" (no tunnel), "zgate" or "wireguard" (wireguard-go)
    mode: str | None = None  # zgate: the agent's packet mode
    relay: str = "allow-all"  # zgate: a key of relay_configs(), how the relay is started
    full: bool = True  # also UDP, and the flood (tunnel paths); else TCP and RTT only
    engine: str | None = None  # zgate: the QUIC engine of relay and agent (--quic-engine)
    agent_flags: tuple[str, ...] = ()  # zgate: the agent's extra flags


#: The paths by base name; a zgate path's name also carries its engine (path_spec()).
BASE_SPECS = {
    "veth": PathSpec("veth"),
    "zgate-datagram": PathSpec("zgate", "datagram"),
    "zgate-stream": PathSpec("zgate", "stream"),
    "wireguard-go": PathSpec("wireguard"),
    "zgate-datagram-noenforce": PathSpec("zgate", "datagram", relay="noenforce", full=False),
    "zgate-datagram-policy1k": PathSpec("zgate", "datagram", relay="policy1k", full=False),
    "zgate-datagram-fifo": PathSpec(
        "zgate", "datagram", relay="fifo", agent_flags=("--queue", "fifo")
    ),
}
ZGATE_BASES = tuple(name for name, spec in BASE_SPECS.items() if spec.kind == "zgate")
#: The zgate paths of a plain `make bench`, per engine, beside veth and wireguard-go (the
#: latter only where it is installed).
DEFAULT_ZGATE = MODES
#: What --enforcement selects, per engine: datagram mode with enforcement off, allow-all and
#: 1 000 rules.
ENFORCEMENT_BASES = ("zgate-datagram-noenforce", "zgate-datagram", "zgate-datagram-policy1k")
#: --quick: one short round of TCP and RTT only (explicit --seconds/--repeat still win).
QUICK = {"seconds": 3, "repeat": 1, "light": True}
#: Figures compared in the ratios (higher is better for throughput, lower for RTT).
RATIO_FIELDS = (
    "tcp_mbps",
    "tcp4_mbps",
    "tcp_down_mbps",
    "udp_mbps",
    "rtt_ms",
    "rtt_p99_ms",
    "tcp_rtt_ms",
    "loaded_rtt_ms",
)
#: Issue 11's goal against wireguard-go in the same run: TCP at least this ratio, RTT at most.
WG_TCP_TARGET = 1.0
WG_RTT_TARGET = 1.5


@dataclass(frozen=True)
class Goal:
    """One of issue 11's criteria: a figure's ratio to wireguard-go's, bounded one way."""

    key: str  # in the JSON's targets
    title: str  # in the printed verdicts
    figure: str  # a Sample field, compared as zgate / wireguard-go
    at_least: bool  # the ratio must be >= limit (throughput), else <= limit (latency)
    limit: float

    def met(self, ratio: float | None) -> bool:
        """Whether ``ratio`` meets the goal (a figure not measured does not)."""
        if ratio is None:
            return False
        return ratio >= self.limit if self.at_least else ratio <= self.limit

    @property
    def bound(self) -> str:
        """The goal as written: ">= 1.0"."""
        return f"{'>=' if self.at_least else '<='} {self.limit}"


GOALS = (
    Goal("tcp_up", "TCP up", "tcp_mbps", True, WG_TCP_TARGET),
    Goal("tcp_down", "TCP down", "tcp_down_mbps", True, WG_TCP_TARGET),
    Goal("rtt", "ping RTT", "rtt_ms", False, WG_RTT_TARGET),
    Goal("tcp_rtt", "RTT in TCP", "tcp_rtt_ms", False, WG_RTT_TARGET),
)


def path_spec(name: str) -> PathSpec:
    """How the path called ``name`` is set up: a zgate path must name its engine
    (`zgate-stream[qh3]`), the others must not; ValueError otherwise."""
    base, engine = split(name)
    spec = BASE_SPECS.get(base)
    if spec is None:
        raise ValueError(f"unknown path {name!r}; known: {', '.join(BASE_SPECS)}")
    if spec.kind != "zgate" and engine is not None:
        raise ValueError(f"{name!r}: only zgate paths run on a QUIC engine")
    if spec.kind == "zgate" and engine is None:
        raise ValueError(f"{name!r}: a zgate path names its engine: {base}[{ENGINES[0]}]")
    if engine is not None and engine not in ENGINES:
        raise ValueError(f"{name!r}: unknown QUIC engine; known: {', '.join(ENGINES)}")
    return replace(spec, engine=engine)


def zgate_paths(bases: tuple[str, ...], engines: tuple[str, ...]) -> tuple[str, ...]:
    """``bases`` on each engine, one engine after the other: `zgate-datagram[aioquic]`, ..."""
    return tuple(named(base, engine) for engine in engines for base in bases)


def default_paths(engines: tuple[str, ...]) -> tuple[str, ...]:
    """What a plain `make bench` measures: veth, both modes on each engine, wireguard-go."""
    return ("veth", *zgate_paths(DEFAULT_ZGATE, engines), WIREGUARD)


def expand_paths(names: tuple[str, ...], engines: tuple[str, ...]) -> tuple[str, ...]:
    """--paths resolved: a zgate path without an engine on each of ``engines``; veth first,
    then the zgate paths engine by engine (ENGINES' order), wireguard-go last; ValueError for
    a name path_spec() refuses."""
    out: list[str] = []
    for name in names:
        base, engine = split(name)
        if base in ZGATE_BASES and engine is None:
            out.extend(named(base, e) for e in engines)
        else:
            path_spec(name)
            out.append(name)
    unique = list(dict.fromkeys(out))
    order = {e: i for i, e in enumerate(ENGINES)}

    def rank(name: str) -> tuple[int, int, int]:
        base, engine = split(name)
        if base == "veth":
            return (0, 0, 0)
        if engine is None:
            return (2, 0, list(BASE_SPECS).index(base))
        return (1, order[engine], list(BASE_SPECS).index(base))

    return tuple(sorted(unique, key=rank))


#: Enforcement may cost at most 10 % of the tunnel's throughput (issue 3).
ENFORCEMENT_TARGET = 0.9
POLICY_RULES = 1000
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"
AGENT = 1  # the lab's agent number used for every zgate path
SLACK = 30.0  # seconds a bounded command may run beyond its nominal duration

#: How iperf3 3.12 fails when the single datagram of its UDP set-up is lost (it never resends it).
UDP_SETUP_LOST = "unable to read from stream socket"

T = TypeVar("T")
Figures = dict[str, float | None]
Drops = dict[str, dict[str, float]]  # test -> "relay:<reason>" / "agent:<reason>" -> packets
Rule = dict[str, object]  # one rule of a generated policy document


class BenchError(Exception):
    """A measurement could not be taken; the message says why."""


@dataclass
class Sample:
    """One repetition's figures for one path (None: not measured or not applicable)."""

    tcp_mbps: float | None = None
    tcp4_mbps: float | None = None
    tcp_down_mbps: float | None = None
    udp_mbps: float | None = None
    udp_loss_pct: float | None = None
    rtt_ms: float | None = None
    rtt_p99_ms: float | None = None
    ping_loss_pct: float | None = None
    tcp_rtt_ms: float | None = None
    tcp_rtt_p99_ms: float | None = None
    cpu_relay_s: float | None = None
    cpu_agent_s: float | None = None
    relay_us_per_packet: float | None = None
    flood_mbps: float | None = None
    flood_loss_pct: float | None = None
    loaded_rtt_ms: float | None = None
    loaded_rtt_p99_ms: float | None = None
    loaded_ping_loss_pct: float | None = None


@dataclass
class Target:
    """Where a path's traffic goes and which processes carry it."""

    host: str
    relay_pid: int | None = None  # the relay-side process (zgate's relay or wireguard-go)
    agent_pid: int | None = None  # the agent-side process
    zgate: bool = False  # whether zgate carries the path (its metrics can be read)


# ----------------------------------------------------------------- measurements


def iperf_command(host: str, seconds: int, *args: str) -> list[str]:
    """An iperf3 client command line against the lab's server."""
    cmd = ["iperf3", "-c", host, "-p", str(IPERF_PORT), "-t", str(seconds), "-J"]
    return [*cmd, "--connect-timeout", "5000", *args]


def parse_iperf(stdout: str, stderr: str, what: str) -> dict[str, object]:
    """An iperf3 JSON report, or BenchError with iperf3's own complaint."""
    try:
        report: dict[str, object] = json.loads(stdout)
    except ValueError as exc:
        raise BenchError(f"iperf3 {what}: no JSON report: {stderr.strip()}") from exc
    if "error" in report:
        raise BenchError(f"iperf3 {what}: {report['error']}")
    return report


def iperf(lab: Lab, host: str, seconds: int, *args: str) -> dict[str, object]:
    """Run an iperf3 client in the agent namespace; its parsed JSON report."""
    cmd = iperf_command(host, seconds, *args)
    proc = lab.ns(lab.agent_ns(AGENT), *cmd, check=False, timeout=seconds + SLACK)
    return parse_iperf(proc.stdout, proc.stderr, " ".join(args))


def received(report: dict[str, object]) -> dict[str, float]:
    """The receiver's summary of an iperf3 report."""
    end = report.get("end")
    if not isinstance(end, dict) or not isinstance(end.get("sum_received"), dict):
        raise BenchError("iperf3 report has no end.sum_received")
    return {k: v for k, v in end["sum_received"].items() if isinstance(v, int | float)}


def tcp_mbps(
    lab: Lab, host: str, seconds: int, *, reverse: bool = False, streams: int = 1
) -> float:
    """TCP throughput at the receiver over ``streams`` parallel connections, Mbit/s
    (reverse: host -> agent)."""
    args = (["-R"] if reverse else []) + (["-P", str(streams)] if streams > 1 else [])
    report = iperf(lab, host, seconds, *args)
    return received(report)["bits_per_second"] / 1e6


def retry_lost_udp_setup(test: Callable[[], T]) -> T:
    """Run an iperf3 UDP test, and once more if iperf3's UDP set-up datagram was lost.

    On a lossy path (--loss) that set-up fails now and then before any data flows; it says
    nothing about the tunnel, so it is not worth a failed repetition.
    """
    try:
        return test()
    except BenchError as exc:
        if UDP_SETUP_LOST not in str(exc):
            raise
        return test()


def udp_mbps_and_loss(lab: Lab, host: str, seconds: int, rate: str) -> tuple[float, float]:
    """UDP at a fixed offered rate, 1200-byte payloads: (received Mbit/s, loss %)."""
    report = retry_lost_udp_setup(lambda: iperf(lab, host, seconds, "-u", "-b", rate, "-l", "1200"))
    summary = received(report)
    return summary["bits_per_second"] / 1e6, summary["lost_percent"]


def rtts(ping_output: str) -> list[float]:
    """The per-packet times (ms) in ping's output."""
    return [float(t) for t in re.findall(r"time=([\d.]+) ms", ping_output)]


@contextmanager
def pings_alongside(lab: Lab, host: str, seconds: int) -> Iterator[list[float]]:
    """Ping every 20 ms for about ``seconds`` - 1 s while the block runs; the RTTs are put in
    the yielded list when it ends (a reply that never came is simply absent)."""
    count = max(10, int((seconds - 1) / 0.02))
    cmd = ["ping", "-n", "-c", str(count), "-i", "0.02", "-W", "5", host]
    times: list[float] = []
    with subprocess.Popen(
        ["ip", "netns", "exec", lab.agent_ns(AGENT), *cmd],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as proc:
        try:
            yield times
            stdout, _ = proc.communicate(timeout=seconds + SLACK)
            times.extend(rtts(stdout))
        finally:
            if proc.poll() is None:
                proc.kill()


def ping_times(lab: Lab, host: str, count: int, wait: int = 2) -> tuple[list[float], float]:
    """Per-packet RTTs (ms) of ``count`` pings 20 ms apart, and the loss %."""
    cmd = ["ping", "-n", "-c", str(count), "-i", "0.02", "-W", str(wait), host]
    proc = lab.ns(lab.agent_ns(AGENT), *cmd, check=False, timeout=count * 0.02 + wait + SLACK)
    times = rtts(proc.stdout)
    if not times:
        raise BenchError(f"ping {host}: no reply\n{proc.stdout}{proc.stderr}")
    return times, 100.0 * (count - len(times)) / count


def flood(lab: Lab, host: str, seconds: int, rate: str) -> tuple[float, float, list[float], float]:
    """UDP host -> agent at ``rate`` with pings alongside once the queues have filled.

    Returns (received Mbit/s, loss %, RTTs under load, ping loss %).
    """
    args = ("-u", "-R", "-b", rate, "-l", "1200")
    cmd = ["ip", "netns", "exec", lab.agent_ns(AGENT), *iperf_command(host, seconds, *args)]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            time.sleep(1.0)  # let the flood fill whatever queue it fills first
            pings = max(10, int((seconds - 1.5) / 0.02))
            times, ping_loss = ping_times(lab, host, pings, wait=5)
            stdout, stderr = proc.communicate(timeout=seconds + SLACK)
        finally:
            if proc.poll() is None:
                proc.kill()
    summary = received(parse_iperf(stdout, stderr, " ".join(args)))
    return summary["bits_per_second"] / 1e6, summary["lost_percent"], times, ping_loss


def percentile(values: list[float], pct: float) -> float:
    """The nearest-rank percentile of ``values``."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of a process (all its threads), or None without one."""
    if pid is None:
        return None
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # After "pid (comm)": fields[0] is state (field 3), so utime/stime (14/15) are [11]/[12].
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int | None) -> float | None:
    """The highest resident set size a process has had so far (VmHWM), MiB."""
    if pid is None:
        return None
    match = re.search(r"^VmHWM:\s*(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(match.group(1)) / 1024 if match else None


def python_pid(daemon: Daemon) -> int:
    """The pid of the Python process behind a lab daemon.

    `ip netns exec` execs the command in place, so the Popen pid should already be the
    Python interpreter; this checks it instead of trusting it.
    """
    exe = Path(f"/proc/{daemon.proc.pid}/exe").resolve().name
    if not exe.startswith("python"):
        raise BenchError(f"{daemon.name}: pid {daemon.proc.pid} runs {exe!r}, not Python")
    return daemon.proc.pid


def measure(
    lab: Lab,
    target: Target,
    args: argparse.Namespace,
    drops: Drops,
    *,
    udp: bool = True,
    with_flood: bool = False,
) -> Sample:
    """One repetition of the tests on one path; zgate's drops are added to ``drops``."""
    sample, seconds = Sample(), args.seconds
    with counted(lab, drops, "tcp_up"), pings_alongside(lab, target.host, seconds) as during:
        moved0 = relay_packets(lab) if target.zgate else 0.0
        relay0, agent0 = cpu_seconds(target.relay_pid), cpu_seconds(target.agent_pid)
        sample.tcp_mbps = tcp_mbps(lab, target.host, seconds)
        relay1, agent1 = cpu_seconds(target.relay_pid), cpu_seconds(target.agent_pid)
        moved = relay_packets(lab) - moved0 if target.zgate else 0.0
    if during:
        sample.tcp_rtt_ms = statistics.fmean(during)
        sample.tcp_rtt_p99_ms = percentile(during, 99)
    if relay0 is not None and relay1 is not None:
        sample.cpu_relay_s = relay1 - relay0
        if moved > 0:
            sample.relay_us_per_packet = sample.cpu_relay_s / moved * 1e6
    if agent0 is not None and agent1 is not None:
        sample.cpu_agent_s = agent1 - agent0
    with counted(lab, drops, "tcp_down"):
        sample.tcp_down_mbps = tcp_mbps(lab, target.host, seconds, reverse=True)
    with counted(lab, drops, "tcp4_up"):
        sample.tcp4_mbps = tcp_mbps(lab, target.host, seconds, streams=4)
    if udp:
        with counted(lab, drops, "udp"):
            sample.udp_mbps, sample.udp_loss_pct = udp_mbps_and_loss(
                lab, target.host, seconds, args.udp_rate
            )
    with counted(lab, drops, "ping"):
        times, sample.ping_loss_pct = ping_times(lab, target.host, 50)
    sample.rtt_ms = statistics.fmean(times)
    sample.rtt_p99_ms = percentile(times, 99)
    if with_flood:
        with counted(lab, drops, "flood"):
            sample.flood_mbps, sample.flood_loss_pct, loaded, sample.loaded_ping_loss_pct = (
                retry_lost_udp_setup(
                    lambda: flood(lab, target.host, args.flood_seconds, args.flood_rate)
                )
            )
        sample.loaded_rtt_ms = statistics.fmean(loaded)
        sample.loaded_rtt_p99_ms = percentile(loaded, 99)
    return sample


def median_of(samples: list[Sample]) -> Figures:
    """Field-wise median over the repetitions (None where nothing was measured)."""
    result: Figures = {}
    for name in asdict(Sample()):
        values = [v for s in samples if (v := getattr(s, name)) is not None]
        result[name] = round(statistics.median(values), 3) if values else None
    return result


# ------------------------------------------------------------------ metrics


def labelled(text: str, metric: str, label: str) -> dict[str, float]:
    """All samples of ``metric{label="..."}`` in Prometheus text, keyed by the label value."""
    pattern = re.compile(rf'^{re.escape(metric)}\{{{label}="([^"]*)"\}} (\S+)$', re.M)
    return {key: float(value) for key, value in pattern.findall(text)}


def drop_counters(lab: Lab) -> dict[str, float]:
    """Relay and agent drop counters, keyed "relay:<reason>" / "agent:<reason>"."""
    counters = {
        f"relay:{k}": v
        for k, v in labelled(lab.relay_metrics_text(), "zgate_relay_drops_total", "reason").items()
    }
    agent_text = lab.agent_metrics_text(AGENT)
    for k, v in labelled(agent_text, "zgate_agent_drops_total", "reason").items():
        counters[f"agent:{k}"] = v
    return counters


def relay_packets(lab: Lab) -> float:
    """IP packets the relay has moved so far, from agents and from its TUN device."""
    moved = labelled(lab.relay_metrics_text(), "zgate_relay_packets_total", "direction")
    return moved.get("from_agent", 0.0) + moved.get("from_egress", 0.0)


def increase(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Counters that went up between two snapshots, and by how much."""
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v > before.get(k, 0.0)}


@contextmanager
def counted(lab: Lab, into: Drops, test: str) -> Iterator[None]:
    """Add the drops zgate counts while the block runs to ``into[test]``."""
    before = drop_counters(lab)
    try:
        yield
    finally:
        for key, value in increase(before, drop_counters(lab)).items():
            into.setdefault(test, {})
            into[test][key] = into[test].get(key, 0.0) + value


# ------------------------------------------------------------------- the run


@dataclass
class PathResult:
    """Everything measured on one path."""

    samples: list[Sample]
    errors: list[str]
    drops: Drops
    peak_rss_mb: dict[str, float]  # relay/agent: peak RSS at the end, and its growth
    #: The round (0-based) each sample was measured in: bench/summarize.py pairs paths by it.
    rounds: list[int] = field(default_factory=list)


def memory_growth(target: Target, before: dict[str, float | None]) -> dict[str, float]:
    """Peak RSS of the relay and agent now, and how much it grew since ``before``."""
    out = {}
    for who, pid in (("relay", target.relay_pid), ("agent", target.agent_pid)):
        after, start = peak_rss_mb(pid), before[who]
        if after is not None and start is not None:
            out[who] = round(after, 1)
            out[f"{who}_growth"] = round(after - start, 1)
    return out


def run_path(
    lab: Lab, name: str, target: Target, args: argparse.Namespace, progress: Callable[[str], None]
) -> PathResult:
    """--baseline-repeat repetitions on a path without a tunnel; a failed one is recorded."""
    result = PathResult(samples=[], errors=[], drops={}, peak_rss_mb={})
    for i in range(args.baseline_repeat):
        progress(f"{name}: run {i + 1}/{args.baseline_repeat}")
        try:
            result.samples.append(measure(lab, target, args, result.drops, udp=not args.light))
            result.rounds.append(i)
        except (BenchError, subprocess.TimeoutExpired) as exc:
            result.errors.append(str(exc).splitlines()[0])
            progress(f"{name}: run {i + 1} failed: {exc}")
    return result


def relay_engine(relay: Daemon, starts: int) -> str | None:
    """The QUIC engine the relay says it started on, from the "QUIC engine" record it logs
    before it serves metrics; None before it said so.

    Every relay of a lab appends to the same log file, so the record must be the
    ``starts``-th (``starts``: relays started in this lab so far, this one included).
    """
    said = [r for r in relay.json_log() if r.get("msg") == "QUIC engine"]
    if len(said) != starts:
        return None
    engine = said[-1].get("engine")
    return engine if isinstance(engine, str) else None


def check_engines(
    engine: str, relay_says: str | None, agent_status: dict[str, object] | None
) -> None:
    """BenchError unless relay and agent both run ``engine``: a path's name must say what
    carried its traffic."""
    agent_says = None if agent_status is None else agent_status.get("quic_engine")
    if relay_says != engine or agent_says != engine:
        raise BenchError(
            f"asked for the {engine} engine; the relay says {relay_says}, the agent {agent_says}"
        )


@contextmanager
def tunnel_up(
    lab: Lab,
    mode: str,
    engine: str,
    relay_flags: tuple[str, ...],
    agent_flags: tuple[str, ...] = (),
) -> Iterator[Target]:
    """A freshly started relay (with ``relay_flags``) and agent (in ``mode``, with
    ``agent_flags``), both on ``engine``, stopped on exit."""
    try:
        relay = lab.start_relay(*relay_flags, engine=engine)
    except AssertionError as exc:  # how the lab says a daemon did not come up
        raise BenchError(f"relay {' '.join(relay_flags)} ({engine}): {exc}") from exc
    try:
        try:
            agent = lab.start_agent(AGENT, mode=mode, engine=engine, extra=agent_flags)
        except AssertionError as exc:
            raise BenchError(f"agent ({mode} mode, {engine}): {exc}") from exc
        try:
            status = lab.agent_status(AGENT)
            if status is None or status.get("mode") != mode:
                raise BenchError(f"agent did not come up in {mode} mode: {status}")
            starts = sum(d.name == relay.name for d in lab.daemons)
            check_engines(engine, relay_engine(relay, starts), status)
            yield Target(INET_IP, python_pid(relay), python_pid(agent), zgate=True)
        finally:
            agent.stop()
    finally:
        relay.stop()


@contextmanager
def path_up(lab: Lab, spec: PathSpec, relay_flags: dict[str, tuple[str, ...]]) -> Iterator[Target]:
    """A tunnel path's processes, freshly started, stopped on exit."""
    if spec.kind == "wireguard":
        try:
            with wireguard.wireguard_up(lab, AGENT, INET_IP) as (relay_pid, agent_pid):
                yield Target(INET_IP, relay_pid, agent_pid)
        except AssertionError as exc:  # how the lab says a daemon did not come up
            raise BenchError(f"wireguard-go: {exc}") from exc
        return
    assert spec.mode is not None and spec.engine is not None
    with tunnel_up(
        lab, spec.mode, spec.engine, relay_flags[spec.relay], spec.agent_flags
    ) as target:
        yield target


def run_tunnel_rounds(
    lab: Lab,
    names: list[str],
    relay_flags: dict[str, tuple[str, ...]],
    args: argparse.Namespace,
    progress: Callable[[str], None],
) -> dict[str, PathResult]:
    """--repeat rounds, each measuring every tunnel path once on a fresh relay and agent.

    Interleaving keeps a change in the machine's load from biasing one path (the enforcement
    ratios compare paths a few per cent apart). The last round floods the full paths, and
    their peak RSS is taken from it.
    """
    results = {n: PathResult(samples=[], errors=[], drops={}, peak_rss_mb={}) for n in names}
    for i in range(args.repeat):
        last = i == args.repeat - 1
        for name in names:
            spec, result = path_spec(name), results[name]
            full = spec.full and not args.light
            progress(f"{name}: run {i + 1}/{args.repeat}")
            try:
                with path_up(lab, spec, relay_flags) as target:
                    before = {
                        "relay": peak_rss_mb(target.relay_pid),
                        "agent": peak_rss_mb(target.agent_pid),
                    }
                    sample = measure(
                        lab,
                        target,
                        args,
                        result.drops,
                        udp=full,
                        with_flood=last and full,
                    )
                    result.samples.append(sample)
                    result.rounds.append(i)
                    if last:
                        result.peak_rss_mb = memory_growth(target, before)
            except (BenchError, subprocess.TimeoutExpired) as exc:
                result.errors.append(str(exc).splitlines()[0])
                progress(f"{name}: run {i + 1} failed: {exc}")
    return results


@dataclass
class RunNotes:
    """What a run found out besides the paths' figures."""

    policy_check: str | None = None  # `zgate policy check`'s summary of the generated policy
    router_us: dict[str, float] | None = None  # router_cost()


def relay_configs(lab: Lab, names: list[str], notes: RunNotes) -> dict[str, tuple[str, ...]]:
    """The relay's flags for each kind of path; writes and checks the 1 000-rule policy if a
    path needs it."""
    configs: dict[str, tuple[str, ...]] = {
        "allow-all": (),
        "noenforce": ("--no-enforce",),
        "fifo": ("--queue", "fifo"),
    }
    if any(path_spec(n).relay == "policy1k" for n in names):
        path = lab.workdir / "policy-1k.yaml"
        path.write_text(policy_yaml(POLICY_RULES))
        notes.policy_check = check_policy(path)
        configs["policy1k"] = ("--policy", str(path))
    return configs


def run_benchmark(lab: Lab, args: argparse.Namespace, notes: RunNotes) -> dict[str, PathResult]:
    """Build the lab, measure the selected paths (veth first, then the tunnel rounds), and
    with enforcement off among them, the router's cost per packet in-process."""

    def progress(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    progress(f"building the lab in {lab.workdir}")
    lab.build(agents=1)
    lab.make_pki(clients=(POLICY_CLIENT,))
    plain_host = lab.add_plain_link(AGENT) if "veth" in args.paths else None
    if args.loss:
        progress(f"dropping {args.loss}% of the underlay's packets each way")
        lab.add_underlay_loss(args.loss, AGENT)
    lab.start_iperf_server()
    results = {}
    if plain_host is not None:
        results["veth"] = run_path(lab, "veth", Target(plain_host), args, progress)
    tunnel = [n for n in args.paths if n != "veth"]
    if tunnel:
        flags = relay_configs(lab, tunnel, notes)
        if notes.policy_check:
            progress(notes.policy_check)
        results.update(run_tunnel_rounds(lab, tunnel, flags, args, progress))
    if any(split(n)[0] == "zgate-datagram-noenforce" for n in args.paths):
        progress("the router's cost per packet, in-process")
        notes.router_us = router_cost()
    return {n: results[n] for n in args.paths}


# ------------------------------------------------------------------ the policy

POLICY_CLIENT = f"agent{AGENT}"
#: The CIDRs of the generated rules come from these (never the lab's internet, 203.0.113.0/24,
#: so only the rules written for it can match the benchmark's traffic).
_PRIVATE_V4 = ((10 << 24, 8), (172 << 24 | 16 << 16, 12), (192 << 24 | 168 << 16, 16))
_DOC_V6 = IPv6Network("2001:db8::/32")
_PORT_SPECS = (
    "tcp/443",
    "tcp/80",
    "tcp/22",
    "tcp/3389",
    "tcp/8000-8100",
    "tcp/1024-65535",
    "udp/53",
    "udp/5000-5100",
    "udp/10000-20000",
    "icmp",
)


def _private_cidr(rng: random.Random) -> str:
    """A random network in 10/8, 172.16/12, 192.168/16 or (one in ten) 2001:db8::/32."""
    if rng.random() < 0.1:
        length = rng.choice((48, 56, 64, 128))
        bits = int(_DOC_V6.network_address) | rng.getrandbits(96)
        return str(IPv6Network((bits >> (128 - length) << (128 - length), length)))
    base, prefix = rng.choice(_PRIVATE_V4)
    # Never a whole private range: one rule for everyone would cover most later ones.
    length = max(prefix + 4, rng.choice((16, 20, 24, 24, 24, 28, 32, 32)))
    bits = base | rng.getrandbits(32 - prefix)
    return str(IPv4Network((bits >> (32 - length) << (32 - length), length)))


def _random_rule(rng: random.Random, index: int, users: list[str], groups: list[str]) -> Rule:
    """One rule for a group, a few users or everyone, to a resource or to inline CIDRs."""
    roll = rng.random()
    if roll < 0.55:
        principals = [f"group:{rng.choice(groups)}"]
    elif roll < 0.9:
        principals = rng.sample(users, rng.randint(1, 3))
    else:
        principals = ["*"]
    rule: Rule = {
        "id": f"r{index:04d}",
        "action": "allow" if rng.random() < 0.75 else "deny",
        "from": principals,
    }
    if principals != ["*"] and rng.random() < 0.35:
        rule["to"] = [f"svc{rng.randrange(80)}"]  # resources carry their own ports
    else:
        rule["to"] = [_private_cidr(rng) for _ in range(rng.choice((1, 1, 2)))]
        # Rules for everyone name their ports: an open one would shadow much after it.
        if principals == ["*"] or rng.random() < 0.5:
            rule["ports"] = rng.sample(_PORT_SPECS, rng.randint(1, 2))
    return rule


def policy_document(rules: int, seed: int = 2026) -> dict[str, object]:
    """A realistic policy of ``rules`` rules, the one for the benchmark's traffic third to last.

    400 users in 40 groups (some nested; the agent is in two of them through a nested group),
    80 named resources of private CIDRs with port ranges, rules for groups, users and everyone
    with port ranges, a few rules on the lab's internet for other ports or other groups, and
    inline tests pinning the decisions the benchmark depends on.
    """
    rng = random.Random(seed)
    users = [f"user{i}" for i in range(400)]
    team = [f"team{i}" for i in range(40)]
    groups: dict[str, list[str]] = {g: sorted(rng.sample(users, rng.randint(5, 25))) for g in team}
    for i in range(0, len(team), 8):
        groups[team[i]].append(f"group:{team[i + 1]}")
    groups["bench"] = [POLICY_CLIENT]
    groups[team[1]].append("group:bench")  # the agent is in team1, so in team0 too
    resources: dict[str, object] = {
        f"svc{i}": [
            {"cidr": _private_cidr(rng), "ports": rng.sample(_PORT_SPECS, rng.randint(1, 3))}
            for _ in range(rng.randint(1, 3))
        ]
        for i in range(80)
    }
    ports = [f"tcp/{IPERF_PORT}", f"udp/{IPERF_PORT}", "icmp"]
    resources["bench-target"] = [{"cidr": f"{INET_IP}/32", "ports": ports}]
    body = [_random_rule(rng, i, users, team) for i in range(rules - 3)]
    lab_net = f"{INET_IP.rsplit('.', 1)[0]}.0/24"
    # Rules on the lab's internet that the benchmark's flows must get past.
    body[rules // 3] = {
        "id": "dmz-no-ssh",
        "action": "deny",
        "from": ["*"],
        "to": [lab_net],
        "ports": ["tcp/22", "tcp/3389"],
    }
    body[rules // 2] = {
        "id": "dmz-web",
        "action": "allow",
        "from": ["group:team5"],
        "to": [lab_net],
        "ports": ["tcp/80", "tcp/443"],
    }
    tail: list[Rule] = [
        {"id": "bench-iperf", "action": "allow", "from": ["group:bench"], "to": ["bench-target"]},
        {"id": "deny-smtp", "action": "deny", "from": ["*"], "to": ["*"], "ports": ["tcp/25"]},
        {"id": "dns", "action": "allow", "from": ["*"], "to": ["10.0.0.53"], "ports": ["udp/53"]},
    ]
    target = f"{INET_IP}:{IPERF_PORT}"
    tests = [
        {"from": POLICY_CLIENT, "to": f"tcp://{target}", "expect": "allow", "rule": "bench-iperf"},
        {"from": POLICY_CLIENT, "to": f"udp://{target}", "expect": "allow", "rule": "bench-iperf"},
        {"from": POLICY_CLIENT, "to": f"icmp://{INET_IP}", "expect": "allow"},
        {
            "from": POLICY_CLIENT,
            "to": f"tcp://{INET_IP}:22",
            "expect": "deny",
            "rule": "dmz-no-ssh",
        },
        {"from": "user1", "to": f"tcp://{target}", "expect": "deny", "rule": "default"},
    ]
    return {
        "default": "deny",
        "groups": groups,
        "resources": resources,
        "rules": body + tail,
        "tests": tests,
    }


def policy_yaml(rules: int) -> str:
    """The generated policy as a YAML file."""
    header = f"# Generated by bench/tunnel.py: {rules} rules, the benchmark's own third to last.\n"
    return header + yaml.safe_dump(policy_document(rules), sort_keys=False, width=100)


def check_policy(path: Path) -> str:
    """`zgate policy check` on ``path``: its summary line, or BenchError with its complaint."""
    proc = run_cmd([str(VENV_BIN / "zgate"), "policy", "check", str(path)], check=False)
    if proc.returncode != 0:
        raise BenchError(f"generated policy refused:\n{proc.stdout}{proc.stderr}")
    return proc.stdout.strip()


# ------------------------------------------------------- the router, in-process


def router_cost(packets: int = 20_000, repeat: int = 5) -> dict[str, float]:
    """Microseconds per packet in the relay's router, in this process, per kind of relay:
    a 1400-byte segment of an established TCP flow from the agent through
    `Router.from_session`, as bench/packet_path.py times it (median of ``repeat`` runs).
    The differences between kinds are what enforcement adds to every packet once a flow is
    decided; the policy's size matters only for a flow's first packet.
    """
    kinds = {"noenforce": None, "allow-all": BUILTIN_POLICY, "policy1k": packet_path.policy_1k()}
    return {
        kind: round(packet_path.measure(packet_path.router_stage(policy), packets, repeat), 3)
        for kind, policy in kinds.items()
    }


# ----------------------------------------------------------------- reporting


def ratios(paths: dict[str, Figures]) -> dict[str, Figures]:
    """Each ratio whose two paths were measured (path_names.ratio_pairs), for each figure."""
    out: dict[str, Figures] = {}
    for label, (top, bottom) in ratio_pairs(paths).items():
        out[label] = {}
        for name in RATIO_FIELDS:
            a, b = paths[top].get(name), paths[bottom].get(name)
            out[label][name] = round(a / b, 4) if a is not None and b else None
    return out


def enforcement_cost(
    paths: dict[str, Figures],
    rates: dict[str, Figures],
    router_us: dict[str, float] | None,
) -> dict[str, object]:
    """What enforcement costs: the throughput ratios enforced / not enforced on each engine
    (and whether they meet the target), and from the router's in-process cost, the share of
    the relay's CPU per packet it adds (against the relay's CPU per packet with enforcement
    off, per path without enforcement, in this run)."""
    out: dict[str, object] = {"target_ratio": ENFORCEMENT_TARGET}
    met, measured = True, False
    enforcement_labels = {label for label, _, _ in ENFORCEMENT_RATIOS}
    for label, values in rates.items():
        if label.split("[")[0] not in enforcement_labels:
            continue
        pair = {k: values[k] for k in ("tcp_mbps", "tcp_down_mbps")}
        out[label], measured = pair, True
        met = met and all(v is not None and v >= ENFORCEMENT_TARGET for v in pair.values())
    out["met"] = met if measured else None
    relay_us = {
        name: us
        for name, figures in paths.items()
        if split(name)[0] == "zgate-datagram-noenforce"
        and isinstance(us := figures.get("relay_us_per_packet"), float)
    }
    if router_us is not None:
        out["router_us_per_packet"] = router_us
        out["relay_us_per_packet_noenforce"] = relay_us
        added = {
            kind: round(us - router_us["noenforce"], 3)
            for kind, us in router_us.items()
            if kind != "noenforce"
        }
        out["added_us_per_packet"] = added
        out["share_of_relay_cpu"] = {
            name: {k: round(v / us, 4) for k, v in added.items()}
            for name, us in relay_us.items()
            if us > 0
        }
    return out


def wireguard_targets(paths: dict[str, Figures]) -> dict[str, object]:
    """Issue 11's goal (GOALS) for each zgate mode on each engine measured beside
    wireguard-go: per criterion the ratio zgate / wireguard-go, its bound and whether it is
    met, and whether all of them are."""
    out: dict[str, object] = {}
    baseline = paths.get(WIREGUARD)
    if baseline is None:
        return out
    for name, figures in paths.items():
        base, engine = split(name)
        if base not in MODES:
            continue
        verdict: dict[str, object] = {"mode": base, "engine": engine}
        for goal in GOALS:
            top, bottom = figures.get(goal.figure), baseline.get(goal.figure)
            ratio = round(top / bottom, 4) if top is not None and bottom else None
            verdict[goal.key] = {"ratio": ratio, "goal": goal.bound, "met": goal.met(ratio)}
        verdict["met"] = all(
            isinstance(v := verdict[goal.key], dict) and v["met"] for goal in GOALS
        )
        out[name] = verdict
    return out


def targets_lines(targets: dict[str, object]) -> str | None:
    """Issue 11's goal as a small table, one line per zgate mode and engine, each criterion
    with its ratio and "ok" or "NO"; None without wireguard-go in the run."""
    if not targets:
        return None
    heads = [f"{goal.title} {goal.bound}" for goal in GOALS]
    width = max(len(name) for name in targets) + 2
    lines = [
        f"{'vs wireguard-go (issue 11)':<{width}}"
        + "".join(f"{h:>20}" for h in heads)
        + f"{'goal':>10}"
    ]
    for name, verdict in targets.items():
        assert isinstance(verdict, dict)
        cells = []
        for goal in GOALS:
            criterion = verdict[goal.key]
            cells.append(f"{fmt(criterion['ratio'], 3)}x {'ok' if criterion['met'] else 'NO'}")
        overall = "met" if verdict["met"] else "NOT met"
        lines.append(f"{name:<{width}}" + "".join(f"{c:>20}" for c in cells) + f"{overall:>10}")
    return "\n".join(lines)


def command_version(*cmd: str) -> str:
    """The first line a command prints (for the machine record)."""
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (proc.stdout or proc.stderr).splitlines()[0] if proc.stdout or proc.stderr else ""


def code_version() -> dict[str, object]:
    """The commit the run measured, and the files that differed from it."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            proc = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return proc.stdout.strip() if proc.returncode == 0 else ""

    changed = git("status", "--porcelain", "--untracked-files=no").splitlines()
    return {"commit": git("rev-parse", "--short", "HEAD") or None, "changed": changed}


def competing_processes() -> list[str]:
    """Other zgate, iperf3 or pytest processes on the machine: they would skew the figures."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = " ".join(a.decode(errors="replace") for a in argv if a)
        if re.search(r"zgate-agent|/serve\b|iperf3|pytest", text):
            found.append(text[:160])
    return found


def wait_quiet(timeout: float) -> list[str]:
    """Wait up to ``timeout`` seconds for no competing process and a low load average (see
    bench/quiet.py); the competing processes still running."""
    deadline = time.monotonic() + timeout
    limit = quiet.Thresholds().load_per_cpu_at_start * (os.cpu_count() or 1)
    while time.monotonic() < deadline:
        competing = competing_processes()
        if not competing and quiet.read_loadavg()[0] <= limit:
            return competing
        time.sleep(2)
    return competing_processes()


def machine(load: dict[str, object]) -> dict[str, object]:
    """What the figures were measured on, and how busy it was (`load`: quiet.assess)."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    meminfo = Path("/proc/meminfo").read_text()
    mem_kb = re.search(r"^MemTotal:\s*(\d+)", meminfo, re.M)
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model.group(1) if model else platform.processor(),
        "memory_mb": int(mem_kb.group(1)) // 1024 if mem_kb else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aioquic": metadata.version("aioquic"),
        "qh3": metadata.version("qh3"),
        "iperf3": command_version("iperf3", "--version"),
        "wireguard-go": None if wireguard.available() else wireguard.version(),
        "network": "Linux network namespaces joined by veth pairs (and a bridge); no NIC",
        "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
        "competing_processes_at_start": load["competing_processes_at_start"],
        "competing_processes_at_end": load["competing_processes_at_end"],
        "load": load,
    }


def fmt(value: float | None, digits: int = 1) -> str:
    """A figure for the table ("-" when absent)."""
    return "-" if value is None else f"{value:.{digits}f}"


def table(paths: dict[str, Figures], rates: dict[str, Figures]) -> str:
    """The human-readable summary: the measured paths' figures, then the ratios."""
    columns = [
        ("TCP up Mbit/s", "tcp_mbps", 1),
        ("TCP up x4 Mbit/s", "tcp4_mbps", 1),
        ("TCP down Mbit/s", "tcp_down_mbps", 1),
        ("UDP Mbit/s", "udp_mbps", 1),
        ("UDP loss %", "udp_loss_pct", 2),
        ("RTT ms", "rtt_ms", 3),
        ("RTT p99 ms", "rtt_p99_ms", 3),
        ("RTT in TCP ms", "tcp_rtt_ms", 2),
        ("RTT in TCP p99", "tcp_rtt_p99_ms", 2),
        ("relay CPU s", "cpu_relay_s", 2),
        ("agent CPU s", "cpu_agent_s", 2),
        ("relay us/packet", "relay_us_per_packet", 1),
        ("flood Mbit/s", "flood_mbps", 1),
        ("flood loss %", "flood_loss_pct", 1),
        ("RTT in flood ms", "loaded_rtt_ms", 1),
        ("RTT in flood p99", "loaded_rtt_p99_ms", 1),
    ]
    width = max(len(c[0]) for c in columns)
    widths = {p: max(16, len(p) + 2) for p in paths}
    lines = [f"{'':<{width}}" + "".join(f"{p:>{widths[p]}}" for p in paths)]
    for title, key, digits in columns:
        cells = "".join(f"{fmt(figures[key], digits):>{widths[p]}}" for p, figures in paths.items())
        lines.append(f"{title:<{width}}{cells}")
    if rates:
        # One row per ratio: their labels are too long for columns.
        label_width = max(len(label) for label in rates)
        lines.append("")
        lines.append(f"{'ratio':<{label_width}}" + "".join(f"{f:>14}" for f in RATIO_FIELDS))
        for label, values in rates.items():
            cells = "".join(f"{fmt(values[f], 3):>14}" for f in RATIO_FIELDS)
            lines.append(f"{label:<{label_width}}{cells}")
    return "\n".join(lines)


def enforcement_line(cost: dict[str, object]) -> str | None:
    """A few lines on what enforcement costs, or None when it was not measured."""
    if cost.get("met") is None:
        return None
    parts = []
    for label, pair in cost.items():
        if isinstance(pair, dict) and "tcp_down_mbps" in pair:
            up, down = (fmt(pair[k], 3) for k in ("tcp_mbps", "tcp_down_mbps"))
            parts.append(f"{label} TCP up {up}, down {down}")
    verdict = "met" if cost["met"] else "NOT met in this run (single runs vary by 15-20 %)"
    lines = [f"enforcement: {'; '.join(parts)} (target >= {ENFORCEMENT_TARGET}: {verdict})"]
    added, shares = cost.get("added_us_per_packet"), cost.get("share_of_relay_cpu")
    if isinstance(added, dict):
        per_kind = ", ".join(f"{kind} +{us:.2f} us" for kind, us in added.items())
        lines.append(f"router in-process, per packet: {per_kind}")
        relay_us = cost.get("relay_us_per_packet_noenforce")
        for name, share in shares.items() if isinstance(shares, dict) else ():
            us = relay_us.get(name) if isinstance(relay_us, dict) else None
            of = ", ".join(f"{kind} {100 * v:.1f} %" for kind, v in share.items())
            lines.append(f"  of the relay's {fmt(us, 0)} us per packet on {name}: {of}")
    return "\n".join(lines)


def report(
    results: dict[str, PathResult],
    args: argparse.Namespace,
    notes: RunNotes,
    load: dict[str, object],
    took: float,
) -> dict[str, object]:
    """The JSON document written to --json."""
    paths = {name: median_of(r.samples) for name, r in results.items()}
    rates = ratios(paths)
    return {
        "paths": paths,
        "ratios": rates,
        "enforcement": enforcement_cost(paths, rates, notes.router_us),
        "targets": wireguard_targets(paths),
        "machine": machine(load),
        # False when bench/quiet.py saw load, steal or a slowdown: read the figures with care.
        "quiet": load["quiet"],
        "code": code_version(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": round(took),
        "settings": {
            "seconds": args.seconds,
            "repeat": args.repeat,
            "baseline_repeat": args.baseline_repeat,
            "udp_rate": args.udp_rate,
            "underlay_loss_pct": args.loss,
            "flood_rate": args.flood_rate,
            "flood_seconds": args.flood_seconds,
            "paths": list(args.paths),
            "engines": list(args.engines),
            "light": args.light,
            "quick": args.quick,
            "skipped_paths": args.skipped,
            "policy1k": notes.policy_check,
        },
        "samples": {n: [asdict(s) for s in r.samples] for n, r in results.items()},
        "sample_rounds": {n: r.rounds for n, r in results.items()},
        "errors": {n: r.errors for n, r in results.items() if r.errors},
        "drops": {n: r.drops for n, r in results.items() if r.drops},
        "peak_rss_mb": {n: r.peak_rss_mb for n, r in results.items() if r.peak_rss_mb},
    }


# ---------------------------------------------------------------------- main


@contextmanager
def lab_session(keep: bool) -> Iterator[Lab]:
    """A lab with unique names, torn down on any exit; its workdir kept on failure or --keep."""
    workdir = Path(tempfile.mkdtemp(prefix="zgate-bench-"))
    lab = Lab(tag=f"b{os.getpid() % 100000}", workdir=workdir)
    ok = False
    try:
        yield lab
        ok = True
    finally:
        # A second Ctrl-C must not interrupt the teardown half-way.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            lab.teardown()
        finally:
            signal.signal(signal.SIGINT, previous)
        if ok and not keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"lab logs kept in {workdir}", file=sys.stderr)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the module docstring's layout and show every default."""


def name_list(text: str) -> tuple[str, ...]:
    """--paths: comma-separated path names, each one path_spec() accepts or a zgate path
    without an engine (expand_paths() then puts it on each engine of --engines)."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise argparse.ArgumentTypeError("no path named")
    for name in names:
        try:
            base, engine = split(name)
            if not (base in ZGATE_BASES and engine is None):
                path_spec(name)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return names


def engine_list(text: str) -> tuple[str, ...]:
    """--engines: comma-separated QUIC engines, in ENGINES' order."""
    names = {n.strip() for n in text.split(",") if n.strip()}
    unknown = names - set(ENGINES)
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown QUIC engine {sorted(unknown)}; known: {', '.join(ENGINES)}"
        )
    return tuple(e for e in ENGINES if e in names)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=HelpFormatter,
        epilog="Needs root (namespaces, TUN devices, nftables) and iperf3. On 2 cores the "
        "defaults take about 7 minutes with wireguard-go and both engines (3 rounds of about "
        "2 min 15 s); --quick about 75 s; --enforcement about 45 s per --repeat and engine.",
    )
    parser.add_argument("--seconds", type=int, default=5, help="length of each iperf3 test")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per tunnel path (medians reported)"
    )
    parser.add_argument(
        "--baseline-repeat",
        type=int,
        default=1,
        metavar="N",
        help="runs on the veth path: it is 200 times faster than the tunnel, so one is enough "
        "for the ratios and saves a minute",
    )
    parser.add_argument("--udp-rate", default="50M", help="offered UDP rate (iperf3 -b)")
    parser.add_argument(
        "--flood-rate", default="300M", help="offered rate of the UDP flood toward the agent"
    )
    parser.add_argument("--flood-seconds", type=int, default=3, help="length of the flood")
    parser.add_argument(
        "--loss",
        type=float,
        default=0.0,
        metavar="PCT",
        help="drop PCT %% of the underlay's packets each way (nftables), on every path",
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    parser.add_argument("--keep", action="store_true", help="keep the lab's logs and PKI")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to this long for competing zgate/iperf3/pytest processes to end "
        "and the load average to fall to 0.5 per CPU",
    )
    parser.add_argument(
        "--engines",
        type=engine_list,
        default=",".join(ENGINES),
        metavar="NAME,...",
        help=f"the QUIC engines each zgate path runs on, of: {', '.join(ENGINES)}",
    )
    parser.add_argument(
        "--paths",
        type=name_list,
        default=None,
        metavar="NAME,...",
        help=f"which paths to measure, of: {', '.join(BASE_SPECS)}; a zgate path on each of "
        f"--engines, or on one: zgate-stream[qh3] [default: veth,{','.join(DEFAULT_ZGATE)},"
        f"{WIREGUARD}, without wireguard-go where it is not installed]",
    )
    parser.add_argument(
        "--light", action="store_true", help="TCP and RTT only on every path: no UDP, no flood"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a quick comparison: --seconds {seconds} --repeat {repeat} --light (--seconds "
        "and --repeat given as well win); noisy, for a first look".format(**QUICK),
    )
    parser.add_argument(
        "--enforcement",
        action="store_true",
        help="measure only what access control costs: --light --paths "
        + ",".join(ENFORCEMENT_BASES),
    )
    known, _ = parser.parse_known_args(argv)
    if known.quick:
        parser.set_defaults(**QUICK)
    args = parser.parse_args(argv)
    args.skipped = {}
    if args.enforcement:
        args.paths, args.light = zgate_paths(ENFORCEMENT_BASES, args.engines), True
    elif args.paths is None:
        args.paths = default_paths(args.engines)
        if missing := wireguard.available():
            args.paths = tuple(p for p in args.paths if p != WIREGUARD)
            args.skipped[WIREGUARD] = missing
    else:
        args.paths = expand_paths(args.paths, args.engines)
        if WIREGUARD in args.paths and (missing := wireguard.available()):
            parser.error(f"the wireguard-go path {missing}")
    if not 1 <= args.seconds <= 60 or not 0 <= args.loss <= 50:
        parser.error("--seconds must be 1..60 and --loss 0..50")
    if not 1 <= args.repeat <= 20 or not 1 <= args.baseline_repeat <= 20:
        parser.error("--repeat and --baseline-repeat must be 1..20")
    if not 2 <= args.flood_seconds <= 60:
        parser.error("--flood-seconds must be 2..60")
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # so SIGTERM tears the lab down like Ctrl-C


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 on success, 1 if a path failed entirely, 2 if it cannot run."""
    args = parse_args(argv)
    reason = have_tools() or (None if shutil.which("iperf3") else "needs iperf3")
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    competing = wait_quiet(args.wait_quiet)
    if competing:
        print(
            f"warning: {len(competing)} competing processes; figures will be low:",
            *competing,
            sep="\n  ",
            file=sys.stderr,
        )
    # About a second of how busy the machine is, and the calibration loop, before the lab.
    load_at_start = quiet.snapshot(sample_s=1.0, competing=competing)
    started, notes = time.monotonic(), RunNotes()
    try:
        with lab_session(args.keep) as lab:
            results = run_benchmark(lab, args, notes)
    except KeyboardInterrupt:
        print("interrupted; the lab was torn down", file=sys.stderr)
        return 130
    except (BenchError, RuntimeError, AssertionError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    load = quiet.assess(load_at_start, quiet.snapshot(competing=competing_processes()))
    doc = report(results, args, notes, load, time.monotonic() - started)
    print(table(doc["paths"], doc["ratios"]))  # type: ignore[arg-type]
    if line := enforcement_line(doc["enforcement"]):  # type: ignore[arg-type]
        print(f"\n{line}")
    if line := targets_lines(doc["targets"]):  # type: ignore[arg-type]
        print(f"\n{line}")
    for name, why in args.skipped.items():
        print(f"\n{name} not measured: {why}")
    if doc["errors"]:
        print(f"\nerrors: {json.dumps(doc['errors'], indent=1)}")
    if doc["drops"]:
        print(f"\npackets dropped by zgate: {json.dumps(doc['drops'])}")
    if warn := quiet.warning(load):
        print(f"\n{warn}", file=sys.stderr)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwritten to {args.json}")
    return 1 if any(not r.samples for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
