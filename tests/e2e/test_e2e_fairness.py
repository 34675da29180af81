"""Fair sharing through one relay (issue 14 item 2): while agent A floods UDP through the
tunnel, agent B's pings keep a short RTT and are not lost.

The relay and the agents run with their default queue discipline (fq-codel). The bounds are
far looser than the issue's goal (B's p99 under the flood <= 3x its quiet p99, which
bench/fairness.py measures, fifo against fq-codel in one run): this machine has two cores
shared with other test runs, and B's RTT under a flood that saturates them is mostly CPU
scheduling. Measured here (load average 5-7) B's loaded p99 was 12-33 ms with fq-codel and
30-188 ms with --queue fifo, so no bound separates the two on every run; the test holds what
cannot flake yet fails for a relay that queues B behind A as main did before issue 14 (p50
65 ms, p99 347 ms) or drops B's packets.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from collections.abc import Iterator

import pytest

from zgate_lab.lab import INET_IP, IPERF_PORT, Lab, metric_value

#: A's flood: offered rate and length (bounded in time and count: iperf3 -t).
FLOOD_RATE = "1G"
FLOOD_SECONDS = 6
PINGS = 150  # 20 ms apart: 3 s inside the flood
#: B's p99 under the flood may be this many times its quiet p99 ...
RATIO_BOUND = 10.0
#: ... or this many milliseconds, whichever is larger (a quiet p99 of 1 ms on an idle
#: moment would otherwise make the bound a scheduling lottery).
FLOOR_MS = 60.0
#: B's median under the flood: this many times its quiet median, or P50_FLOOR_MS.
P50_RATIO_BOUND = 5.0
P50_FLOOR_MS = 15.0
#: B's pings lost under the flood, at most (per cent).
LOSS_BOUND = 2.0


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(pct / 100 * len(ordered))) - 1]


def pings(lab: Lab, n: int, count: int) -> list[float]:
    proc = lab.ns(
        lab.agent_ns(n),
        "ping",
        "-n",
        "-c",
        str(count),
        "-i",
        "0.02",
        "-W",
        "3",
        INET_IP,
        check=False,
        timeout=count * 0.02 + 30,
    )
    return [float(t) for t in re.findall(r"time=([\d.]+) ms", proc.stdout)]


@pytest.fixture(scope="module")
def two_agents(lab: Lab) -> Iterator[Lab]:
    iperf = lab.start_iperf_server()
    a = lab.start_agent(1)
    b = lab.start_agent(2)
    try:
        yield lab
    finally:
        for daemon in (b, a, iperf):
            daemon.stop()
            lab.daemons.remove(daemon)


def test_b_keeps_a_short_rtt_while_a_floods(two_agents: Lab) -> None:
    lab = two_agents
    pings(lab, 2, 5)  # the flow's policy decision, before measuring
    quiet = pings(lab, 2, 100)
    assert len(quiet) >= 98, "B's pings are lost without any flood"
    drops_before = relay_queue_drops(lab)

    cmd = ["iperf3", "-c", INET_IP, "-p", str(IPERF_PORT), "-t", str(FLOOD_SECONDS), "-J"]
    cmd += ["-u", "-b", FLOOD_RATE, "-l", "1200"]
    with subprocess.Popen(
        ["ip", "netns", "exec", lab.agent_ns(1), *cmd],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as flood:
        try:
            # B starts once the flood has had a second to fill whatever queue it fills.
            subprocess.run(["sleep", "1"], check=True)
            loaded = pings(lab, 2, PINGS)
            out, _ = flood.communicate(timeout=FLOOD_SECONDS + 30)
        finally:
            if flood.poll() is None:
                flood.kill()
    report = json.loads(out)["end"]["sum"]
    flood_mbps = report["bits_per_second"] / 1e6
    flood_loss = float(report.get("lost_percent", 0.0))

    quiet99, loaded99 = percentile(quiet, 99), percentile(loaded, 99)
    loss = 100.0 * (PINGS - len(loaded)) / PINGS
    summary = (
        f"B quiet p99 {quiet99:.2f} ms, under A's flood ({FLOOD_RATE} offered, "
        f"{flood_mbps:.0f} Mbit/s sent, {flood_loss:.0f}% lost) "
        f"p50 {percentile(loaded, 50):.2f} p99 {loaded99:.2f} ms, loss {loss:.1f}%"
    )
    print(summary)
    # The flood was one: A offered more than the tunnel carries (its excess was lost).
    assert flood_loss > 5, summary
    print(f"relay queue drops during the flood: {relay_queue_drops(lab) - drops_before:.0f}")
    assert loss <= LOSS_BOUND, summary
    assert loaded99 <= max(RATIO_BOUND * quiet99, FLOOR_MS), summary
    quiet50, loaded50 = percentile(quiet, 50), percentile(loaded, 50)
    assert loaded50 <= max(P50_RATIO_BOUND * quiet50, P50_FLOOR_MS), summary


def relay_queue_drops(lab: Lab) -> float:
    """What the relay's and the agents' queues dropped (CoDel, overflow, a full FIFO)."""
    text = lab.relay_metrics_text()
    relay = sum(
        metric_value(text, "zgate_relay_drops_total", reason=reason)
        for reason in ("queue_aqm", "queue_overflow", "queue_full")
    )
    return relay
