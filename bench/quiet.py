"""Was the machine quiet while a benchmark ran? Load, CPU steal and a CPU calibration loop.

A benchmark on a 2-vCPU VM is CPU-bound, so anything else on the machine (another test suite,
a neighbour on the hypervisor) lowers its figures. Looking for competing process names is not
enough: a run whose baseline went at half its usual speed was once called quiet. So a run
records, before and after:

- the load average (`/proc/loadavg`) and, at the start, how busy the CPUs were over about a
  second (`/proc/stat`, minus this process's own time);
- the CPU time stolen by the hypervisor over the whole run (`steal` in `/proc/stat`);
- a fixed, single-threaded CPU loop, timed (best of 3) at the start and at the end: the same
  work, so a slower end means the machine lost speed during the run.

`assess` turns them into `{"quiet": bool, "reasons": [...], ...}` for the result JSON; the
thresholds are in `Thresholds`. Nothing here needs root.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

PROC = Path("/proc")
CALIBRATION_LOOPS = 300_000
CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


@dataclass(frozen=True)
class Thresholds:
    """When a run counts as not quiet."""

    #: Other processes' share of all CPUs over the second before the run, in per cent.
    busy_at_start_pct: float = 25.0
    #: 1-minute load average per CPU at the start (the benchmark itself adds about 1 per CPU).
    load_per_cpu_at_start: float = 0.5
    #: CPU time stolen by the hypervisor over the run, in per cent of all CPU time.
    steal_pct: float = 5.0
    #: The calibration loop at the end over the one at the start.
    slowdown: float = 1.25


@dataclass
class Snapshot:
    """The machine's load at one moment."""

    loadavg: list[float]
    cpu: dict[str, int]
    calibration_s: float
    busy_pct: float | None = None
    competing: list[str] = field(default_factory=list)


def read_loadavg(proc: Path = PROC) -> list[float]:
    """The 1-, 5- and 15-minute load averages."""
    return [float(x) for x in (proc / "loadavg").read_text().split()[:3]]


def read_cpu(proc: Path = PROC) -> dict[str, int]:
    """The machine-wide CPU time counters (the `cpu` line of /proc/stat), in clock ticks."""
    for line in (proc / "stat").read_text().splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:]]
            values += [0] * (len(CPU_FIELDS) - len(values))
            return dict(zip(CPU_FIELDS, values, strict=False))
    raise ValueError("no cpu line in /proc/stat")


def _total(cpu: dict[str, int]) -> int:
    return sum(cpu.values())


def steal_pct(start: dict[str, int], end: dict[str, int]) -> float:
    """Stolen CPU time between two readings, in per cent of all CPU time."""
    total = _total(end) - _total(start)
    return 0.0 if total <= 0 else 100.0 * (end["steal"] - start["steal"]) / total


def busy_pct(start: dict[str, int], end: dict[str, int], own_ticks: float = 0.0) -> float:
    """Non-idle CPU time between two readings, minus `own_ticks`, in per cent of all of it."""
    total = _total(end) - _total(start)
    if total <= 0:
        return 0.0
    idle = (end["idle"] + end["iowait"]) - (start["idle"] + start["iowait"])
    return max(0.0, 100.0 * (total - idle - own_ticks) / total)


def calibrate(loops: int = CALIBRATION_LOOPS, repeat: int = 3) -> float:
    """Seconds for a fixed amount of pure-Python work (best of `repeat`): ~30 ms when idle."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        total = 0
        for i in range(loops):
            total += i * i % 7
        best = min(best, time.perf_counter() - start)
    return best


def snapshot(*, sample_s: float = 0.0, competing: list[str] | None = None) -> Snapshot:
    """Load now; with `sample_s`, also how busy the CPUs were (others only) over that long."""
    cpu_before, own_before = read_cpu(), _own_ticks()
    started = time.monotonic()
    calibration = calibrate()
    busy = None
    if sample_s > 0:
        time.sleep(max(0.0, sample_s - (time.monotonic() - started)))
        busy = busy_pct(cpu_before, read_cpu(), _own_ticks() - own_before)
    return Snapshot(
        loadavg=read_loadavg(),
        cpu=read_cpu(),
        calibration_s=calibration,
        busy_pct=busy,
        competing=list(competing or []),
    )


def _own_ticks() -> float:
    times = os.times()
    return (times.user + times.system) * os.sysconf("SC_CLK_TCK")


def assess(
    start: Snapshot, end: Snapshot, cpus: int | None = None, limits: Thresholds | None = None
) -> dict[str, object]:
    """The run's load record for the JSON, with `quiet` and the reasons it was not."""
    limits = limits or Thresholds()
    cpus = cpus or os.cpu_count() or 1
    steal = steal_pct(start.cpu, end.cpu)
    slowdown = end.calibration_s / start.calibration_s if start.calibration_s > 0 else 1.0
    reasons: list[str] = []
    if start.competing or end.competing:
        count = len(start.competing) + len(end.competing)
        reasons.append(f"{count} competing zgate/iperf3/pytest processes at start or end")
    if start.busy_pct is not None and start.busy_pct > limits.busy_at_start_pct:
        reasons.append(
            f"other processes used {start.busy_pct:.0f} % of the CPUs before the run "
            f"(limit {limits.busy_at_start_pct:g} %)"
        )
    if start.loadavg[0] / cpus > limits.load_per_cpu_at_start:
        reasons.append(
            f"load average {start.loadavg[0]:.2f} at the start on {cpus} CPUs "
            f"(limit {limits.load_per_cpu_at_start:g} per CPU)"
        )
    if steal > limits.steal_pct:
        reasons.append(f"{steal:.1f} % of the CPU time was stolen by the hypervisor")
    if slowdown > limits.slowdown:
        reasons.append(
            f"the calibration loop took {slowdown:.2f}x as long at the end as at the start"
        )
    return {
        "quiet": not reasons,
        "reasons": reasons,
        "thresholds": asdict(limits),
        "loadavg_at_start": start.loadavg,
        "loadavg_at_end": end.loadavg,
        "busy_pct_before_start": None if start.busy_pct is None else round(start.busy_pct, 1),
        "steal_pct": round(steal, 2),
        "calibration_s": {
            "start": round(start.calibration_s, 4),
            "end": round(end.calibration_s, 4),
            "slowdown": round(slowdown, 3),
        },
        "competing_processes_at_start": start.competing,
        "competing_processes_at_end": end.competing,
    }


def warning(record: dict[str, object]) -> str | None:
    """A warning for the terminal when the run was not quiet, else None."""
    if record.get("quiet", True):
        return None
    reasons = record.get("reasons") or []
    assert isinstance(reasons, list)
    return "warning: the machine was NOT quiet; figures may be low:\n  " + "\n  ".join(
        str(r) for r in reasons
    )
