"""The benchmark scripts still run (a smoke run: no figure is asserted)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_packet_path_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "packet_path.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "packet_path.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    stages = json.loads(out.read_text())["us_per_packet"]
    # The QUIC stages are timed once per engine ("quic-datagram[qh3]") or once in all.
    quic = {stage for stage in stages if stage.startswith("quic-")}
    assert set(stages) - quic == {"router", "router+flows", "router+policy1k", "tun-coalesce"}
    assert {stage.split("[")[0] for stage in quic} == {"quic-datagram", "quic-stream"}
    assert all(value > 0 for value in stages.values())
    assert "enforcement adds" in proc.stdout


def _load(name: str) -> ModuleType:
    """A bench/ script as a module (bench/ on sys.path, as when Python runs the script)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


POLICY_QUICK = [sys.executable, str(BENCH / "policy.py"), "--seconds", "0.1", "--rounds", "1"]


def test_policy_benchmark_decides_one_workload_for_every_size(tmp_path: Path) -> None:
    out = tmp_path / "policy.json"
    proc = subprocess.run(
        [*POLICY_QUICK, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert [r["rules"] for r in report["results"]] == [10, 1_000, 10_000]
    flows = report["settings"]["flows"]
    assert all(r["allow"] + r["deny"] + r["default"] == flows for r in report["results"])
    assert "the same" in report["settings"]["workload"]
    assert isinstance(report["quiet"], bool)
    assert {"loadavg_at_start", "steal_pct", "calibration_s"} <= set(report["machine"]["load"])


def test_policy_sizes_share_their_rules_and_flows() -> None:
    policy = _load("policy")
    small, large = policy.make_policy(10)["rules"], policy.make_policy(10_000)["rules"]
    assert small[:-2] == large[: len(small) - 2] and small[-2:] == large[-2:]
    doc = policy.make_policy(10_000)
    assert policy.make_flows(doc) == policy.make_flows(doc)


def _proc(tmp_path: Path, loadavg: str, cpu: list[int]) -> Path:
    (tmp_path / "loadavg").write_text(f"{loadavg} 2/300 12345\n")
    (tmp_path / "stat").write_text(
        "cpu  " + " ".join(map(str, cpu)) + " 0 0\ncpu0 1 2 3 4\nintr 5\n"
    )
    return tmp_path


def test_quiet_reads_load_and_steal(tmp_path: Path) -> None:
    quiet = _load("quiet")
    proc = _proc(tmp_path, "0.25 0.50 1.00", [100, 0, 50, 800, 10, 0, 0, 40])
    assert quiet.read_loadavg(proc) == [0.25, 0.5, 1.0]
    start = quiet.read_cpu(proc)
    assert start["steal"] == 40 and start["idle"] == 800
    end = dict(start, user=start["user"] + 50, idle=start["idle"] + 40, steal=start["steal"] + 10)
    assert quiet.steal_pct(start, end) == 10.0  # 10 of 100 ticks
    assert quiet.busy_pct(start, end) == 60.0
    assert quiet.busy_pct(start, end, own_ticks=50) == 10.0
    assert quiet.calibrate(loops=1000, repeat=1) > 0


def test_quiet_assess_marks_a_busy_run(tmp_path: Path) -> None:
    quiet = _load("quiet")
    cpu = {field: 0 for field in quiet.CPU_FIELDS}
    start = quiet.Snapshot([0.1, 0.1, 0.1], dict(cpu), 0.030, busy_pct=3.0)
    calm = quiet.Snapshot([2.0, 1.0, 0.5], dict(cpu, user=900, idle=100), 0.031)
    record = quiet.assess(start, calm, cpus=2)
    assert record["quiet"] is True and record["reasons"] == []
    assert quiet.warning(record) is None
    # Half the speed at the end, steal, a loaded start and a competing process.
    busy_start = quiet.Snapshot(
        [3.0, 2.0, 1.0], dict(cpu), 0.030, busy_pct=80.0, competing=["pytest -q"]
    )
    slow_end = quiet.Snapshot([3.0, 2.0, 1.0], dict(cpu, user=800, steal=200), 0.060)
    record = quiet.assess(busy_start, slow_end, cpus=2)
    assert record["quiet"] is False
    reasons = " | ".join(record["reasons"])
    for words in ("competing", "80 %", "load average 3.00", "20.0 % of the CPU", "2.00x"):
        assert words in reasons
    assert record["calibration_s"] == {"start": 0.03, "end": 0.06, "slowdown": 2.0}
    warning = quiet.warning(record)
    assert warning is not None and "NOT quiet" in warning


def _run(
    when: str, rounds: dict[str, list[int]] | None, up: dict[str, list[float]]
) -> dict[str, object]:
    samples = {path: [{"tcp_mbps": v, "tcp_down_mbps": v} for v in vs] for path, vs in up.items()}
    doc: dict[str, object] = {"when": when, "samples": samples, "ratios": {}, "quiet": True}
    if rounds is not None:
        doc["sample_rounds"] = rounds
    return doc


def test_summarize_pools_paired_rounds_across_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summarize = _load("summarize")
    dg, wg = "zgate-datagram", "wireguard-go"
    runs = [
        # Round 1 of the datagram path failed: its rounds are 0 and 2.
        _run("a", {dg: [0, 2], wg: [0, 1, 2]}, {dg: [100.0, 400.0], wg: [200.0, 999.0, 400.0]}),
        _run("b", None, {dg: [50.0], wg: [200.0]}),  # an old file: paired by position
        _run("c", None, {dg: [1.0, 2.0], wg: [1.0]}),  # cannot be paired
    ]
    files = []
    for i, doc in enumerate(runs):
        files.append(tmp_path / f"{i}.json")
        files[-1].write_text(json.dumps(doc))
    out = tmp_path / "summary.json"
    assert summarize.main([*map(str, files), "--json", str(out)]) == 0
    pooled = {(p["ratio"], p["field"]): p for p in json.loads(out.read_text())["pooled"]}
    up = pooled[("zgate-datagram/wireguard-go", "tcp_mbps")]
    assert up["rounds"] == 3 and up["runs"] == 2
    assert up["geometric_mean"] == 0.5  # (0.5 * 1.0 * 0.25) ** (1/3)
    assert up["low"] is not None and up["low"] < 0.5 < up["high"]
    text = capsys.readouterr().out
    assert "c: zgate-datagram/wireguard-go rounds cannot be paired" in text


def test_summarize_knows_every_ratio_tunnel_reports() -> None:
    # One table: tunnel.py reports the ratios summarize.py pools.
    assert _load("tunnel").RATIOS is sys.modules["summarize"].RATIOS


def test_tunnel_benchmark_help_runs_without_root() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH / "tunnel.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--wait-quiet" in proc.stdout
