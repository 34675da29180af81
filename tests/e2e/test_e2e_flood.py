"""A handshake flood from a host without credentials (issue 14 item 1): with the relay's
defaults a connected agent keeps its pings and the relay's memory stays bounded; with the
front door switched off the same flood fills the relay with half-open handshakes (so the
flood is a real one, and the first test could fail).

The flood (zgate_lab.flood): forged QUIC v1 Initials, 1200 bytes, a new connection ID each,
a real ClientHello inside, from agent namespace 3 (no agent runs there), bounded in rate and
time: FLOOD_RATE per second for FLOOD_SECONDS (the issue's figure, 20 000/s for 5 s, is
bench/flood.py's).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from zgate_lab.lab import INET_IP, RELAY_LAN_IP, Daemon, Lab, metric_value, wait_until

FLOOD_RATE = 5000
FLOOD_SECONDS = 3.0
#: Pings through the tunnel, one every PING_INTERVAL, covering the flood and some after.
PING_INTERVAL = 0.02
PINGS = 250
#: The issue's goal: under 1 % of pings lost.
MAX_LOSS = 0.01
#: The relay's RSS may grow this much during the flood with the defaults (measured: a few
#: MB; the bound on half-open handshakes alone allows 1000 x ~10 kB).
MAX_RSS_GROWTH_MB = 40.0
#: Without the front door, at least this many forged Initials become half-open handshakes
#: (with the door, at most 8 from the flood's one source). Measured: most of a 1 s flood's on
#: a qh3 relay; an aioquic relay spends a few ms on each, so the kernel drops much of the flood
#: before it gets there, and a fresh-clone CI run saw it stay under 1000 for 30 s.
MIN_HALF_OPEN_BEFORE = 500

FLOOD_NS_AGENT = 3  # the namespace the flood runs in (no agent there)


def relay_rss_mb(relay: Daemon) -> float:
    """The relay process's resident memory (`ip netns exec` execs the relay: same pid)."""
    status = Path(f"/proc/{relay.proc.pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    assert match, status
    return int(match.group(1)) / 1024


class Flood:
    """zgate_lab.flood from the flood namespace against the relay: forged first, sent on
    :meth:`go` (so that forging, ~30 us of CPU a datagram, is not measured as the flood)."""

    def __init__(self, lab: Lab, rate: float, seconds: float) -> None:
        self.seconds = seconds
        self.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                lab.agent_ns(FLOOD_NS_AGENT),
                sys.executable,
                "-m",
                "zgate_lab.flood",
                "--target",
                f"{RELAY_LAN_IP}:4433",
                "--rate",
                str(rate),
                "--duration",
                str(seconds),
                "--go-on-stdin",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        forged = self.proc.stdout.readline()
        assert "forged" in forged, forged

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def result(self) -> dict[str, float]:
        out, _ = self.proc.communicate(timeout=60 + self.seconds)
        result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
        return result


def flood(lab: Lab, rate: float, seconds: float) -> dict[str, float]:
    """Forge, then send, a flood; what it sent."""
    running = Flood(lab, rate, seconds)
    running.go()
    return running.result()


class Pinger:
    """ping through agent n's tunnel in the background; loss and RTTs when it ends."""

    def __init__(self, lab: Lab, n: int, count: int, interval: float) -> None:
        self.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                lab.agent_ns(n),
                "ping",
                "-n",
                "-c",
                str(count),
                "-i",
                str(interval),
                "-W",
                "2",
                INET_IP,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.count = count

    def result(self) -> tuple[float, list[float]]:
        out, _ = self.proc.communicate(timeout=60)
        rtts = [float(m) for m in re.findall(r"time=([\d.]+) ms", out)]
        replies = len({m for m in re.findall(r"icmp_seq=(\d+)", out)})
        return 1 - replies / self.count, rtts


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def test_an_agent_keeps_its_pings_through_a_handshake_flood(lab: Lab) -> None:
    relay: Daemon = lab.relay  # type: ignore[attr-defined]
    agent = lab.start_agent(1)
    try:
        quiet_loss, quiet = Pinger(lab, 1, 50, PING_INTERVAL).result()
        assert quiet_loss == 0.0
        running = Flood(lab, FLOOD_RATE, FLOOD_SECONDS)
        rss_before = relay_rss_mb(relay)
        pinger = Pinger(lab, 1, PINGS, PING_INTERVAL)
        peak = [rss_before]
        done = threading.Event()

        def watch_rss() -> None:
            while not done.wait(0.2):
                peak[0] = max(peak[0], relay_rss_mb(relay))

        watcher = threading.Thread(target=watch_rss, daemon=True)
        watcher.start()
        time.sleep(0.3)  # some pings before the flood starts
        running.go()
        sent = running.result()
        loss, rtts = pinger.result()
        done.set()
        watcher.join()
        text = lab.relay_metrics_text()
        dropped = metric_value(text, "zgate_relay_handshake_drops_total", reason="source_rate")
        retried = metric_value(text, "zgate_relay_front_door_total", outcome="retry_sent")
        print(
            f"flood {sent}: ping loss {loss:.2%}, RTT p99 quiet {p99(quiet):.2f} ms, during "
            f"{p99(rtts):.2f} ms; relay RSS {rss_before:.1f} -> peak {peak[0]:.1f} MB; "
            f"source_rate drops {dropped:.0f}, Retry sent {retried:.0f}"
        )
        assert sent["sent"] >= FLOOD_RATE * FLOOD_SECONDS * 0.99
        assert loss < MAX_LOSS, (loss, rtts)
        assert peak[0] - rss_before < MAX_RSS_GROWTH_MB
        assert dropped + retried > FLOOD_RATE  # the front door, not luck, turned it away
        # One summary line for the operator, not a line per datagram.
        wait_until(lambda: "handshake flood: " in relay.log(), 5, "the flood's log line")
        assert relay.log().count("handshake flood: ") <= 2
        assert agent.proc.poll() is None
    finally:
        agent.stop()


def test_without_the_front_door_the_same_flood_fills_the_relay(lab: Lab) -> None:
    relay: Daemon = lab.relay  # type: ignore[attr-defined]
    relay.stop()
    # The front door off, and the relay's ingress one FIFO as before issue 14 (its fq-codel
    # ingress sheds a single source's excess by itself, and this test is about the door).
    off = (
        "--retry", "never", "--max-half-open", "0", "--max-half-open-per-source", "0",
        "--new-connections-per-source", "0", "--handshake-deadline", "0", "--queue", "fifo",
    )  # fmt: skip
    lab.relay = before = lab.start_relay(*off)  # type: ignore[attr-defined]
    try:
        flood(lab, FLOOD_RATE, FLOOD_SECONDS)
        wait_until(
            lambda: lab.relay_metric("zgate_relay_half_open_connections") >= MIN_HALF_OPEN_BEFORE,
            30,
            f"{MIN_HALF_OPEN_BEFORE} half-open handshakes at the relay",
        )
        drops = metric_value(
            lab.relay_metrics_text(), "zgate_relay_handshake_drops_total", reason="source_rate"
        )
        assert drops == 0
    finally:
        before.stop()
        lab.relay = lab.start_relay()  # type: ignore[attr-defined]


@pytest.mark.parametrize("engine", ["aioquic", "qh3"])
def test_agents_connect_through_a_retry(lab: Lab, engine: str) -> None:
    """With --retry always every connection starts with a Retry: an agent on either engine
    (the relay on the same engine) comes up and its pings go through."""
    relay: Daemon = lab.relay  # type: ignore[attr-defined]
    relay.stop()
    lab.relay = relay = lab.start_relay("--retry", "always", engine=engine)  # type: ignore[attr-defined]
    agent = lab.start_agent(2, engine=engine)
    try:
        loss, _ = Pinger(lab, 2, 10, 0.05).result()
        assert loss == 0.0
        text = lab.relay_metrics_text()
        assert metric_value(text, "zgate_relay_front_door_total", outcome="retry_sent") >= 1
        assert metric_value(text, "zgate_relay_front_door_total", outcome="validated") >= 1
    finally:
        agent.stop()
        relay.stop()
        lab.relay = lab.start_relay()  # type: ignore[attr-defined]
