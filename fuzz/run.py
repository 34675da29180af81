"""Run the fuzz harnesses one after another and summarize what they did (``make fuzz``).

For each harness ``fuzz/fuzz_<name>.py``: a libFuzzer run of ``--runs`` inputs that starts
from the seed corpus ``fuzz/corpus/<name>/`` and keeps what it finds in
``build/fuzz/<name>/corpus/`` (the seed directory is never written); its log, and any
finding (``crash-*``, ``timeout-*``, ``oom-*``) in ``build/fuzz/<name>/``. Then the corpus
is replayed, in a fresh process under coverage.py, to measure the line coverage of the
harness's target modules (``TARGETS``). The summary goes to ``build/fuzz/summary.json``
and a table to stdout.

Two coverage figures per harness: ``edges`` is libFuzzer's ``cov:`` count at the end of
the run (instrumented bytecode edges of everything the harness imported, third-party
parsers included); ``lines`` is coverage.py's line coverage of the target modules alone.
Exit status 1 when any harness had a finding.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
HARNESSES = (
    "capsules",
    "datagram",
    "ip_packet",
    "quic_header",
    "connect_request",
    "dns",
    "policy",
    "pki",
)
FINDING_PREFIXES = ("crash-", "timeout-", "oom-", "leak-", "slow-unit-")
_DONE = re.compile(r"^#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+) corp: (\d+)/")
_STATUS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/")
_STAT = re.compile(r"^stat::(\w+):\s+(\d+)")
_FINISHED = re.compile(r"^Done (\d+) runs in (\d+) second")


@dataclass
class Result:
    """What one harness's run did."""

    harness: str
    runs: int = 0
    seconds: float = 0.0
    exec_per_second: int = 0
    edges: int = 0
    features: int = 0
    corpus: int = 0
    peak_rss_mb: int = 0
    exit_status: int | None = None
    findings: list[str] = field(default_factory=list)
    exception: str = ""
    lines: dict[str, list[int]] = field(default_factory=dict)
    replayed: int = 0
    replay_failures: int = 0

    @property
    def line_percent(self) -> float:
        total = sum(n for n, _ in self.lines.values())
        hit = sum(h for _, h in self.lines.values())
        return 100.0 * hit / total if total else 0.0


def parse_log(result: Result, text: str) -> None:
    """Fill ``result`` from a libFuzzer log (the final DONE line, else the last status)."""
    uncaught = False  # the line after atheris's banner names the exception
    for line in text.splitlines():
        if match := _DONE.match(line) or _STATUS.match(line):
            runs, edges, features, corpus = map(int, match.groups())
            result.runs, result.edges = max(result.runs, runs), edges
            result.features, result.corpus = features, corpus
        elif match := _FINISHED.match(line):
            result.seconds = result.seconds or float(match.group(2))
        elif match := _STAT.match(line):
            name, value = match.group(1), int(match.group(2))
            if name == "number_of_executed_units":
                result.runs = value
            elif name == "average_exec_per_sec":
                result.exec_per_second = value
            elif name == "peak_rss_mb":
                result.peak_rss_mb = value
        elif uncaught and not result.exception and line.strip():
            result.exception = line.strip()[:300]
        uncaught = uncaught or "Uncaught Python exception" in line
    if result.seconds and result.runs and not result.exec_per_second:
        result.exec_per_second = int(result.runs / result.seconds)


def fuzz_one(name: str, args: argparse.Namespace) -> Result:
    """One libFuzzer run of harness ``name``."""
    work = args.out / name
    (work / "corpus").mkdir(parents=True, exist_ok=True)
    for stale in work.iterdir():
        if stale.name.startswith(FINDING_PREFIXES):
            stale.unlink()
    command = [
        sys.executable,
        str(FUZZ / f"fuzz_{name}.py"),
        str(work / "corpus"),
        str(FUZZ / "corpus" / name),
        f"-runs={args.runs}",
        f"-artifact_prefix={work}/",
        f"-timeout={args.timeout}",
        f"-rss_limit_mb={args.rss_limit_mb}",
        f"-max_len={args.max_len}",
        "-print_final_stats=1",
    ]
    if args.seed is not None:
        command.append(f"-seed={args.seed}")
    result = Result(name)
    started = time.monotonic()
    log = work / "fuzz.log"
    with log.open("w") as out:
        env = {**os.environ, "PYTHONPATH": str(FUZZ)}
        status = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
    result.seconds = round(time.monotonic() - started, 1)
    result.exit_status = status.returncode
    parse_log(result, log.read_text(errors="replace"))
    collect_findings(result, work)
    return result


def collect_findings(result: Result, work: Path) -> None:
    """The finding files libFuzzer left in ``work``."""
    result.findings = sorted(str(p) for p in work.iterdir() if p.name.startswith(FINDING_PREFIXES))


