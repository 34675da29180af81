"""Fast recovery (issue 14 item 3): how long pings through the tunnel stop when the relay
is killed, with the agent's liveness deadline on (the default, 2 s) and off (--liveness 0,
the behaviour before: QUIC's 30-s idle timeout), the two side by side in the same run.

Run as root from the workspace root:

    uv run --frozen python bench/recovery.py [--repeat 3] [--json FILE]

One lab (zgate_lab.lab): two agents, one with --liveness 2 and one with --liveness 0, each
pinging the internet host through the tunnel every 0.1 s (ping -D: times by ping's clock).
Two scenarios, ``--repeat`` times each:

- restart: the relay is killed (SIGKILL, no CONNECTION_CLOSE) and started again at once;
  measured: from the new relay's "relay listening" log line to each agent's first ping
  reply (and from the kill);
- failover: both agents are given two relays (--relay twice); the relay both use is
  killed (and started again afterwards, so that the next round kills the other one);
  measured: from the kill to each agent's first ping reply through the other relay.

Prints p50 and max per scenario and variant and writes them as JSON (default
bench/results/recovery.json). The machine is shared: say how busy it was.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from zgate_agent.failures import LOSS_CAUSES
from zgate_lab.lab import INET_IP, Daemon, Lab, have_tools, metric_value, wait_until

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "recovery.json"
VARIANTS = {"liveness_on": ("--liveness", "2"), "liveness_off": ("--liveness", "0")}
#: Agent namespace of each variant.
AGENT_N = {"liveness_on": 1, "liveness_off": 2}
#: No round waits longer than this for an agent to come back (the idle timeout is 30 s).
ROUND_BOUND = 60.0
SECOND = "198.51.100.2"


class Pinger:
    """ping -D every 0.1 s from a namespace (line-buffered through stdbuf, read as it comes);
    reply times by ping's clock."""

    def __init__(self, ns: str, target: str) -> None:
        command = ["ip", "netns", "exec", ns, "stdbuf", "-oL"]
        command += ["ping", "-D", "-n", "-i", "0.1", "-W", "1"]
        # Bounded by a count, not -w: with a deadline ping exits at the first ICMP error
        # (a relay starting up may send one), and the rest of the round would be lost.
        command += ["-c", str(int(ROUND_BOUND + 30) * 10), target]
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.replies: list[float] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            match = re.match(r"^\[(\d+\.\d+)\] \d+ bytes from", line)
            if match:
                self.replies.append(float(match.group(1)))

    def replied_after(self, since: float) -> bool:
        return any(t >= since for t in self.replies)

    def stop(self) -> list[float]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=10)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return list(self.replies)


def log_time(daemon: Daemon, message: str, after: float) -> float:
    for record in daemon.json_log():
        if record.get("msg") != message:
            continue
        at = datetime.fromisoformat(str(record["ts"]).replace("Z", "+00:00")).timestamp()
        if at >= after - 0.001:
            return at
    raise RuntimeError(f"{daemon.name} never logged {message!r}")


def answers(lab: Lab, n: int) -> bool:
    proc = lab.ns(lab.agent_ns(n), "ping", "-c", "1", "-W", "1", INET_IP, check=False)
    return " 0% packet loss" in proc.stdout


def wait_answers(lab: Lab, n: int, what: str) -> None:
    """Until agent ``n``'s pings get through (bounded)."""
    wait_until(lambda: answers(lab, n), ROUND_BOUND, what)


def relay_of(lab: Lab, n: int) -> str | None:
    status = lab.agent_status(n)
    if status is None or status.get("state") != "connected":
        return None
    return str(status["relay"])


def start_relay(lab: Lab, which: int) -> Daemon:
    ns = lab.relay_ns if which == 1 else lab.extra_relay_ns(which)
    lab.ns(ns, "ip", "link", "del", "zgate0", check=False)  # what a killed relay left
    return lab.start_relay() if which == 1 else lab.start_extra_relay(which)


def wait_pinger(pinger: Pinger, since: float, what: str) -> None:
    wait_until(lambda: pinger.replied_after(since), ROUND_BOUND, what)


def causes(lab: Lab) -> dict[str, dict[str, float]]:
    """Each variant's agent: tunnels lost so far, by cause (its metrics)."""
    out = {}
    for variant, n in AGENT_N.items():
        text = lab.agent_metrics_text(n)
        counts = {
            c: metric_value(text, "zgate_agent_tunnel_losses_total", cause=c) for c in LOSS_CAUSES
        }
        out[variant] = {c: v for c, v in counts.items() if v}
    return out


