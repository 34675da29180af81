"""The fuzz harnesses (fuzz/, `make fuzz`) in CI: every seed passes its harness, and a short
atheris run of each harness from its seeds finds nothing.

The full campaign (a million inputs per harness) is `make fuzz`; this keeps the harnesses
working and catches a parser change that breaks on its own seeds or on inputs a few
thousand mutations away from them.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

FUZZ = Path(__file__).resolve().parents[1] / "fuzz"
sys.path.insert(0, str(FUZZ))
run = importlib.import_module("run")

# Inputs per harness in the atheris run: a few thousand, fewer where one input costs more
# (a policy is YAML + pydantic + compilation, ~2 ms; a certificate is a signature check).
SMOKE_RUNS = {"policy": 300, "pki": 1500, "dns": 1500}
DEFAULT_RUNS = 2000


def harness(name: str) -> ModuleType:
    return importlib.import_module(f"fuzz_{name}")


def test_every_harness_has_seeds_and_targets() -> None:
    for name in run.HARNESSES:
        assert (FUZZ / f"fuzz_{name}.py").is_file(), name
        seeds = list((FUZZ / "corpus" / name).iterdir())
        assert seeds, f"no seeds for {name}"
        assert sum(p.stat().st_size for p in seeds) < 16 * 1024, f"{name}'s seeds are large"
        for module in harness(name).TARGETS:
            importlib.import_module(module)


@pytest.mark.parametrize("name", run.HARNESSES)
def test_seeds_pass_their_harness(name: str) -> None:
    test_one_input: Callable[[bytes], None] = harness(name).test_one_input
    for seed in sorted((FUZZ / "corpus" / name).iterdir()):
        test_one_input(seed.read_bytes())


def test_a_broken_invariant_is_a_finding() -> None:
    # The harnesses' checks must be able to fail: a check that does not hold raises.
    from harness import InvariantBroken, check

    with pytest.raises(InvariantBroken, match="lengths"):
        check(False, "lengths out of order")


@pytest.mark.parametrize("name", run.HARNESSES)
def test_short_atheris_run_finds_nothing(name: str, tmp_path: Path) -> None:
    runs = SMOKE_RUNS.get(name, DEFAULT_RUNS)
    command = [
        sys.executable,
        str(FUZZ / f"fuzz_{name}.py"),
        str(tmp_path),  # the run's own corpus: the seeds in the repo are only read
        str(FUZZ / "corpus" / name),
        f"-runs={runs}",
        f"-artifact_prefix={tmp_path}/",
        "-timeout=10",
        "-max_len=4096",
        "-seed=1",
        "-print_final_stats=1",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    log = done.stdout + done.stderr
    result = run.Result(name)
    run.parse_log(result, log)
    findings = [p.name for p in tmp_path.iterdir() if p.name.startswith(run.FINDING_PREFIXES)]
    assert done.returncode == 0 and not findings, f"{findings} {result.exception}\n{log[-3000:]}"
    assert result.runs == runs
    assert result.edges > 0
