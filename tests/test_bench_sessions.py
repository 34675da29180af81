"""bench/sessions.py still runs (a smoke run: N=20 for 2 s; no measured figure is asserted
except what must hold exactly: every session opens, no ping is lost on an idle loopback,
and past the limits exactly the extra requests are refused, with the right statuses)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str) -> ModuleType:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


def test_sessions_benchmark_runs_and_refuses_exactly_the_extra(tmp_path: Path) -> None:
    out = tmp_path / "sessions.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "sessions.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    [step] = report["sweep"]
    assert step["sessions"] == step["ready"] == 20
    assert step["handshakes_per_s"] > 0 and step["handshake_p99_ms"] >= step["handshake_p50_ms"]
    assert step["pings_sent"] > 0 and step["relay_rss_after_mb"] > 0
    assert step["relay_sessions_gauge"] == 20
    before, after = report["refusals"]["before"], report["refusals"]["after"]
    assert before["as_expected"] and after["as_expected"]
    assert after["load-a"]["refused"] == {"429": 10}
    assert after["load-b"]["refused"] == {"503": 5}
    assert after["relay_counted"] == {"relay_full": 5, "client_limit": 10}
    assert before["relay_counted"] == {"relay_full": 0, "client_limit": 0}
    assert "Refusals:" in proc.stdout


def test_echo_packets_are_well_formed() -> None:
    sessions = _load("sessions")
    from zgate_proto.ip import internet_checksum, parse_packet

    packet = sessions.echo(bytes([10, 100, 0, 2]), bytes([10, 100, 0, 3]), 8, 7, 9)
    info = parse_packet(packet)
    assert info.src == bytes([10, 100, 0, 2]) and info.dst == bytes([10, 100, 0, 3])
    assert len(packet) == 84 and packet[20] == 8
    assert internet_checksum(packet[20:]) == 0  # the ICMP checksum verifies
    assert internet_checksum(packet[:20]) == 0  # and the IPv4 header's


def test_percentile_is_nearest_rank() -> None:
    sessions = _load("sessions")
    values = list(range(1, 101))
    assert sessions.percentile(values, 50) == 50
    assert sessions.percentile(values, 99) == 99
    assert sessions.percentile([3.0], 99) == 3.0
    assert sessions.percentile([], 50) is None
