"""Benchmark policy decisions: decisions per second at 10, 1 000 and 10 000 rules, in one run.

    uv run --frozen python bench/policy.py [--seconds 2] [--rounds 3] [--json FILE]

Each policy is a realistic mix, generated with a fixed seed: IPv4 CIDRs from /8 to /32 and some
IPv6 ones, port ranges, clients and nested groups (and certificate groups), FQDN rules (exact
and wildcard), named resources, a few rules for everyone, and the default. The same seed makes
each smaller policy the first rules of the largest one (plus the same two closing rules).

Every size is decided over one fixed workload: the same 20 000 flows (same seed), drawn once
from the largest policy (clients, certificate groups, destinations inside and outside the
rules' networks, some with a resolved name), after one warm-up pass: a relay sees the same
clients again and again, so the per-client group caches are warm in steady state. So the ratio
of 10 000 rules to 10 (target: >= 0.5) compares the same work; what differs is only the policy
(and hence how many flows a rule matches: the allow/deny/default counts per size). Bounded:
about 3 x --seconds plus compiling (well under a minute).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv6Address, IPv6Network, ip_network
from pathlib import Path
from typing import Any

# bench/quiet.py: Python puts this script's directory first on sys.path.
import quiet

from zgate_policy import CompiledPolicy, Decision, Policy, compile_policy

SIZES = (10, 1_000, 10_000)
FLOWS = 20_000
CLIENTS = [f"user{i}" for i in range(2_000)]
GROUPS = [f"team{i}" for i in range(60)]
PORTS = ["tcp/443", "tcp/80", "tcp/22", "udp/53", "tcp/8000-8100", "udp/5000-5100", "icmp"]
DPORTS = (443, 80, 22, 53, 8080, 5050, 3389, 25)
NOW = datetime(2026, 6, 1, tzinfo=UTC)
Flow = tuple[str, tuple[str, ...], int, IPv4Address | IPv6Address, int | None, tuple[str, ...]]


def _cidr(rng: random.Random) -> str:
    if rng.random() < 0.1:
        length = rng.choice((32, 48, 64, 128))
        base = int(IPv6Network("2001:db8::/32").network_address) + (rng.getrandbits(96) << 0)
        return str(IPv6Network((base >> (128 - length) << (128 - length), length)))
    length = rng.choice((8, 12, 16, 16, 20, 24, 24, 24, 28, 32, 32))
    first = rng.choice((10, 172, 192))
    addr = (first << 24) | rng.getrandbits(24)
    if first == 172:
        addr = (172 << 24) | (16 << 16) | rng.getrandbits(20)
    elif first == 192:
        addr = (192 << 24) | (168 << 16) | rng.getrandbits(16)
    length = max(length, {10: 8, 172: 12, 192: 16}[first])
    mask = ((1 << length) - 1) << (32 - length)
    return f"{IPv4Address(addr & mask)}/{length}"


def make_policy(rules: int, seed: int = 7) -> dict[str, Any]:
    """A policy document with `rules` rules (the last ones for everyone) and a default deny."""
    rng = random.Random(seed)
    groups: dict[str, list[str]] = {g: rng.sample(CLIENTS, 40) for g in GROUPS}
    for i in range(0, len(GROUPS) - 1, 6):  # some nesting
        groups[GROUPS[i]].append(f"group:{GROUPS[i + 1]}")
    resources = {
        f"svc{i}": [
            _cidr(rng),
            {"fqdn": f"*.svc{i}.corp.example", "ports": ["tcp/443"]},
        ]
        for i in range(20)
    }
    out: list[dict[str, Any]] = []
    for i in range(rules - 2):
        roll = rng.random()
        if roll < 0.55:
            principals = [f"group:{rng.choice(GROUPS)}"]
        elif roll < 0.9:
            principals = rng.sample(CLIENTS, rng.randint(1, 3))
        else:
            principals = ["*"]
        kind = rng.random()
        if kind < 0.1:
            to: list[Any] = [rng.choice((f"host{i}.corp.example", f"*.app{i % 50}.corp.example"))]
        elif kind < 0.15:
            to = [f"svc{rng.randrange(20)}"]
        else:
            to = [_cidr(rng) for _ in range(rng.choice((1, 1, 1, 2)))]
        rule: dict[str, Any] = {
            "id": f"r{i}",
            "action": "allow" if rng.random() < 0.7 else "deny",
            "from": principals,
            "to": to,
        }
        if rng.random() < 0.6:
            rule["ports"] = rng.sample(PORTS, rng.randint(1, 2))
        out.append(rule)
    out.append(
        {"id": "deny-smtp", "action": "deny", "from": ["*"], "to": ["*"], "ports": ["tcp/25"]}
    )
    out.append(
        {"id": "dns", "action": "allow", "from": ["*"], "to": ["10.0.0.53"], "ports": ["udp/53"]}
    )
    return {"default": "deny", "groups": groups, "resources": resources, "rules": out}


def _inside(rng: random.Random, cidr: str) -> IPv4Address | IPv6Address:
    net = ip_network(cidr)
    offset = rng.randrange(net.num_addresses)
    return net.network_address + offset


def _port(rng: random.Random, specs: list[str] | None) -> tuple[int, int | None]:
    spec = rng.choice(specs) if specs else rng.choice(PORTS)
    if spec == "icmp":
        return 1, None
    proto, _, ports = spec.partition("/")
    low, _, high = ports.partition("-")
    return (6 if proto == "tcp" else 17), rng.randint(int(low), int(high or low))


def _random_flow(rng: random.Random) -> tuple[int, IPv4Address | IPv6Address, int | None]:
    proto, dport = _port(rng, None)
    if rng.random() < 0.1:
        return proto, _inside(rng, "2001:db8::/32"), dport
    return proto, _inside(rng, _cidr(rng)), dport


def make_flows(doc: dict[str, Any], seed: int = 11) -> list[Flow]:
    """Flows like a relay sees: 80 % to what some rule names, by a client it names; the rest
    anywhere. Every client presents the same certificate groups each time."""
    rng = random.Random(seed)
    certs = {c: tuple(rng.sample(GROUPS, rng.choice((0, 0, 1, 2)))) for c in CLIENTS}
    flows: list[Flow] = []
    for _ in range(FLOWS):
        fqdns: tuple[str, ...] = ()
        if rng.random() >= 0.8:
            client = rng.choice(CLIENTS)
            proto, dst, dport = _random_flow(rng)
            flows.append((client, certs[client], proto, dst, dport, fqdns))
            continue
        rule = rng.choice(doc["rules"])
        principal = rng.choice(rule["from"])
        if principal == "*":
            client = rng.choice(CLIENTS)
        elif principal.startswith("group:"):
            members = [m for m in doc["groups"][principal[6:]] if not m.startswith("group:")]
            client = rng.choice(members)
        else:
            client = principal
        target = rng.choice(rule["to"])
        if target in doc["resources"]:
            target = rng.choice(doc["resources"][target])
        if isinstance(target, dict):
            target = target["fqdn"]
        proto, dport = _port(rng, rule.get("ports"))
        if target == "*":
            dst = _inside(rng, _cidr(rng))
        elif "corp.example" in target:
            fqdns = (target.replace("*", f"h{rng.randrange(9)}"),)
            dst = _inside(rng, "10.0.0.0/8")
        else:
            dst = _inside(rng, target if "/" in target else f"{target}/32")
        flows.append((client, certs[client], proto, dst, dport, fqdns))
    return flows


@dataclass
class Result:
    """One policy size: compile time, decision rate, and what the flows got."""

    rules: int
    compile_s: float
    decisions_per_s: float
    us_per_decision: float
    allow: int
    deny: int
    default: int


def measure(
    compiled: CompiledPolicy, flows: list[Flow], seconds: float
) -> tuple[float, list[Decision]]:
    """Decisions per second over whole passes of `flows` for about `seconds` (after a warm-up)."""
    decide = compiled.decide
    outcomes = [decide(c, g, p, d, port, fqdns=f, now=NOW) for c, g, p, d, port, f in flows]
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for c, g, p, d, port, f in flows:
            decide(c, g, p, d, port, fqdns=f, now=NOW)
        done += len(flows)
    return done / (time.perf_counter() - start), outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="per size, over all rounds (default 2)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds, each timing every size once for seconds/rounds; the median is reported, "
        "so a change in the machine's load falls on every size (default 3)",
    )
    parser.add_argument("--json", type=Path, default=Path("bench/results/policy.json"))
    args = parser.parse_args(argv)
    load_at_start = quiet.snapshot(sample_s=1.0)
    # One workload for every size: drawn once, from the largest policy, with a fixed seed.
    flows = make_flows(make_policy(max(SIZES)))
    compiled: dict[int, CompiledPolicy] = {}
    compile_s: dict[int, float] = {}
    outcomes: dict[int, list[Decision]] = {}
    for size in SIZES:
        policy = Policy.model_validate(make_policy(size))
        start = time.perf_counter()
        compiled[size] = compile_policy(policy, geoip_available=False)
        compile_s[size] = time.perf_counter() - start
    rates: dict[int, list[float]] = {size: [] for size in SIZES}
    for _ in range(args.rounds):
        for size in SIZES:
            rate, outcomes[size] = measure(compiled[size], flows, args.seconds / args.rounds)
            rates[size].append(rate)
    results: list[Result] = []
    for size in SIZES:
        rate = statistics.median(rates[size])
        verdicts = ["default" if d.rule_id == "default" else d.verdict for d in outcomes[size]]
        results.append(
            Result(
                rules=size,
                compile_s=round(compile_s[size], 3),
                decisions_per_s=round(rate),
                us_per_decision=round(1e6 / rate, 2),
                allow=verdicts.count("allow"),
                deny=verdicts.count("deny"),
                default=verdicts.count("default"),
            )
        )
    base = results[0].decisions_per_s
    print(
        f"{'rules':>7} {'compile s':>10} {'decisions/s':>12} {'us/decision':>12} {'ratio':>6}"
        f"   allow/deny/default of the same {FLOWS} flows"
    )
    for r in results:
        print(
            f"{r.rules:>7} {r.compile_s:>10.3f} {r.decisions_per_s:>12,.0f} "
            f"{r.us_per_decision:>12.2f} {r.decisions_per_s / base:>6.2f}"
            f"   {r.allow}/{r.deny}/{r.default}"
        )
    ratio = results[-1].decisions_per_s / base
    verdict = "meets" if ratio >= 0.5 else "MISSES"
    print(f"ratio 10k/10 rules: {ratio:.2f} ({verdict} the target >= 0.5)")
    load = quiet.assess(load_at_start, quiet.snapshot())
    if warn := quiet.warning(load):
        print(warn, file=sys.stderr)
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load": load,
        },
        "quiet": load["quiet"],
        "settings": {
            "seconds": args.seconds,
            "rounds": args.rounds,
            "flows": FLOWS,
            "workload": f"the same {FLOWS} flows for every size, drawn from the "
            f"{max(SIZES)}-rule policy (policy seed 7, flow seed 11)",
        },
        "results": [asdict(r) for r in results],
        "rates_per_round": {str(size): [round(r) for r in rates[size]] for size in SIZES},
        "ratio_10k_10": round(ratio, 3),
        "target": 0.5,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
