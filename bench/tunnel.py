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
times); and the CPU seconds the relay and agent processes used during the TCP upload. Each
figure is the median over --repeat runs. The lab is always torn down, even on Ctrl-C.
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

from zgate_cli.lab import INET_IP, IPERF_PORT, Daemon, Lab, have_tools

PATHS = ("veth", "zgate-datagram", "zgate-stream")
#: Figures compared in the ratios (higher is better for throughput, lower for RTT).
RATIO_FIELDS = ("tcp_mbps", "tcp_down_mbps", "udp_mbps", "rtt_ms", "rtt_p99_ms")
RATIOS = {
    "zgate-datagram/veth": ("zgate-datagram", "veth"),
    "zgate-stream/veth": ("zgate-stream", "veth"),
    "zgate-stream/zgate-datagram": ("zgate-stream", "zgate-datagram"),
}
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"
AGENT = 1  # the lab's agent number used for every zgate path
SLACK = 30.0  # seconds a bounded command may run beyond its nominal duration

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
    cpu_relay_s: float | None = None
    cpu_agent_s: float | None = None


@dataclass
class Target:
    """Where a path's traffic goes and which processes carry it."""

    host: str
    relay_pid: int | None
    agent_pid: int | None


# ----------------------------------------------------------------- measurements


def iperf(lab: Lab, host: str, seconds: int, *args: str) -> dict[str, object]:
    """Run an iperf3 client in the agent namespace; its parsed JSON report."""
    cmd = ["iperf3", "-c", host, "-p", str(IPERF_PORT), "-t", str(seconds), "-J"]
    cmd += ["--connect-timeout", "5000", *args]
    proc = lab.ns(lab.agent_ns(AGENT), *cmd, check=False, timeout=seconds + SLACK)
    try:
        report: dict[str, object] = json.loads(proc.stdout)
    except ValueError as exc:
        raise BenchError(f"iperf3 {' '.join(args)}: no JSON report: {proc.stderr}") from exc
    if "error" in report:
        raise BenchError(f"iperf3 {' '.join(args)}: {report['error']}")
    return report


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


def udp_mbps_and_loss(lab: Lab, host: str, seconds: int, rate: str) -> tuple[float, float]:
    """UDP at a fixed offered rate, 1200-byte payloads: (received Mbit/s, loss %)."""
    summary = received(iperf(lab, host, seconds, "-u", "-b", rate, "-l", "1200"))
    return summary["bits_per_second"] / 1e6, summary["lost_percent"]


def ping_times(lab: Lab, host: str, count: int) -> tuple[list[float], float]:
    """Per-packet RTTs (ms) of ``count`` pings 20 ms apart, and the loss %."""
    proc = lab.ns(
        lab.agent_ns(AGENT),
        "ping",
        "-n",
        "-c",
        str(count),
        "-i",
        "0.02",
        "-W",
        "2",
        host,
        check=False,
        timeout=count * 0.02 + SLACK,
    )
    times = [float(t) for t in re.findall(r"time=([\d.]+) ms", proc.stdout)]
    if not times:
        raise BenchError(f"ping {host}: no reply\n{proc.stdout}{proc.stderr}")
    return times, 100.0 * (count - len(times)) / count


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


def python_pid(daemon: Daemon) -> int:
    """The pid of the Python process behind a lab daemon.

    `ip netns exec` execs the command in place, so the Popen pid should already be the
    Python interpreter; this checks it instead of trusting it.
    """
    exe = Path(f"/proc/{daemon.proc.pid}/exe").resolve().name
    if not exe.startswith("python"):
        raise BenchError(f"{daemon.name}: pid {daemon.proc.pid} runs {exe!r}, not Python")
    return daemon.proc.pid


