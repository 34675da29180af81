"""What several tunnel.py runs say together: per-run ratios and their pooled geometric means.

    uv run --frozen python bench/summarize.py bench/results/*.json [--only-quiet] [--json FILE]

For each result file (`tunnel.py --json FILE`): when, commit, whether the machine was quiet
(bench/quiet.py; "?" for files written before it), and the run's ratios of medians for
TCP up and down (the `ratios` section: `zgate-datagram[qh3]/wireguard-go`,
`allow-all/noenforce[aioquic]`, ...; files from before the QUIC engine dimension name the
zgate paths without an engine, `zgate-datagram/wireguard-go`, and are read as they are: see
bench/path_names.py). Then, per ratio, pooled over every round of every run: the ratios of
the two paths measured in the same round (a round measures each path once, each on a fresh
relay and agent), their geometric mean and its 95 % interval (Student's t on the
log-ratios), and the range of the per-run ratios. This is what bench/RESULTS.md means by a
pooled figure; a range quoted there is the per-run range this prints.

Rounds are paired by `sample_rounds` (written since this script exists); in older files, by
position when both paths have one sample per round, else that run is left out of the pool
and the script says so. `veth` is measured before the rounds (`--baseline-repeat` times), so
its ratios pair its n-th repetition with the n-th round: read the `.../veth` lines as rough.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from path_names import ratio_pairs

FIELDS = ("tcp_mbps", "tcp_down_mbps")
#: Student's t, two-sided 95 %, by degrees of freedom (1.96 beyond the table).
T975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}
T975 |= {10: 2.23, 12: 2.18, 15: 2.13, 20: 2.09, 25: 2.06, 30: 2.04, 40: 2.02, 60: 2.00}


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with `df` degrees of freedom (rounded up in df)."""
    for known in sorted(T975):
        if df <= known:
            return T975[known]
    return 1.96


@dataclass
class Pooled:
    """One ratio of one figure, pooled over rounds and runs."""

    ratio: str
    field: str
    rounds: int
    runs: int
    geometric_mean: float | None
    low: float | None
    high: float | None
    per_run_min: float | None
    per_run_max: float | None


