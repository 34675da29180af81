"""The benchmark scripts still run (smoke runs: no measured figure is asserted), and what
they compute from figures (paths per QUIC engine, ratios, issue 11's verdicts) is right."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

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
    # One function: tunnel.py reports the ratios summarize.py pools.
    assert _load("tunnel").ratio_pairs is _load("summarize").ratio_pairs


# ------------------------------------------------------------- QUIC engines

ENGINE_PATHS = (
    "veth",
    "zgate-datagram[aioquic]",
    "zgate-stream[aioquic]",
    "zgate-datagram[qh3]",
    "zgate-stream[qh3]",
    "wireguard-go",
)
#: The ratios result files had before the engine dimension: still their labels there.
OLD_RATIOS = {
    "zgate-datagram/wireguard-go": ("zgate-datagram", "wireguard-go"),
    "zgate-stream/wireguard-go": ("zgate-stream", "wireguard-go"),
    "zgate-datagram/veth": ("zgate-datagram", "veth"),
    "zgate-stream/veth": ("zgate-stream", "veth"),
    "wireguard-go/veth": ("wireguard-go", "veth"),
    "zgate-stream/zgate-datagram": ("zgate-stream", "zgate-datagram"),
    "allow-all/noenforce": ("zgate-datagram", "zgate-datagram-noenforce"),
    "policy1k/noenforce": ("zgate-datagram-policy1k", "zgate-datagram-noenforce"),
}


@given(
    base=st.sampled_from(["veth", "zgate-datagram", "zgate-stream-x", "wireguard-go"]),
    engine=st.one_of(st.none(), st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True)),
)
def test_path_names_carry_their_engine(base: str, engine: str | None) -> None:
    names = _load("path_names")
    assert names.split(names.named(base, engine)) == (base, engine)


@pytest.mark.parametrize("bad", ["", "zgate-datagram[]", "zgate-datagram[qh3", "a/b", "X[qh3]"])
def test_path_names_refuse_what_is_not_a_name(bad: str) -> None:
    with pytest.raises(ValueError, match="not a path name"):
        _load("path_names").split(bad)


def test_each_engine_is_compared_with_wireguard_and_with_the_other() -> None:
    pairs = _load("path_names").ratio_pairs(ENGINE_PATHS)
    for engine in ("aioquic", "qh3"):
        for mode in ("zgate-datagram", "zgate-stream"):
            path = f"{mode}[{engine}]"
            assert pairs[f"{path}/wireguard-go"] == (path, "wireguard-go")
            assert pairs[f"{path}/veth"] == (path, "veth")
        stream, datagram = f"zgate-stream[{engine}]", f"zgate-datagram[{engine}]"
        assert pairs[f"{stream}/{datagram}"] == (stream, datagram)
    for mode in ("zgate-datagram", "zgate-stream"):
        label = f"{mode}[qh3]/{mode}[aioquic]"
        assert pairs[label] == (f"{mode}[qh3]", f"{mode}[aioquic]")
    assert pairs["wireguard-go/veth"] == ("wireguard-go", "veth")
    # No ratio across engines and modes at once, none with an unmeasured path.
    assert len(pairs) == 2 * 5 + 1 + 2
    assert all(top in ENGINE_PATHS and bottom in ENGINE_PATHS for top, bottom in pairs.values())


def test_enforcement_ratios_stay_within_one_engine() -> None:
    names = _load("path_names")
    paths = [
        f"{base}[{engine}]"
        for engine in ("aioquic", "qh3")
        for base in ("zgate-datagram-noenforce", "zgate-datagram", "zgate-datagram-policy1k")
    ]
    pairs = names.ratio_pairs(paths)
    assert pairs["allow-all/noenforce[qh3]"] == (
        "zgate-datagram[qh3]",
        "zgate-datagram-noenforce[qh3]",
    )
    assert pairs["policy1k/noenforce[aioquic]"] == (
        "zgate-datagram-policy1k[aioquic]",
        "zgate-datagram-noenforce[aioquic]",
    )
    assert "allow-all/noenforce" not in pairs


def test_old_result_files_keep_their_ratios() -> None:
    old_paths = ["veth", "zgate-datagram", "zgate-stream", "wireguard-go"]
    old_paths += ["zgate-datagram-noenforce", "zgate-datagram-policy1k"]
    assert _load("path_names").ratio_pairs(old_paths) == OLD_RATIOS


def test_summarize_pools_old_and_new_runs_apart(tmp_path: Path) -> None:
    summarize = _load("summarize")
    old = _run("old", None, {"zgate-datagram": [50.0], "wireguard-go": [100.0]})
    new = _run(
        "new",
        {"zgate-datagram[qh3]": [0], "zgate-datagram[aioquic]": [0], "wireguard-go": [0]},
        {
            "zgate-datagram[qh3]": [150.0],
            "zgate-datagram[aioquic]": [40.0],
            "wireguard-go": [100.0],
        },
    )
    pooled, notes = summarize.pool([old, new])
    by = {(p.ratio, p.field): p.geometric_mean for p in pooled}
    assert by[("zgate-datagram/wireguard-go", "tcp_mbps")] == 0.5
    assert by[("zgate-datagram[qh3]/wireguard-go", "tcp_mbps")] == 1.5
    assert by[("zgate-datagram[aioquic]/wireguard-go", "tcp_mbps")] == 0.4
    assert by[("zgate-datagram[qh3]/zgate-datagram[aioquic]", "tcp_down_mbps")] == 3.75
    assert notes == []
    files = []
    for doc in (old, new):
        files.append(tmp_path / f"{doc['when']}.json")
        files[-1].write_text(json.dumps(doc))
    assert summarize.main([*map(str, files)]) == 0


@pytest.fixture
def tunnel_with_wireguard(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """bench/tunnel.py as if wireguard-go were installed."""
    tunnel = _load("tunnel")
    monkeypatch.setattr(tunnel.wireguard, "available", lambda: None)
    return tunnel


def test_by_default_both_engines_run_both_modes_beside_wireguard(
    tunnel_with_wireguard: ModuleType,
) -> None:
    args = tunnel_with_wireguard.parse_args([])
    assert args.engines == ("aioquic", "qh3")
    assert args.paths == ENGINE_PATHS
    assert (args.seconds, args.repeat, args.light) == (5, 3, False)
    specs = {name: tunnel_with_wireguard.path_spec(name) for name in args.paths}
    assert specs["zgate-stream[qh3]"].engine == "qh3"
    assert specs["zgate-stream[qh3]"].mode == "stream"
    assert specs["zgate-datagram[aioquic]"].engine == "aioquic"
    assert specs["wireguard-go"].engine is None
    with pytest.raises(ValueError, match="names its engine"):
        tunnel_with_wireguard.path_spec("zgate-stream")


def test_without_wireguard_go_the_default_run_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    tunnel = _load("tunnel")
    monkeypatch.setattr(tunnel.wireguard, "available", lambda: "needs 'wg'")
    args = tunnel.parse_args([])
    assert args.paths == ENGINE_PATHS[:-1]
    assert args.skipped == {"wireguard-go": "needs 'wg'"}


def test_engines_and_paths_choose_what_is_measured(tunnel_with_wireguard: ModuleType) -> None:
    parse = tunnel_with_wireguard.parse_args
    assert parse(["--engines", "qh3"]).paths == (
        "veth",
        "zgate-datagram[qh3]",
        "zgate-stream[qh3]",
        "wireguard-go",
    )
    # An engine named in --paths wins over --engines; measured in a fixed order.
    args = parse(["--engines", "qh3", "--paths", "wireguard-go,zgate-stream,zgate-stream[aioquic]"])
    assert args.paths == ("zgate-stream[aioquic]", "zgate-stream[qh3]", "wireguard-go")
    assert parse(["--enforcement", "--engines", "aioquic"]).paths == (
        "zgate-datagram-noenforce[aioquic]",
        "zgate-datagram[aioquic]",
        "zgate-datagram-policy1k[aioquic]",
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--engines", "picoquic"],
        ["--engines", ""],
        ["--paths", "zgate-datagram[picoquic]"],
        ["--paths", "veth[qh3]"],
        ["--paths", "wireguard-go[aioquic]"],
        ["--paths", "zgate-tcp"],
    ],
)
def test_unknown_engines_and_paths_are_refused(
    tunnel_with_wireguard: ModuleType, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        tunnel_with_wireguard.parse_args(argv)
    assert exit_info.value.code == 2
    assert f"error: argument {argv[0]}: " in capsys.readouterr().err


def test_quick_is_one_short_light_round_unless_told_otherwise(
    tunnel_with_wireguard: ModuleType,
) -> None:
    quick = tunnel_with_wireguard.parse_args(["--quick"])
    assert (quick.seconds, quick.repeat, quick.light) == (3, 1, True)
    assert quick.paths == ENGINE_PATHS
    told = tunnel_with_wireguard.parse_args(["--quick", "--repeat", "2", "--seconds", "4"])
    assert (told.seconds, told.repeat, told.light) == (4, 2, True)


def _figures(up: float, down: float, rtt: float, tcp_rtt: float | None) -> dict[str, object]:
    return {"tcp_mbps": up, "tcp_down_mbps": down, "rtt_ms": rtt, "tcp_rtt_ms": tcp_rtt}


def test_issue_11_goal_is_judged_per_engine_and_mode() -> None:
    tunnel = _load("tunnel")
    paths = {
        "veth": _figures(9000.0, 9000.0, 0.05, 0.1),
        "zgate-datagram[aioquic]": _figures(40.0, 45.0, 3.0, 12.0),
        # Upload, ping and loaded RTT met; the download misses by a little.
        "zgate-datagram[qh3]": _figures(120.0, 99.0, 1.5, 2.9),
        "zgate-stream[qh3]": _figures(100.0, 100.0, 1.0, 3.0),
        "zgate-stream[aioquic]": _figures(100.0, 100.0, 1.0, None),  # loaded RTT missing
        "wireguard-go": _figures(100.0, 100.0, 1.0, 2.0),
    }
    targets = tunnel.wireguard_targets(paths)
    assert list(targets) == [p for p in paths if p.startswith("zgate-")]
    qh3 = targets["zgate-datagram[qh3]"]
    assert (qh3["mode"], qh3["engine"]) == ("zgate-datagram", "qh3")
    assert {k: qh3[k]["met"] for k in ("tcp_up", "tcp_down", "rtt", "tcp_rtt")} == {
        "tcp_up": True,
        "tcp_down": False,
        "rtt": True,
        "tcp_rtt": True,
    }
    assert qh3["tcp_rtt"]["ratio"] == 1.45 and qh3["tcp_down"]["goal"] == ">= 1.0"
    assert qh3["met"] is False
    assert targets["zgate-stream[qh3]"]["met"] is True  # every bound is inclusive
    assert targets["zgate-stream[aioquic]"]["tcp_rtt"] == {
        "ratio": None,
        "goal": "<= 1.5",
        "met": False,
    }
    assert targets["zgate-stream[aioquic]"]["met"] is False
    text = tunnel.targets_lines(targets)
    lines = text.splitlines()
    assert len(lines) == 1 + 4
    for header in ("TCP up >= 1.0", "TCP down >= 1.0", "ping RTT <= 1.5", "RTT in TCP <= 1.5"):
        assert header in lines[0]
    row = next(line for line in lines if line.startswith("zgate-datagram[qh3] "))
    assert row.split()[1:9] == ["1.200x", "ok", "0.990x", "NO", "1.500x", "ok", "1.450x", "ok"]
    assert row.endswith("NOT met")
    assert next(line for line in lines if line.startswith("zgate-stream[qh3] ")).endswith(" met")
    # Without wireguard-go in the run there is no goal to judge.
    assert tunnel.wireguard_targets({k: v for k, v in paths.items() if k != "wireguard-go"}) == {}
    assert tunnel.targets_lines({}) is None


def test_the_report_tables_name_each_engine() -> None:
    tunnel = _load("tunnel")
    fields = dict.fromkeys(tunnel.asdict(tunnel.Sample()))
    paths = {name: dict(fields, tcp_mbps=100.0, rtt_ms=1.0) for name in ENGINE_PATHS}
    paths["zgate-datagram[qh3]"]["tcp_mbps"] = 250.0
    rates = tunnel.ratios(paths)
    assert rates["zgate-datagram[qh3]/zgate-datagram[aioquic]"]["tcp_mbps"] == 2.5
    assert rates["zgate-stream[qh3]/wireguard-go"]["tcp_down_mbps"] is None
    text = tunnel.table(paths, rates)
    header = text.splitlines()[0].split()
    assert header == list(ENGINE_PATHS)
    assert "zgate-datagram[qh3]/wireguard-go" in text


def test_enforcement_cost_is_reported_per_engine() -> None:
    tunnel = _load("tunnel")
    paths = {
        "zgate-datagram-noenforce[aioquic]": {"tcp_mbps": 100.0, "relay_us_per_packet": 40.0},
        "zgate-datagram[aioquic]": {"tcp_mbps": 95.0},
        "zgate-datagram-noenforce[qh3]": {"tcp_mbps": 200.0, "relay_us_per_packet": 10.0},
        "zgate-datagram[qh3]": {"tcp_mbps": 170.0},
    }
    for figures in paths.values():
        figures["tcp_down_mbps"] = figures["tcp_mbps"]
    rates = tunnel.ratios(paths)
    router = {"noenforce": 1.0, "allow-all": 1.5}
    cost = tunnel.enforcement_cost(paths, rates, router)
    assert cost["allow-all/noenforce[aioquic]"] == {"tcp_mbps": 0.95, "tcp_down_mbps": 0.95}
    assert cost["allow-all/noenforce[qh3]"] == {"tcp_mbps": 0.85, "tcp_down_mbps": 0.85}
    assert cost["met"] is False  # qh3's 0.85 misses 0.9
    assert cost["share_of_relay_cpu"] == {
        "zgate-datagram-noenforce[aioquic]": {"allow-all": 0.0125},
        "zgate-datagram-noenforce[qh3]": {"allow-all": 0.05},
    }
    line = tunnel.enforcement_line(cost)
    assert "allow-all/noenforce[qh3] TCP up 0.850" in line
    assert "of the relay's 10 us per packet on zgate-datagram-noenforce[qh3]" in line


def _relay(tmp_path: Path, *records: Mapping[str, object]) -> Any:
    log = tmp_path / "relay.log"
    log.write_text("not json\n" + "".join(json.dumps(r) + "\n" for r in records))
    return _load("tunnel").Daemon("relay", cast(Any, None), log)


def test_a_path_runs_on_the_engine_it_is_named_after(tmp_path: Path) -> None:
    tunnel = _load("tunnel")
    first = {"msg": "QUIC engine", "engine": "aioquic"}
    relay = _relay(tmp_path, first, {"msg": "listening"}, {"msg": "QUIC engine", "engine": "qh3"})
    assert tunnel.relay_engine(relay, starts=2) == "qh3"
    # The second relay has not said it yet: the first one's record is not taken for it.
    assert tunnel.relay_engine(_relay(tmp_path, first, {"msg": "listening"}), starts=2) is None
    tunnel.check_engines("qh3", "qh3", {"mode": "datagram", "quic_engine": "qh3"})
    for relay_says, agent_says in (("aioquic", "qh3"), ("qh3", "aioquic"), (None, "qh3")):
        with pytest.raises(tunnel.BenchError, match="asked for the qh3 engine"):
            tunnel.check_engines("qh3", relay_says, {"quic_engine": agent_says})
    with pytest.raises(tunnel.BenchError):
        tunnel.check_engines("qh3", "qh3", None)


def test_tunnel_benchmark_help_runs_without_root() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH / "tunnel.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--wait-quiet" in proc.stdout
