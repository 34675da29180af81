"""The PostgreSQL test server (zgate_testkit.postgres) starts a real cluster on a free loopback
port, gives each caller a fresh database, and leaves nothing behind when stopped."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import psycopg
import pytest

from zgate_testkit.postgres import PostgresError, PostgresServer, find_postgres_bin


@pytest.fixture
def bin_dir(skip_or_fail: Callable[[str], NoReturn]) -> Path:
    """The server binaries; missing ones skip here and fail under CI (ZGATE_REQUIRE_E2E=1)."""
    found = find_postgres_bin()
    if found is None:
        skip_or_fail("needs PostgreSQL server binaries (initdb, pg_ctl): Debian's `postgresql`")
    return found


@pytest.fixture
def server(bin_dir: Path) -> Iterator[PostgresServer]:
    with PostgresServer(bin_dir) as started:
        yield started


def round_trip(conninfo: str, value: str) -> str:
    with psycopg.connect(conninfo) as conn:
        conn.execute("CREATE TABLE t (id serial PRIMARY KEY, v text NOT NULL)")
        conn.execute("INSERT INTO t (v) VALUES (%s)", (value,))
        row = conn.execute("SELECT v FROM t").fetchone()
    assert row is not None
    result: str = row[0]
    return result


def test_find_postgres_bin_has_initdb_and_pg_ctl(bin_dir: Path) -> None:
    assert os.access(bin_dir / "initdb", os.X_OK)
    assert os.access(bin_dir / "pg_ctl", os.X_OK)


def test_databases_are_separate_and_hold_data(server: PostgresServer) -> None:
    url_a = server.create_database("alpha")
    url_b = server.create_database("beta")
    assert url_a == f"postgresql+psycopg://postgres@127.0.0.1:{server.port}/alpha"
    assert url_b.endswith("/beta")
    assert server.url() == f"postgresql+psycopg://postgres@127.0.0.1:{server.port}/zgate"

    assert round_trip(server.conninfo("alpha"), "héllo") == "héllo"
    # The same table name in the other database: each database starts empty.
    assert round_trip(server.conninfo("beta"), "other") == "other"
    with psycopg.connect(server.conninfo("alpha")) as conn:
        assert conn.execute("SHOW server_encoding").fetchone() == ("UTF8",)
        assert conn.execute("SHOW fsync").fetchone() == ("off",)
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)


def test_creating_a_database_twice_says_so(server: PostgresServer) -> None:
    server.create_database("twice")
    with pytest.raises(PostgresError, match="could not create database 'twice'"):
        server.create_database("twice")


def test_stop_removes_the_directory_and_the_server(bin_dir: Path) -> None:
    server = PostgresServer(bin_dir).start()
    directory, conninfo = server.directory, server.conninfo()
    assert (directory / "data" / "PG_VERSION").is_file()
    server.stop()
    assert not directory.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(conninfo, connect_timeout=5)
    with pytest.raises(PostgresError, match="not started"):
        server.url()
    server.stop()  # a second stop is harmless


def test_two_servers_run_side_by_side(bin_dir: Path) -> None:
    with PostgresServer(bin_dir) as first, PostgresServer(bin_dir) as second:
        assert first.port != second.port
        assert first.directory != second.directory
        for server in (first, second):
            with psycopg.connect(server.conninfo()) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)


def test_runs_unprivileged_under_root(server: PostgresServer) -> None:
    # initdb refuses root: under root the cluster belongs to `nobody`, otherwise to us.
    expected = pwd.getpwnam("nobody").pw_uid if os.geteuid() == 0 else os.geteuid()
    assert (server.directory / "data").stat().st_uid == expected
    with psycopg.connect(server.conninfo()) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)


@pytest.fixture
def open_base_dir() -> Iterator[Path]:
    """A base dir anyone can traverse (pytest's tmp_path under root is not: a 0700 parent)."""
    base = Path(tempfile.mkdtemp(prefix="zgate-pg-test-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base)


def test_a_failed_start_cleans_up_and_shows_the_log(bin_dir: Path, open_base_dir: Path) -> None:
    # A port already taken: initdb succeeds, then postgres cannot bind, and says so in its log.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = PostgresServer(bin_dir, base_dir=open_base_dir, port=port)
        with pytest.raises(PostgresError, match=f"pg_ctl start failed \\(port {port}\\)") as err:
            server.start()
    assert "could not bind" in str(err.value)
    assert list(open_base_dir.iterdir()) == []


def test_a_base_dir_the_server_user_cannot_reach_is_refused(bin_dir: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root hands the server to another user")
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    closed.chmod(stat.S_IRWXU)
    with pytest.raises(PostgresError, match="not traversable by user 'nobody'"):
        PostgresServer(bin_dir, base_dir=closed).start()
    assert list(closed.iterdir()) == []


def test_missing_binaries_are_named(tmp_path: Path) -> None:
    with pytest.raises(PostgresError, match="initdb could not run"):
        PostgresServer(tmp_path).start()
