"""scripts/coverage_floors.py: each import package's line and branch coverage held to its floor
([tool.zgate.coverage-floors] in pyproject.toml)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


FLOORS = _load(ROOT / "scripts/coverage_floors.py")


def _report(files: dict[str, tuple[int, int, int, int]]) -> dict[str, object]:
    return {
        "files": {
            path: {
                "summary": {
                    "num_statements": s,
                    "covered_lines": cs,
                    "num_branches": b,
                    "covered_branches": cb,
                }
            }
            for path, (s, cs, b, cb) in files.items()
        }
    }


def test_coverage_floors_per_package(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "coverage.json"
    report.write_text(
        json.dumps(
            _report(
                {
                    "libs/zgate-proto/src/zgate_proto/a.py": (100, 90, 10, 9),
                    "libs/zgate-proto/src/zgate_proto/sub/b.py": (100, 100, 10, 10),
                    "libs/zgate-host/src/zgate_host/c.py": (10, 5, 4, 1),
                }
            )
        )
    )
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        "[tool.zgate.coverage-floors]\n"
        "zgate_proto = { line = 95, branch = 95 }\n"
        "zgate_host = { line = 40, branch = 30 }\n"
    )
    args = ["--json", str(report), "--pyproject", str(pyproject)]
    assert FLOORS.main(args) == 1
    out, err = capsys.readouterr()
    assert "zgate_proto" in out and "95.0" in out  # 190/200 lines, 19/20 branches
    assert err.strip().splitlines() == [
        "coverage: zgate_host branch coverage 25.0 % is under its floor of 30 %"
    ]
    pyproject.write_text(
        "[tool.zgate.coverage-floors]\n"
        "zgate_proto = { line = 95, branch = 95 }\n"
        "zgate_relay = { line = 1, branch = 1 }\n"
    )
    assert FLOORS.main(args) == 1
    err = capsys.readouterr().err
    assert "zgate_relay has a floor but was not measured" in err
    assert "zgate_host was measured but has no floor" in err


def test_coverage_floors_pass_and_missing_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "coverage.json"
    report.write_text(json.dumps(_report({"x/src/zgate_pki/a.py": (4, 4, 0, 0)})))
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text("[tool.zgate.coverage-floors]\nzgate_pki = { line = 99, branch = 99 }\n")
    assert FLOORS.main(["--json", str(report), "--pyproject", str(pyproject)]) == 0
    assert "all 1 packages" in capsys.readouterr().out
    missing_report = ["--json", str(tmp_path / "none.json"), "--pyproject", str(pyproject)]
    assert FLOORS.main(missing_report) == 1


def test_the_repository_has_a_floor_for_every_package() -> None:
    floors = FLOORS.load_floors(ROOT / "pyproject.toml")
    assert set(floors) == {
        "zgate_proto",
        "zgate_policy",
        "zgate_pki",
        "zgate_host",
        "zgate_relay",
        "zgate_agent",
        "zgate_connector",
        "zgate_control",
        "zgate_cli",
        "zgate_lab",
    }
