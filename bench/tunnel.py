"""Benchmark the zgate tunnel against a plain veth path, in throw-away network namespaces.

Run as root from the workspace root:

    uv run --frozen python bench/tunnel.py [--seconds 5] [--repeat 3] [--json FILE]

One run builds a lab (zgate_cli.lab: agent, relay and "internet" namespaces, plus a direct
agent <-> internet veth in 192.0.2.0/24 as the baseline), then measures three paths:

    veth            agent ns -> internet host over one veth, no tunnel
    zgate-datagram  agent (datagram mode) -> relay -> NAT -> internet host (203.0.113.10)
    zgate-stream    agent (stream mode)   -> relay -> NAT -> internet host

For each: iperf3 TCP, one stream, upload and download (receiver throughput); iperf3 UDP at a
fixed offered rate (loss and received throughput); ping RTT (mean and p99 of the per-packet
times), alone and while the TCP upload runs; and the CPU seconds the relay and agent
processes used during the TCP upload. Each figure is the median over --repeat runs. Once
per tunnel path comes a "flood": UDP from the internet host to the agent far above what the
tunnel can carry, with pings alongside, to show where the excess goes (dropped at a bounded
queue, or queued at the cost of latency and memory). The lab is always torn down, even on
Ctrl-C.

--loss PCT makes the underlay lossy (nftables drops PCT % of the tunnel's UDP packets each
way at the relay, and of the baseline link's packets): how each mode copes with loss.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
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
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import TypeVar

from zgate_cli.lab import INET_IP, IPERF_PORT, Daemon, Lab, have_tools

PATHS = ("veth", "zgate-datagram", "zgate-stream")
#: Figures compared in the ratios (higher is better for throughput, lower for RTT).
RATIO_FIELDS = (
    "tcp_mbps",
    "tcp_down_mbps",
    "udp_mbps",
    "rtt_ms",
    "rtt_p99_ms",
    "tcp_rtt_ms",
    "loaded_rtt_ms",
)
RATIOS = {
    "zgate-datagram/veth": ("zgate-datagram", "veth"),
    "zgate-stream/veth": ("zgate-stream", "veth"),
    "zgate-stream/zgate-datagram": ("zgate-stream", "zgate-datagram"),
}
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"
AGENT = 1  # the lab's agent number used for every zgate path
SLACK = 30.0  # seconds a bounded command may run beyond its nominal duration

#: How iperf3 3.12 fails when the single datagram of its UDP set-up is lost (it never resends it).
UDP_SETUP_LOST = "unable to read from stream socket"

T = TypeVar("T")
Figures = dict[str, float | None]
Drops = dict[str, dict[str, float]]  # test -> "relay:<reason>" / "agent:<reason>" -> packets


class BenchError(Exception):
    """A measurement could not be taken; the message says why."""


@dataclass
class Sample:
    """One repetition's figures for one path (None: not measured or not applicable)."""

    tcp_mbps: float | None = None
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
    flood_mbps: float | None = None
    flood_loss_pct: float | None = None
    loaded_rtt_ms: float | None = None
    loaded_rtt_p99_ms: float | None = None
    loaded_ping_loss_pct: float | None = None


@dataclass
class Target:
    """Where a path's traffic goes and which processes carry it."""

    host: str
    relay_pid: int | None = None
    agent_pid: int | None = None

    @property
    def tunnel(self) -> bool:
        """Whether zgate carries this path (a veth has no queue a flood could fill)."""
        return self.relay_pid is not None


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


