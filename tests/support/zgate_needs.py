"""Skips for missing privileges, tools or kernel features that CI turns into failures.

A test that needs root, a command or a kernel feature is skipped, with the reason, where that is
missing; under `ZGATE_REQUIRE_E2E=1` (CI, `.ci/run`) it fails instead, so a runner that lost its
root or its `nft` cannot pass by skipping. Two forms, both on pytest's `pythonpath`:

    @pytest.mark.needs(root=True, tools=("ip", "nft"), reason="network namespaces")
    def test_x() -> None: ...              # the marker; conftest.py at the root applies it

    skip_or_fail("this kernel has no UDP GSO/GRO")   # inside a test, for a probe at run time

Tests that skip because they must run *without* root are not for this: nothing requires them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from typing import NoReturn

import pytest

REQUIRE_ENV = "ZGATE_REQUIRE_E2E"


def required() -> bool:
    """True under ZGATE_REQUIRE_E2E=1: nothing that needs privileges may be skipped."""
    return os.environ.get(REQUIRE_ENV) == "1"


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the running test, or fail it under ZGATE_REQUIRE_E2E=1."""
    if required():
        pytest.fail(f"{REQUIRE_ENV}=1, but {reason}", pytrace=False)
    pytest.skip(reason)


def missing(*, root: bool = False, tools: Iterable[str] = (), reason: str = "") -> str | None:
    """What is missing for a test that needs root and `tools` (for `reason`), or None."""
    lacks: list[str] = []
    if root and os.geteuid() != 0:
        lacks.append("root")
    lacks.extend(tool for tool in tools if shutil.which(tool) is None)
    if not lacks:
        return None
    return f"needs {' and '.join(lacks)}" + (f" ({reason})" if reason else "")