def geometric_mean_interval(values: list[float]) -> tuple[float, float | None, float | None]:
    """Geometric mean of positive `values` and its 95 % interval (None with one value)."""
    logs = [math.log(v) for v in values]
    mean = statistics.fmean(logs)
    if len(logs) < 2:
        return math.exp(mean), None, None
    half = t975(len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def paired_rounds(doc: Mapping[str, Any], top: str, bottom: str, field: str) -> list[float] | None:
    """The per-round ratios top/bottom of one run, or None when rounds cannot be paired."""
    samples = doc.get("samples", {})
    if top not in samples or bottom not in samples:
        return []
    rounds = doc.get("sample_rounds")
    if rounds and top in rounds and bottom in rounds:
        by_round_top = dict(zip(rounds[top], samples[top], strict=True))
        by_round_bottom = dict(zip(rounds[bottom], samples[bottom], strict=True))
    elif len(samples[top]) == len(samples[bottom]):
        by_round_top = dict(enumerate(samples[top]))
        by_round_bottom = dict(enumerate(samples[bottom]))
    else:
        return None
    out = []
    for i in sorted(by_round_top.keys() & by_round_bottom.keys()):
        a, b = by_round_top[i].get(field), by_round_bottom[i].get(field)
        if a and b:
            out.append(a / b)
    return out


def pool(docs: Iterable[Mapping[str, Any]]) -> tuple[list[Pooled], list[str]]:
    """Every ratio of FIELDS pooled over `docs`; notes on runs left out of a pool."""
    docs = list(docs)
    pooled, notes = [], []
    pairs: dict[str, tuple[str, str]] = {}
    for doc in docs:
        pairs |= ratio_pairs(measured_paths(doc))
    for label, (top, bottom) in pairs.items():
        for field in FIELDS:
            values: list[float] = []
            per_run: list[float] = []
            runs = 0
            for doc in docs:
                rounds = paired_rounds(doc, top, bottom, field)
                if rounds is None:
                    notes.append(f"{doc.get('when')}: {label} rounds cannot be paired; left out")
                    continue
                if rounds:
                    runs += 1
                    values.extend(rounds)
                ratio = doc.get("ratios", {}).get(label, {}).get(field)
                if ratio:
                    per_run.append(ratio)
            if not values:
                continue
            mean, low, high = geometric_mean_interval(values)
            pooled.append(
                Pooled(
                    ratio=label,
                    field=field,
                    rounds=len(values),
                    runs=runs,
                    geometric_mean=round(mean, 3),
                    low=None if low is None else round(low, 3),
                    high=None if high is None else round(high, 3),
                    per_run_min=round(min(per_run), 3) if per_run else None,
                    per_run_max=round(max(per_run), 3) if per_run else None,
                )
            )
    return pooled, sorted(set(notes))


def measured_paths(doc: Mapping[str, Any]) -> list[str]:
    """The paths a run has figures or samples for, in the run's order."""
    return list(dict.fromkeys([*(doc.get("paths") or {}), *(doc.get("samples") or {})]))


def is_quiet(doc: Mapping[str, Any]) -> bool | None:
    """The run's quiet flag (bench/quiet.py), or None for files from before it."""
    value = doc.get("quiet")
    return value if isinstance(value, bool) else None


def runs_table(docs: list[Mapping[str, Any]]) -> str:
    """One line per run: when, commit, quiet, and its ratios of medians."""
    lines = []
    for doc in docs:
        quiet = {True: "quiet", False: "NOT quiet", None: "quiet ?"}[is_quiet(doc)]
        commit = (doc.get("code") or {}).get("commit")
        parts = []
        known = ratio_pairs(measured_paths(doc))
        for label, values in (doc.get("ratios") or {}).items():
            if label in known and values.get("tcp_mbps") and values.get("tcp_down_mbps"):
                parts.append(f"{label} {values['tcp_mbps']:.2f}/{values['tcp_down_mbps']:.2f}")
        lines.append(f"{doc.get('when')} {commit} {quiet}: " + ("; ".join(parts) or "no ratios"))
    return "\n".join(lines)


def pooled_table(pooled: list[Pooled]) -> str:
    """The pooled figures, one line per ratio and figure."""

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    width = max([30, *(len(p.ratio) for p in pooled)])
    lines = [
        f"{'ratio':<{width}} {'figure':<14} {'runs':>4} {'rounds':>6} {'geo mean':>9} "
        f"{'95 % interval':>15} {'per-run range':>15}"
    ]
    for p in pooled:
        interval = f"{fmt(p.low)}-{fmt(p.high)}"
        per_run = f"{fmt(p.per_run_min)}-{fmt(p.per_run_max)}"
        lines.append(
            f"{p.ratio:<{width}} {p.field:<14} {p.runs:>4} {p.rounds:>6} "
            f"{fmt(p.geometric_mean):>9} {interval:>15} {per_run:>15}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("files", nargs="+", type=Path, help="tunnel.py result JSON files")
    parser.add_argument("--only-quiet", action="store_true", help="leave out runs not marked quiet")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args(argv)
    docs = [json.loads(path.read_text()) for path in args.files]
    if args.only_quiet:
        docs = [doc for doc in docs if is_quiet(doc)]
    if not docs:
        print("no runs to summarize", file=sys.stderr)
        return 1
    pooled, notes = pool(docs)
    print(runs_table(docs))
    print()
    print(pooled_table(pooled))
    for note in notes:
        print(f"note: {note}")
    not_quiet = [d.get("when") for d in docs if is_quiet(d) is False]
    if not_quiet:
        print(f"warning: {len(not_quiet)} runs were not quiet: {', '.join(map(str, not_quiet))}")
    if args.json:
        args.json.write_text(
            json.dumps({"runs": len(docs), "pooled": [asdict(p) for p in pooled]}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
