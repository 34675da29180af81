"""Fixtures for the end-to-end tests: one lab of namespaces per module, torn down always."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

from zgate_lab.lab import Lab, have_tools

_counter = itertools.count()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here is e2e; skip them (or fail, under ZGATE_REQUIRE_E2E=1) without root."""
    reason = have_tools()
    for item in items:
        if "tests/e2e" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)
            # Under ZGATE_REQUIRE_E2E=1 (CI) nothing is skipped: a missing tool fails.
            if reason and os.environ.get("ZGATE_REQUIRE_E2E") != "1":
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """Namespaces + PKI + internet services + a relay (agents are started by the tests);
    agents have a WAN around the tunnel, counted."""
    tmp = tmp_path_factory.mktemp("lab")
    # leak_path: agents have a way to the internet host around the tunnel, so that a leak
    # would get through and be counted (Lab.leaked_packets).
    the_lab = Lab(tag=f"{os.getpid() % 10000}{next(_counter)}", workdir=tmp, leak_path=True)
    try:
        the_lab.build(agents=3)
        the_lab.make_pki(clients=("agent1", "agent2", "agent3", "victim"))
        the_lab.blob = the_lab.start_inet_services()  # type: ignore[attr-defined]
        the_lab.relay = the_lab.start_relay()  # type: ignore[attr-defined]
        yield the_lab
    finally:
        the_lab.teardown()