def tcp_mbps(lab: Lab, host: str, seconds: int, *, reverse: bool = False) -> float:
    """Single-stream TCP throughput at the receiver, Mbit/s (reverse: host -> agent)."""
    report = iperf(lab, host, seconds, *(["-R"] if reverse else []))
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
    lab: Lab, target: Target, args: argparse.Namespace, drops: Drops, *, with_flood: bool
) -> Sample:
    """One repetition of the tests on one path; zgate's drops are added to ``drops``."""
    sample, seconds = Sample(), args.seconds
    with counted(lab, drops, "tcp_up"), pings_alongside(lab, target.host, seconds) as during:
        relay0, agent0 = cpu_seconds(target.relay_pid), cpu_seconds(target.agent_pid)
        sample.tcp_mbps = tcp_mbps(lab, target.host, seconds)
        relay1, agent1 = cpu_seconds(target.relay_pid), cpu_seconds(target.agent_pid)
    if during:
        sample.tcp_rtt_ms = statistics.fmean(during)
        sample.tcp_rtt_p99_ms = percentile(during, 99)
    if relay0 is not None and relay1 is not None:
        sample.cpu_relay_s = relay1 - relay0
    if agent0 is not None and agent1 is not None:
        sample.cpu_agent_s = agent1 - agent0
    with counted(lab, drops, "tcp_down"):
        sample.tcp_down_mbps = tcp_mbps(lab, target.host, seconds, reverse=True)
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
    """--repeat repetitions on one path; a failed repetition is recorded, not fatal."""
    result = PathResult(samples=[], errors=[], drops={}, peak_rss_mb={})
    before = {"relay": peak_rss_mb(target.relay_pid), "agent": peak_rss_mb(target.agent_pid)}
    for i in range(args.repeat):
        progress(f"{name}: run {i + 1}/{args.repeat}")
        try:
            last = i == args.repeat - 1
            sample = measure(lab, target, args, result.drops, with_flood=last and target.tunnel)
            result.samples.append(sample)
        except (BenchError, subprocess.TimeoutExpired) as exc:
            result.errors.append(str(exc).splitlines()[0])
            progress(f"{name}: run {i + 1} failed: {exc}")
    result.peak_rss_mb = memory_growth(target, before)
    return result


def bench_zgate(
    lab: Lab, mode: str, relay: Daemon, args: argparse.Namespace, progress: Callable[[str], None]
) -> PathResult:
    """Start the agent in ``mode``, measure the tunnel, stop the agent."""
    progress(f"starting the agent in {mode} mode")
    agent = lab.start_agent(AGENT, mode=mode)
    try:
        status = lab.agent_status(AGENT)
        if status is None or status.get("mode") != mode:
            raise BenchError(f"agent did not come up in {mode} mode: {status}")
        target = Target(INET_IP, python_pid(relay), python_pid(agent))
        return run_path(lab, f"zgate-{mode}", target, args, progress)
    finally:
        agent.stop()


def run_benchmark(lab: Lab, args: argparse.Namespace) -> dict[str, PathResult]:
    """Build the lab, then measure the three paths in turn."""

    def progress(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    progress(f"building the lab in {lab.workdir}")
    lab.build(agents=1)
    lab.make_pki(clients=("agent1",))
    plain_host = lab.add_plain_link(AGENT)
    if args.loss:
        progress(f"dropping {args.loss}% of the underlay's packets each way")
        lab.add_underlay_loss(args.loss, AGENT)
    lab.start_iperf_server()
    relay = lab.start_relay()
    results = {"veth": run_path(lab, "veth", Target(plain_host), args, progress)}
    for mode in ("datagram", "stream"):
        results[f"zgate-{mode}"] = bench_zgate(lab, mode, relay, args, progress)
    return results


# ----------------------------------------------------------------- reporting


def ratios(paths: dict[str, Figures]) -> dict[str, Figures]:
    """zgate-datagram/veth, zgate-stream/veth and stream/datagram for each figure."""
    out: dict[str, Figures] = {}
    for label, (top, bottom) in RATIOS.items():
        out[label] = {}
        for name in RATIO_FIELDS:
            a, b = paths[top].get(name), paths[bottom].get(name)
            out[label][name] = round(a / b, 4) if a is not None and b else None
    return out


def command_version(*cmd: str) -> str:
    """The first line a command prints (for the machine record)."""
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (proc.stdout or proc.stderr).splitlines()[0] if proc.stdout or proc.stderr else ""


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
    """Wait up to ``timeout`` seconds for no competing process; those still running."""
    deadline = time.monotonic() + timeout
    while (competing := competing_processes()) and time.monotonic() < deadline:
        time.sleep(2)
    return competing


def machine(competing: list[str]) -> dict[str, object]:
    """What the figures were measured on, and how busy it was."""
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
        "iperf3": command_version("iperf3", "--version"),
        "network": "Linux network namespaces joined by veth pairs (and a bridge); no NIC",
        "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
        "competing_processes_at_start": competing,
        "competing_processes_at_end": competing_processes(),
    }


