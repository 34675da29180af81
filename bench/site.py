"""A private site through a connector against the internet through the relay, same run.

Run as root from the workspace root:

    uv run --frozen python bench/site.py [--seconds 5] [--repeat 3] [--json FILE]

One lab (zgate_lab.lab): an agent, the relay, the internet host (203.0.113.10) and a private
site (192.168.50.10) reachable only through one connector. iperf3 TCP, one stream, upload and
download, alternating between the two targets in each round on the same relay, agent and
connector (datagram mode, the relay's built-in allow-all policy):

    internet   agent -> relay -> NAT -> internet host
    site       agent -> relay -> connector -> NAT -> site host

It prints the medians and the ratio site/internet, and writes them as JSON (default
bench/results/site.json). The site path crosses one more Python process (the connector)
and one more QUIC hop, so it costs more CPU per packet on this 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from zgate_lab.lab import INET_IP, SITE_HOST_IP, SITE_NET, Lab, have_tools, wait_until

PORT = 5202
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "site.json"


def iperf(lab: Lab, host: str, seconds: int, reverse: bool) -> float:
    """Receiver throughput of one TCP stream from the agent namespace, Mbit/s."""
    cmd = ["iperf3", "-c", host, "-p", str(PORT), "-t", str(seconds), "-J"]
    cmd += ["--connect-timeout", "5000", *(["-R"] if reverse else [])]
    proc = lab.ns(lab.agent_ns(1), *cmd, check=False, timeout=seconds + 30)
    report = json.loads(proc.stdout)
    if "error" in report:
        raise RuntimeError(f"iperf3 to {host}: {report['error']}")
    return float(report["end"]["sum_received"]["bits_per_second"]) / 1e6


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; 0 on success, 2 when it cannot run here."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=5, help="length of each test [5]")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (medians) [3]")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    args = parser.parse_args(argv)
    reason = have_tools() or (None if shutil.which("iperf3") else "needs iperf3")
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="zgate-site-bench-"))
    lab = Lab(tag=f"sb{os.getpid() % 100000}", workdir=workdir)
    results: dict[str, dict[str, list[float]]] = {
        "internet": {"tcp_mbps": [], "tcp_down_mbps": []},
        "site": {"tcp_mbps": [], "tcp_down_mbps": []},
    }
    try:
        lab.build(agents=1)
        lab.add_site(connectors=1)
        lab.make_pki(clients=("agent1",), connectors=("site-a",))
        for name, ns in (("iperf3-inet", lab.inet_ns), ("iperf3-site", lab.site_ns)):
            lab.spawn(name, ns, ["iperf3", "-s", "-p", str(PORT), "--idle-timeout", "60"])
        for ns in (lab.inet_ns, lab.site_ns):

            def listening(ns: str = ns) -> bool:
                return f":{PORT} " in lab.ns(ns, "ss", "-ltn", check=False).stdout

            wait_until(listening, 10, "an iperf3 server")
        lab.start_relay("--connector", f"site-a={SITE_NET}")
        lab.start_connector(1, "site-a")
        lab.start_agent(1)
        wait_until(
            lambda: lab.relay_metric("zgate_relay_connector_prefixes", connector="site-a") == 1,
            10,
            "the site's routes",
        )
        for i in range(args.repeat):
            for target, host in (("internet", INET_IP), ("site", SITE_HOST_IP)):
                for key, reverse in (("tcp_mbps", False), ("tcp_down_mbps", True)):
                    value = iperf(lab, host, args.seconds, reverse)
                    results[target][key].append(value)
                    print(f"round {i + 1}: {target} {key} {value:.1f}", file=sys.stderr)
    finally:
        lab.teardown()
        shutil.rmtree(workdir, ignore_errors=True)
    medians = {
        t: {k: round(statistics.median(v), 1) for k, v in r.items()} for t, r in results.items()
    }
    ratios = {
        k: round(medians["site"][k] / medians["internet"][k], 3)
        for k in ("tcp_mbps", "tcp_down_mbps")
    }
    print(f"{'':10}{'TCP up Mbit/s':>16}{'TCP down Mbit/s':>18}")
    for target, figures in medians.items():
        print(f"{target:10}{figures['tcp_mbps']:>16.1f}{figures['tcp_down_mbps']:>18.1f}")
    print(f"{'site/inet':10}{ratios['tcp_mbps']:>16.3f}{ratios['tcp_down_mbps']:>18.3f}")
    doc = {
        "paths": medians,
        "ratios": {"site/internet": ratios},
        "samples": results,
        "settings": {"seconds": args.seconds, "repeat": args.repeat},
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
