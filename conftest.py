"""Applies the `needs` marker to every test path (libs, services, packages, tests).

`@pytest.mark.needs(root=True, tools=(...), reason="...")` skips a test where root or a tool is
missing, and fails it under ZGATE_REQUIRE_E2E=1; see tests/support/zgate_needs.py.
"""

from __future__ import annotations

import pytest
from zgate_needs import missing, skip_or_fail


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs"):
        if mark.args:
            raise pytest.UsageError(f"{item.nodeid}: needs() takes keyword arguments only")
        if (reason := missing(**mark.kwargs)) is not None:
            skip_or_fail(reason)
