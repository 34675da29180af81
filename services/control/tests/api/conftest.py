"""Fixtures for the control plane's tests: every database test runs on SQLite and on a real
PostgreSQL server started here (once per session, a fresh database per test)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from fastapi.testclient import TestClient

from zgate_control.app import create_app
from zgate_control.auth import Role, create_token
from zgate_control.bootstrap import first_start
from zgate_control.db import Database
from zgate_control.settings import ControlSettings
from zgate_testkit.postgres import PostgresServer, find_postgres_bin

_counter = itertools.count()


@pytest.fixture(scope="session")
def postgres_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[PostgresServer | None]:
    """One PostgreSQL server for the session (None where the binaries are missing)."""
    if find_postgres_bin() is None:
        yield None
        return
    with PostgresServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    postgres_server: PostgresServer | None,
    skip_or_fail: Callable[[str], NoReturn],
) -> str:
    """A URL of an empty database: SQLite in tmp_path, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'control.db'}"
    if postgres_server is None:
        skip_or_fail("no PostgreSQL server binaries (Debian package postgresql)")
    return postgres_server.create_database(f"zgate_test_{next(_counter)}")


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """A migrated database with its CA (no token yet)."""
    db = Database(database_url)
    db.upgrade()
    first_start(db, trust_domain="test.zgate", bootstrap_token=False)
    try:
        yield db
    finally:
        db.dispose()


@pytest.fixture
def settings(tmp_path: Path) -> ControlSettings:
    """Settings pointing the state directory into tmp_path."""
    return ControlSettings(state_dir=tmp_path / "state", poll_interval=0.2)


Auth = Callable[..., dict[str, str]]


@pytest.fixture
def auth(database: Database) -> Auth:
    """`auth(role, relay_id=None)`: the Authorization header of a token of that role."""
    made: dict[tuple[str, str | None], str] = {}

    def headers(role: Role = "admin", relay_id: str | None = None) -> dict[str, str]:
        if (role, relay_id) not in made:
            with database.session() as session:
                _, text = create_token(session, f"test-{role}", role, "tests", relay_id)
            made[role, relay_id] = text
        return {"Authorization": f"Bearer {made[role, relay_id]}"}

    return headers


@pytest.fixture
def client(database: Database, settings: ControlSettings, auth: Auth) -> Iterator[TestClient]:
    """The app over a fresh database (on both databases), speaking as an admin by default;
    pass ``headers=auth("viewer")`` to speak as another role."""
    with TestClient(create_app(settings, database), headers=auth("admin")) as test_client:
        yield test_client
