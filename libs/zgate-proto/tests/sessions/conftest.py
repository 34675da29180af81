"""Fixtures the CONNECT-IP session tests in this directory share: one test PKI per module and
a link of every kind (memory, aioquic, qh3) between agent and relay. They live here rather than
in zgate_testkit because they are pytest fixtures and the test kit does not depend on pytest;
test modules cannot import each other under --import-mode=importlib. In a directory of its own
because mypy names a conftest.py directly in a test root `conftest`, as it does the repo's."""

from __future__ import annotations

import pytest

from zgate_pki import PkiPaths
from zgate_testkit.memquic import Link
from zgate_testkit.pki import make_pki
from zgate_testkit.sessions import LINKS, make_link


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    """A test PKI whose client certificates are in group ``eng``."""
    return make_pki(tmp_path_factory.mktemp("pki") / "pki", groups=["eng"])


@pytest.fixture(params=LINKS)
def link(request: pytest.FixtureRequest, pki: PkiPaths) -> Link:
    """A fresh link between agent and relay, once per kind of link."""
    return make_link(request.param, pki)
