"""The suite's shared test helpers: the `needs` marker and the `skip_or_fail` fixture.

A test that needs root, a command or a kernel feature is skipped, with the reason, where that is
missing; under `ZGATE_REQUIRE_E2E=1` (CI, `.ci/run`) it fails instead, so a runner that lost its
root or its `nft` cannot pass by skipping. Two forms:

    @pytest.mark.needs(root=True, tools=("ip", "nft"), reason="network namespaces")
    def test_x() -> None: ...

    def test_y(skip_or_fail: Callable[[str], NoReturn]) -> None:
        if not supports_gso(sock):
            skip_or_fail("this kernel has no UDP GSO/GRO")   # a probe at run time

They live in this file rather than in an importable package because pytest loads it for every
test path in every environment: CI tests each member with only that member and the dev tools
installed (no zgate-lab), and tests reach a marker and a fixture by name, with no `pythonpath`.
Tests that skip because they must run *without* root are not for this: nothing requires them.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from typing import NoReturn

import pytest

REQUIRE_ENV = "ZGATE_REQUIRE_E2E"


def required() -> bool:
    """True under ZGATE_REQUIRE_E2E=1: nothing that needs privileges may be skipped."""
    return os.environ.get(REQUIRE_ENV) == "1"


def skip_or_fail_now(reason: str) -> NoReturn:
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


@pytest.fixture
def skip_or_fail() -> Callable[[str], NoReturn]:
    """`skip_or_fail(reason)` for a probe inside a test: skips, or fails under CI."""
    return skip_or_fail_now


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Applies `@pytest.mark.needs(root=..., tools=..., reason=...)` to every test path."""
    for mark in item.iter_markers("needs"):
        if mark.args:
            raise pytest.UsageError(f"{item.nodeid}: needs() takes keyword arguments only")
        if (reason := missing(**mark.kwargs)) is not None:
            skip_or_fail_now(reason)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Undo what a test's call of a service's main() did to logging: the root level and the
    handler configure_logging() installed. Left in place they change what later tests see
    (records at INFO that a test asserts are absent, output into another test's stderr)."""
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)
    for handler in list(root.handlers):
        if type(handler).__name__ in ("_ZgateHandler", "_StderrHandler"):
            root.removeHandler(handler)