def replay_one(name: str, out: Path) -> dict[str, object]:
    """Run every seed and corpus input of ``name`` through its harness under coverage.py
    (in this process, which must not have imported the targets yet)."""
    import coverage

    cov = coverage.Coverage(data_file=None, branch=False, config_file=False)
    cov.start()
    sys.path.insert(0, str(FUZZ))
    harness = importlib.import_module(f"fuzz_{name}")
    inputs = sorted((FUZZ / "corpus" / name).iterdir())
    work = out / name / "corpus"
    if work.is_dir():
        inputs += sorted(work.iterdir())
    failures = 0
    for path in inputs:
        try:
            harness.test_one_input(path.read_bytes())
        except Exception:
            failures += 1
    cov.stop()
    lines: dict[str, list[int]] = {}
    for module_name in harness.TARGETS:
        module = importlib.import_module(module_name)  # imported by the harness already
        _, statements, _, missing, _ = cov.analysis2(module)
        lines[module_name] = [len(statements), len(statements) - len(missing)]
    return {"replayed": len(inputs), "replay_failures": failures, "lines": lines}


def replay(result: Result, out: Path) -> None:
    """Replay ``result``'s corpus in a fresh interpreter (so module-level lines count)."""
    command = [sys.executable, str(FUZZ / "run.py"), "--replay-one", result.harness]
    command += ["--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        result.exception = result.exception or f"replay failed: {done.stderr.strip()[-300:]}"
        return
    data = json.loads(done.stdout)
    result.replayed = data["replayed"]
    result.replay_failures = data["replay_failures"]
    result.lines = data["lines"]


def table(results: Sequence[Result]) -> str:
    """The summary as a fixed-width table."""
    rows = [
        f"{'harness':<16}{'inputs':>10}{'exec/s':>8}{'time s':>8}{'edges':>7}"
        f"{'lines %':>9}{'corpus':>8}  findings"
    ]
    for r in results:
        found = str(len(r.findings)) + (f" ({r.exception})" if r.findings else "")
        rows.append(
            f"{r.harness:<16}{r.runs:>10}{r.exec_per_second:>8}{r.seconds:>8.0f}{r.edges:>7}"
            f"{r.line_percent:>9.1f}{r.corpus:>8}  {found}"
        )
    return "\n".join(rows)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run the atheris fuzz harnesses in fuzz/ one at a time and summarize "
        "inputs run, speed, coverage and findings (build/fuzz/summary.json).",
    )
    parser.add_argument(
        "--runs", type=int, default=1_000_000, help="inputs per harness (default 1000000)"
    )
    parser.add_argument(
        "--targets",
        default=",".join(HARNESSES),
        help=f"comma-separated harnesses (default all: {','.join(HARNESSES)})",
    )
    parser.add_argument(
        "--timeout", type=int, default=10, help="seconds one input may take (default 10)"
    )
    parser.add_argument(
        "--max-len", type=int, default=4096, help="longest input in bytes (default 4096)"
    )
    parser.add_argument(
        "--rss-limit-mb", type=int, default=2048, help="memory limit per run (default 2048)"
    )
    parser.add_argument("--seed", type=int, default=None, help="libFuzzer's random seed")
    parser.add_argument(
        "--out", type=Path, default=Path("build/fuzz"), help="work directory (build/fuzz)"
    )
    parser.add_argument(
        "--summarize-only",
        action="store_true",
        help="no fuzzing: read the existing logs and corpora in --out, replay for coverage",
    )
    parser.add_argument("--replay-one", metavar="HARNESS", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in targets if t not in HARNESSES]
    if unknown:
        parser.error(f"unknown harness {', '.join(unknown)} (known: {', '.join(HARNESSES)})")
    if args.runs < 1 or args.timeout < 1 or args.max_len < 1 or args.rss_limit_mb < 1:
        parser.error("--runs, --timeout, --max-len and --rss-limit-mb must be positive")
    args.targets = targets
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replay_one:
        print(json.dumps(replay_one(args.replay_one, args.out)))
        return 0
    results = []
    for name in args.targets:
        if args.summarize_only:
            result = Result(name)
            log = args.out / name / "fuzz.log"
            if log.is_file():
                parse_log(result, log.read_text(errors="replace"))
                collect_findings(result, args.out / name)
        else:
            print(f"== fuzz_{name}: {args.runs} inputs", flush=True)
            result = fuzz_one(name, args)
        replay(result, args.out)
        results.append(result)
        print(table([result]).splitlines()[1], flush=True)
    summary = [asdict(r) | {"line_percent": round(r.line_percent, 1)} for r in results]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(table(results))
    print(f"summary: {args.out / 'summary.json'}")
    return 1 if any(r.findings or r.replay_failures for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