def measure(lab: Lab, target: Target, seconds: int, rate: str, drops: Drops) -> Sample:
    """One repetition of every test on one path; zgate's drops are added to ``drops``."""
    sample = Sample()
    with counted(lab, drops, "tcp_up"):
        relay0, agent0 = cpu_seconds(target.relay_pid), cpu_seconds(target.agent_pid)
        sample.tcp_mbps = tcp_mbps(lab, target.host, seconds)
        relay1, agent1 = cpu_seconds(target.relay_pid), cpu_seconds(target.agent_pid)
    if relay0 is not None and relay1 is not None:
        sample.cpu_relay_s = relay1 - relay0
    if agent0 is not None and agent1 is not None:
        sample.cpu_agent_s = agent1 - agent0
    with counted(lab, drops, "tcp_down"):
        sample.tcp_down_mbps = tcp_mbps(lab, target.host, seconds, reverse=True)
    with counted(lab, drops, "udp"):
        sample.udp_mbps, sample.udp_loss_pct = udp_mbps_and_loss(lab, target.host, seconds, rate)
    with counted(lab, drops, "ping"):
        times, sample.ping_loss_pct = ping_times(lab, target.host, 50)
    sample.rtt_ms = statistics.fmean(times)
    sample.rtt_p99_ms = percentile(times, 99)
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


def run_path(
    lab: Lab, name: str, target: Target, args: argparse.Namespace, progress: Callable[[str], None]
) -> PathResult:
    """--repeat repetitions on one path; a failed repetition is recorded, not fatal."""
    result = PathResult(samples=[], errors=[], drops={})
    for i in range(args.repeat):
        progress(f"{name}: run {i + 1}/{args.repeat}")
        try:
            result.samples.append(measure(lab, target, args.seconds, args.udp_rate, result.drops))
        except (BenchError, subprocess.TimeoutExpired) as exc:
            result.errors.append(str(exc).splitlines()[0])
            progress(f"{name}: run {i + 1} failed: {exc}")
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
    lab.start_iperf_server()
    relay = lab.start_relay()
    results = {"veth": run_path(lab, "veth", Target(plain_host, None, None), args, progress)}
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
        ("relay CPU s", "cpu_relay_s", 2),
        ("agent CPU s", "cpu_agent_s", 2),
    ]
    width = max(len(c[0]) for c in columns)
    lines = [f"{'':<{width}}" + "".join(f"{p:>16}" for p in PATHS)]
    for title, key, digits in columns:
        cells = "".join(f"{fmt(paths[p][key], digits):>16}" for p in PATHS)
        lines.append(f"{title:<{width}}{cells}")
    lines.append("")
    lines.append(f"{'ratio':<28}" + "".join(f"{f:>14}" for f in RATIO_FIELDS))
    for label, values in rates.items():
        lines.append(f"{label:<28}" + "".join(f"{fmt(values[f], 3):>14}" for f in RATIO_FIELDS))
    return "\n".join(lines)


def report(
    results: dict[str, PathResult], args: argparse.Namespace, competing: list[str]
) -> dict[str, object]:
    """The JSON document written to --json."""
    paths = {name: median_of(r.samples) for name, r in results.items()}
    return {
        "paths": paths,
        "ratios": ratios(paths),
        "machine": machine(competing),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {"seconds": args.seconds, "repeat": args.repeat, "udp_rate": args.udp_rate},
        "samples": {n: [asdict(s) for s in r.samples] for n, r in results.items()},
        "errors": {n: r.errors for n, r in results.items() if r.errors},
        "drops": {n: r.drops for n, r in results.items() if r.drops},
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Needs root (namespaces, TUN devices, nftables) and iperf3. "
        "Defaults take about three minutes.",
    )
    parser.add_argument("--seconds", type=int, default=5, help="length of each iperf3 test")
    parser.add_argument("--repeat", type=int, default=3, help="runs per path (medians reported)")
    parser.add_argument("--udp-rate", default="50M", help="offered UDP rate (iperf3 -b)")
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
    if not 1 <= args.seconds <= 60 or not 1 <= args.repeat <= 10:
        parser.error("--seconds must be 1..60 and --repeat 1..10")
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
    try:
        with lab_session(args.keep) as lab:
            results = run_benchmark(lab, args)
    except KeyboardInterrupt:
        print("interrupted; the lab was torn down", file=sys.stderr)
        return 130
    except (BenchError, RuntimeError, AssertionError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    doc = report(results, args, competing)
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
