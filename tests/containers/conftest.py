"""The container tests build images and start the compose lab: minutes of work, run on purpose.

They run under `make container-test` (which sets ZGATE_CONTAINER_TESTS=1) or when selected with
`-m containers`; a plain `pytest` / `make test` leaves them out (deselected, not skipped:
`.ci/run` runs them on their own right after `make test`).
"""

from __future__ import annotations

import os
from typing import Any

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    markexpr = config.getoption("markexpr", "") or ""
    selected = os.environ.get("ZGATE_CONTAINER_TESTS") == "1" or (
        "containers" in markexpr and "not containers" not in markexpr
    )
    if selected:
        return
    deselected = [item for item in items if "containers" in item.keywords]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if "containers" not in item.keywords]


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    timings = getattr(config, "zgate_container_timings", None)
    if timings:
        line = ", ".join(f"{step} {seconds:.1f}s" for step, seconds in timings.items())
        terminalreporter.write_line(f"container lab timings: {line}")
