#!/usr/bin/env python3
"""Line and branch coverage per import package, each held to its own floor (`make test`).

    uv run --frozen python scripts/coverage_floors.py [--json build/coverage/coverage.json]

Reads coverage's JSON report (`pytest --cov-report=json:...`, or `coverage json`) and the floors
in the root pyproject.toml, `[tool.zgate.coverage-floors]`:

    zgate_proto = { line = 97, branch = 95 }

coverage's own `fail_under` is one figure for the whole tree, so a package with little coverage
hides behind the well-tested ones; here each package passes or fails on its own. Prints one row
per package, then one line per figure under its floor, and exits 1 if there is any, if a
package with a floor was not measured, or if a measured package has no floor.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("line", "branch")


@dataclass
class Tally:
    """Covered and total statements and branches of one package."""

    statements: int = 0
    covered_statements: int = 0
    branches: int = 0
    covered_branches: int = 0

    def percent(self, kind: str) -> float:
        """Line or branch coverage in per cent (100 when there is nothing to cover)."""
        if kind == "line":
            covered, total = self.covered_statements, self.statements
        else:
            covered, total = self.covered_branches, self.branches
        return 100.0 if total == 0 else 100.0 * covered / total


def package_of(path: str) -> str | None:
    """The import package a measured file belongs to: the directory after `src/`."""
    parts = Path(path).parts
    if "src" not in parts:
        return None
    index = len(parts) - 1 - parts[::-1].index("src")
    return parts[index + 1] if index + 2 < len(parts) else None


def tally(report: Mapping[str, Any]) -> dict[str, Tally]:
    """Sum coverage's per-file summaries by package."""
    packages: dict[str, Tally] = {}
    for path, data in report["files"].items():
        package = package_of(path)
        if package is None:
            continue
        summary = data["summary"]
        total = packages.setdefault(package, Tally())
        total.statements += summary["num_statements"]
        total.covered_statements += summary["covered_lines"]
        total.branches += summary.get("num_branches", 0)
        total.covered_branches += summary.get("covered_branches", 0)
    return packages


def check(packages: Mapping[str, Tally], floors: Mapping[str, Mapping[str, float]]) -> list[str]:
    """One line per problem: a figure under its floor, a package not measured or without floor."""
    problems: list[str] = []
    for package in sorted(floors.keys() - packages.keys()):
        problems.append(f"coverage: {package} has a floor but was not measured")
    for package in sorted(packages.keys() - floors.keys()):
        problems.append(
            f"coverage: {package} was measured but has no floor in [tool.zgate.coverage-floors]"
        )
    for package in sorted(packages.keys() & floors.keys()):
        for kind in KINDS:
            floor = floors[package].get(kind)
            if floor is None:
                problems.append(f"coverage: {package} has no {kind} floor")
                continue
            figure = packages[package].percent(kind)
            # Compared at the one decimal printed, so the message never reads "75.0 < 75".
            if round(figure, 1) < floor:
                problems.append(
                    f"coverage: {package} {kind} coverage {figure:.1f} % is under its floor "
                    f"of {floor:g} %"
                )
    return problems


def table(packages: Mapping[str, Tally], floors: Mapping[str, Mapping[str, float]]) -> str:
    """The per-package summary: line and branch coverage beside their floors."""
    lines = [
        f"{'package':<16} {'lines':>13} {'line %':>7} {'floor':>6}"
        f" {'branches':>11} {'branch %':>9} {'floor':>6}"
    ]
    for package in sorted(packages):
        t = packages[package]
        floor = floors.get(package, {})
        statements = f"{t.covered_statements}/{t.statements}"
        branches = f"{t.covered_branches}/{t.branches}"
        lines.append(
            f"{package:<16} {statements:>13} "
            f"{t.percent('line'):>7.1f} {floor.get('line', float('nan')):>6g}"
            f" {branches:>11} "
            f"{t.percent('branch'):>9.1f} {floor.get('branch', float('nan')):>6g}"
        )
    return "\n".join(lines)


def load_floors(pyproject: Path) -> dict[str, dict[str, float]]:
    """`[tool.zgate.coverage-floors]` of pyproject.toml."""
    data = tomllib.loads(pyproject.read_text())
    floors = data.get("tool", {}).get("zgate", {}).get("coverage-floors")
    if not isinstance(floors, dict) or not floors:
        raise SystemExit(f"coverage: no [tool.zgate.coverage-floors] table in {pyproject}")
    return {name: dict(values) for name, values in floors.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--json", type=Path, default=ROOT / "build/coverage/coverage.json")
    parser.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml")
    args = parser.parse_args(argv)
    if not args.json.exists():
        print(f"coverage: no report at {args.json} (run make test)", file=sys.stderr)
        return 1
    floors = load_floors(args.pyproject)
    packages = tally(json.loads(args.json.read_text()))
    print(table(packages, floors))
    problems = check(packages, floors)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    print(f"coverage: all {len(packages)} packages at or above their line and branch floors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