def kill_and_measure(
    lab: Lab, relay: Daemon, *, restart: int | None
) -> tuple[dict[str, float], Daemon | None, float | None]:
    """Kill ``relay`` while both agents ping; restart relay ``restart`` if given. Each
    variant's first reply after the kill (seconds after the kill), the new relay, and when
    it listened (seconds after the kill)."""
    pingers = {v: Pinger(lab.agent_ns(n), INET_IP) for v, n in AGENT_N.items()}
    killed = time.time()
    relay.stop(sig=signal.SIGKILL)
    new = start_relay(lab, restart) if restart is not None else None
    listening = log_time(new, "relay listening", killed) - killed if new else None
    try:
        for variant, pinger in pingers.items():
            wait_pinger(pinger, killed, f"{variant}'s pings to get through again")
    finally:
        replies = {v: p.stop() for v, p in pingers.items()}
    back = {}
    for variant, times in replies.items():
        later = [t for t in times if t >= killed]
        if not later:
            raise RuntimeError(f"{variant}: no ping reply after the kill")
        back[variant] = later[0] - killed
    return back, new, listening


def pct(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(statistics.median(values), 2),
        "max": round(max(values), 2),
        "min": round(min(values), 2),
    }


def main(argv: list[str] | None = None) -> int:
    """Run both scenarios; 0 on success, 2 when it cannot run here."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3, help="rounds per scenario [3]")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    reason = have_tools()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="zgate-recovery-bench-"))
    lab = Lab(tag=f"rb{os.getpid() % 100000}", workdir=workdir)
    samples: dict[str, dict[str, list[float]]] = {
        "restart_after_listening": {v: [] for v in VARIANTS},
        "restart_after_kill": {v: [] for v in VARIANTS},
        "failover_after_kill": {v: [] for v in VARIANTS},
    }
    listening_after_kill: list[float] = []
    lost_by_cause: dict[str, dict[str, dict[str, float]]] = {}
    load = os.getloadavg()
    try:
        lab.build(agents=2)
        lab.make_pki(clients=("agent1", "agent2"))
        lab.start_inet_services(blob_size=1024)
        relays = {1: lab.start_relay()}
        # restart: one relay.
        agents = [lab.start_agent(n, extra=VARIANTS[v]) for v, n in AGENT_N.items()]
        for i in range(args.repeat):
            for n in AGENT_N.values():
                wait_answers(lab, n, f"agent {n} up")
            back, new, listening = kill_and_measure(lab, relays[1], restart=1)
            assert new is not None and listening is not None
            relays[1] = new
            listening_after_kill.append(listening)
            for variant, seconds in back.items():
                samples["restart_after_kill"][variant].append(seconds)
                samples["restart_after_listening"][variant].append(seconds - listening)
            print(
                f"restart {i + 1}: listening {listening:.2f}s after the kill; pings back "
                + ", ".join(f"{v} {s - listening:.2f}s after listening" for v, s in back.items()),
                file=sys.stderr,
            )
        lost_by_cause = {"restart": causes(lab)}
        for agent in agents:
            agent.stop()
        # failover: two relays, both agents on the same one before each kill.
        relays[2] = lab.start_extra_relay(2)
        extra = ("--relay", f"{SECOND}:4433")
        agents = [lab.start_agent(n, extra=(*VARIANTS[v], *extra)) for v, n in AGENT_N.items()]
        for i in range(args.repeat):
            wait_until(
                lambda: relay_of(lab, 1) is not None and relay_of(lab, 1) == relay_of(lab, 2),
                ROUND_BOUND,
                "both agents on the same relay",
            )
            in_use = 2 if relay_of(lab, 1) == f"{SECOND}:4433" else 1
            for n in AGENT_N.values():
                wait_answers(lab, n, f"agent {n} up")
            back, _, _ = kill_and_measure(lab, relays[in_use], restart=None)
            relays[in_use] = start_relay(lab, in_use)  # the next round kills the other one
            for variant, seconds in back.items():
                samples["failover_after_kill"][variant].append(seconds)
            print(
                f"failover {i + 1} (relay {in_use} killed): pings back "
                + ", ".join(f"{v} {s:.2f}s after the kill" for v, s in back.items()),
                file=sys.stderr,
            )
        lost_by_cause["failover"] = causes(lab)
        for agent in agents:
            agent.stop()
    finally:
        lab.teardown()
        shutil.rmtree(workdir, ignore_errors=True)
    figures = {
        scenario: {v: pct(values) for v, values in per.items()} for scenario, per in samples.items()
    }
    print(f"{'seconds until pings resume':44}{'p50':>8}{'max':>8}")
    for scenario, per in figures.items():
        for variant, f in per.items():
            print(f"{scenario + ' ' + variant:44}{f['p50']:>8.2f}{f['max']:>8.2f}")
    ratios = {
        scenario: round(per["liveness_off"]["p50"] / max(per["liveness_on"]["p50"], 0.01), 1)
        for scenario, per in figures.items()
    }
    print(f"tunnels lost, by cause: {lost_by_cause}")
    print("off/on (p50): " + ", ".join(f"{k} {v}x" for k, v in ratios.items()))
    doc = {
        "figures": figures,
        "ratios_off_on_p50": ratios,
        "relay_listening_after_kill": pct(listening_after_kill),
        "tunnels_lost_by_cause": lost_by_cause,
        "samples": samples,
        "settings": {"repeat": args.repeat, "variants": VARIANTS},
        "load_average_at_start": [round(x, 2) for x in load],
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