def fmt(value: float | None, digits: int = 1) -> str:
    """A figure for the table ("-" when absent)."""
    return "-" if value is None else f"{value:.{digits}f}"


def table(paths: dict[str, Figures], rates: dict[str, Figures]) -> str:
    """The human-readable summary."""
    columns = [
        ("TCP up Mbit/s", "tcp_mbps", 1),
        ("TCP down Mbit/s", "tcp_down_mbps", 1),
        ("UDP Mbit/s", "udp_mbps", 1),
        ("UDP loss %", "udp_loss_pct", 2),
        ("RTT ms", "rtt_ms", 3),
        ("RTT p99 ms", "rtt_p99_ms", 3),
        ("RTT in TCP ms", "tcp_rtt_ms", 2),
        ("RTT in TCP p99", "tcp_rtt_p99_ms", 2),
        ("relay CPU s", "cpu_relay_s", 2),
        ("agent CPU s", "cpu_agent_s", 2),
        ("flood Mbit/s", "flood_mbps", 1),
        ("flood loss %", "flood_loss_pct", 1),
        ("RTT in flood ms", "loaded_rtt_ms", 1),
        ("RTT in flood p99", "loaded_rtt_p99_ms", 1),
    ]
    width = max(len(c[0]) for c in columns)
    lines = [f"{'':<{width}}" + "".join(f"{p:>16}" for p in PATHS)]
    for title, key, digits in columns:
        cells = "".join(f"{fmt(paths[p][key], digits):>16}" for p in PATHS)
        lines.append(f"{title:<{width}}{cells}")
    lines.append("")
    lines.append(f"{'ratio':<{width}}" + "".join(f"{label:>28}" for label in rates))
    for field in RATIO_FIELDS:
        cells = "".join(f"{fmt(values[field], 3):>28}" for values in rates.values())
        lines.append(f"{field:<{width}}{cells}")
    return "\n".join(lines)


def report(
    results: dict[str, PathResult], args: argparse.Namespace, competing: list[str], took: float
) -> dict[str, object]:
    """The JSON document written to --json."""
    paths = {name: median_of(r.samples) for name, r in results.items()}
    return {
        "paths": paths,
        "ratios": ratios(paths),
        "machine": machine(competing),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": round(took),
        "settings": {
            "seconds": args.seconds,
            "repeat": args.repeat,
            "udp_rate": args.udp_rate,
            "underlay_loss_pct": args.loss,
            "flood_rate": args.flood_rate,
            "flood_seconds": args.flood_seconds,
        },
        "samples": {n: [asdict(s) for s in r.samples] for n, r in results.items()},
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=HelpFormatter,
        epilog="Needs root (namespaces, TUN devices, nftables) and iperf3. "
        "Defaults take about three minutes.",
    )
    parser.add_argument("--seconds", type=int, default=5, help="length of each iperf3 test")
    parser.add_argument("--repeat", type=int, default=3, help="runs per path (medians reported)")
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
        help="first wait up to this long for competing zgate/iperf3/pytest processes to end",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.seconds <= 60 or not 1 <= args.repeat <= 10 or not 0 <= args.loss <= 50:
        parser.error("--seconds must be 1..60, --repeat 1..10 and --loss 0..50")
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
    started = time.monotonic()
    try:
        with lab_session(args.keep) as lab:
            results = run_benchmark(lab, args)
    except KeyboardInterrupt:
        print("interrupted; the lab was torn down", file=sys.stderr)
        return 130
    except (BenchError, RuntimeError, AssertionError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    doc = report(results, args, competing, time.monotonic() - started)
    print(table(doc["paths"], doc["ratios"]))  # type: ignore[arg-type]
    if doc["errors"]:
        print(f"\nerrors: {json.dumps(doc['errors'], indent=1)}")
    if doc["drops"]:
        print(f"\npackets dropped by zgate: {json.dumps(doc['drops'])}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwritten to {args.json}")
    return 1 if any(not r.samples for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
