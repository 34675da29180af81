"""The benchmark scripts still run (a smoke run: no figure is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
    assert set(stages) == {
        "router",
        "router+flows",
        "router+policy1k",
        "quic-datagram",
        "quic-stream",
        "tun-coalesce",
    }
    assert all(value > 0 for value in stages.values())
    assert "enforcement adds" in proc.stdout
