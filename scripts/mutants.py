#!/usr/bin/env python3
"""Mutation testing of the sans-IO libraries and the relay core with mutmut (`make mutants`).

mutmut names a mutant after its file's path relative to where it runs (only a leading `src.`
is dropped), so it must run from each package's directory, where `src/zgate_proto/varint.py`
becomes the module `zgate_proto.varint`. This script therefore gives every package a work
directory, `.mutants/<package>/`, holding a copy of its `src/` and `tests/` and a
pyproject.toml with the mutmut and pytest settings below; mutmut writes its mutated copies
to `mutants/` in there, and PYTHONPATH puts `mutants/src` ahead of the editable install, so
the tests import the mutants. A work directory is rebuilt when its sources or tests change.

    scripts/mutants.py                 every module below, one after the other
    scripts/mutants.py proto.varint relay.dns   only these modules
    scripts/mutants.py --timeout 1800     bound each module's run (seconds; it is then stopped)

Each module's figures (mutants, killed, survived, timeouts, run time) go to
`.mutants/<package>/<module>.json`, and its survivors are listed; docs/mutants.md says why
the remaining ones live.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".mutants"


@dataclass(frozen=True)
class Package:
    """A workspace member, the modules of it to mutate and the tests that judge them."""

    directory: str
    modules: tuple[str, ...]  # dotted module names, relative to src/
    tests: tuple[str, ...]  # test files (relative to the member) run against the mutants


PACKAGES = {
    "proto": Package(
        "libs/zgate-proto",
        (
            "zgate_proto.capsules",
            "zgate_proto.varint",
            "zgate_proto.datagram",
            "zgate_proto.request",
        ),
        ("tests",),
    ),
    "policy": Package(
        "libs/zgate-policy",
        ("zgate_policy.matcher", "zgate_policy.flows"),
        (
            "tests/test_policy_matcher.py",
            "tests/test_policy_flows.py",
            "tests/test_policy_flows_quoted.py",
            "tests/test_policy_property.py",
            "tests/test_policy_testing.py",
            "tests/test_policy_lint.py",
        ),
    ),
    "relay": Package(
        "services/relay",
        ("zgate_relay.router", "zgate_relay.pool", "zgate_relay.dns"),
        (
            "tests/test_relay_router.py",
            "tests/test_relay_router_edges.py",
            "tests/test_relay_sites.py",
            "tests/test_relay_enforce.py",
            "tests/test_relay_pool.py",
            "tests/test_relay_pool_edges.py",
            "tests/test_relay_dns.py",
        ),
    ),
}


def _tree_digest(*trees: Path) -> str:
    digest = hashlib.sha256()
    for tree in trees:
        for path in sorted(tree.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(tree.parent)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


def _toml(value: object) -> str:
    # JSON strings, integers and lists of them are valid TOML as they stand.
    return json.dumps(value)


def _pyproject(package: Package) -> str:
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pytest_options = dict(root["tool"]["pytest"]["ini_options"])
    pytest_options.pop("testpaths", None)
    pytest_options["pythonpath"] = ["tests"]
    pytest_options["addopts"] += " -p no:cacheprovider"
    mutmut_options = {
        "source_paths": ["src"],
        "only_mutate": [f"src/{m.replace('.', '/')}.py" for m in package.modules],
        "pytest_add_cli_args_test_selection": [
            t for t in package.tests if (ROOT / package.directory / t).exists()
        ],
        "pytest_add_cli_args": ["-q", "-x"],
    }
    lines = ["[tool.mutmut]"]
    lines += [f"{key} = {_toml(value)}" for key, value in mutmut_options.items()]
    lines += ["", "[tool.pytest.ini_options]"]
    lines += [f"{key} = {_toml(value)}" for key, value in pytest_options.items()]
    return "\n".join(lines) + "\n"


def prepare(name: str, package: Package) -> Path:
    """The package's work directory, rebuilt if its sources or tests changed."""
    member = ROOT / package.directory
    work = WORK / name
    digest = _tree_digest(member / "src", member / "tests") + _pyproject(package)
    stamp = work / ".source-digest"
    if stamp.exists() and stamp.read_text() == digest:
        return work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", ".hypothesis")
    shutil.copytree(member / "src", work / "src", ignore=ignore)
    shutil.copytree(member / "tests", work / "tests", ignore=ignore)
    (work / "pyproject.toml").write_text(_pyproject(package))
    stamp.write_text(digest)
    return work


def _mutmut(work: Path, args: list[str], timeout: float | None) -> subprocess.CompletedProcess[str]:
    # The directory must exist before Python starts: a missing sys.path entry is cached as
    # having nothing to import, and the tests would then import the original modules.
    (work / "mutants" / "src").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(work / "mutants" / "src"))
    with subprocess.Popen(
        [sys.executable, "-m", "mutmut", *args],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            output, _ = process.communicate()
            output += f"\n[stopped after {timeout:.0f} s]\n"
        return subprocess.CompletedProcess(process.args, process.returncode, output, "")


def run_module(name: str, module: str, children: int, timeout: float | None) -> dict[str, object]:
    """Run mutmut on one module; its figures and survivors."""
    work = prepare(name, PACKAGES[name])
    started = time.monotonic()
    run = _mutmut(work, ["run", "--max-children", str(children), f"{module}.*"], timeout)
    elapsed = time.monotonic() - started
    (work / f"{module}.log").write_text(run.stdout)
    results = _mutmut(work, ["results", "--all", "true"], 600).stdout
    status: dict[str, str] = {}
    for line in results.splitlines():
        key, sep, value = line.strip().partition(": ")
        if sep and key.startswith(f"{module}."):
            status[key] = value
    counts: dict[str, int] = {}
    for value in status.values():
        counts[value] = counts.get(value, 0) + 1
    summary: dict[str, object] = {
        "module": module,
        "mutants": len(status),
        "counts": counts,
        "seconds": round(elapsed, 1),
        "survivors": sorted(k for k, v in status.items() if v == "survived"),
        "exit_status": run.returncode,
    }
    (work / f"{module}.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="package.module, e.g. proto.varint")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per module")
    parser.add_argument("--children", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    options = parser.parse_args()
    wanted = options.modules or [
        f"{name}.{module.rpartition('.')[2]}"
        for name, package in PACKAGES.items()
        for module in package.modules
    ]
    failed = False
    for item in wanted:
        name, _, short = item.partition(".")
        package = PACKAGES.get(name)
        matches = [m for m in package.modules if m.endswith(f".{short}")] if package else []
        if not matches:
            print(f"unknown module {item!r}; known: {', '.join(sorted(PACKAGES))}.<module>")
            return 2
        summary = run_module(name, matches[0], options.children, options.timeout)
        figures = f"{summary['mutants']} mutants {summary['counts']} in {summary['seconds']} s"
        print(f"{summary['module']}: {figures}")
        for survivor in summary["survivors"]:  # type: ignore[attr-defined]
            print(f"  survived: {survivor}")
        failed |= summary["exit_status"] != 0
    print(f"details: {WORK}/<package>/<module>.json; `cd {WORK}/<package> && mutmut show NAME`")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
