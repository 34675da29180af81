"""A throwaway PostgreSQL server for tests: its own cluster in a temp dir, on a free loopback port.

    with PostgresServer() as server:
        url = server.create_database("t1")   # postgresql+psycopg://postgres@127.0.0.1:PORT/t1

The server trades durability for speed (no fsync, no synchronous commit, no full-page writes):
it lives for one test session and is removed with its directory. Under root the cluster runs as
an unprivileged user (`nobody` by default), because initdb and postgres refuse to run as root.
Nothing here imports pytest: callers decide whether a missing PostgreSQL skips or fails.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql

__all__ = ["PostgresError", "PostgresServer", "find_postgres_bin"]

# Debian installs each major version's server binaries here (only psql & co. go on PATH).
DEBIAN_ROOT = Path("/usr/lib/postgresql")
SUPERUSER = "postgres"
# Attempts at a free port: another process may take the one we picked before postgres binds it.
PORT_ATTEMPTS = 3
LOG_TAIL_LINES = 30


class PostgresError(Exception):
    """The test server could not be found, started, stopped or given a database."""


def _has_tools(bin_dir: Path) -> bool:
    return all(os.access(bin_dir / tool, os.X_OK) for tool in ("initdb", "pg_ctl"))


def _version_key(bin_dir: Path) -> tuple[int, ...]:
    # "15" or "9.6": compare numerically, so 10 sorts above 9.6.
    name = bin_dir.parent.name
    return tuple(int(part) for part in name.split(".")) if name.replace(".", "").isdigit() else ()


def find_postgres_bin() -> Path | None:
    """The directory holding initdb and pg_ctl: the newest `/usr/lib/postgresql/<ver>/bin`
    that has both, else the one `initdb` on PATH is in (when pg_ctl is beside it), else None."""
    candidates = sorted(DEBIAN_ROOT.glob("*/bin"), key=_version_key, reverse=True)
    for bin_dir in candidates:
        if _has_tools(bin_dir):
            return bin_dir
    initdb = shutil.which("initdb")
    if initdb is not None:
        # Follow a symlink (e.g. /usr/local/bin/initdb -> .../15/bin/initdb) to its real home,
        # whose pg_ctl and postgres belong to the same version.
        for bin_dir in (Path(initdb).parent, Path(initdb).resolve().parent):
            if _has_tools(bin_dir):
                return bin_dir
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _traversable(path: Path, uid: int, gids: set[int]) -> bool:
    """Whether a process with `uid` and `gids` can reach entries below `path` (x on every
    ancestor). Root's temp dirs may sit under a 0700 parent (pytest's /tmp/pytest-of-root)."""
    for directory in (path, *path.parents):
        info = directory.stat()
        if info.st_uid == uid:
            bit = stat.S_IXUSR
        elif info.st_gid in gids:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            return False
    return True


class PostgresServer:
    """A PostgreSQL cluster started for tests (a context manager: start on enter, stop on exit).

    `bin_dir`: where initdb and pg_ctl are (default: `find_postgres_bin()`).
    `user`: who runs the server when this process is root (default `nobody`); ignored otherwise.
    `base_dir`: where the temp dir goes (default: the system temp dir); under root it must be
    traversable by `user`. `port`: a fixed port (default: a free one, picked again if another
    process takes it first). `start_timeout`: seconds pg_ctl waits for the server to accept
    connections.
    """

    def __init__(
        self,
        bin_dir: Path | None = None,
        *,
        user: str = "nobody",
        base_dir: Path | None = None,
        port: int | None = None,
        start_timeout: int = 30,
    ) -> None:
        self._bin_dir = bin_dir
        self._user = user
        self._base_dir = base_dir
        self._start_timeout = start_timeout
        self._dir: Path | None = None
        self._fixed_port = port
        self._port: int | None = None
        self._started = False

    @property
    def directory(self) -> Path:
        """The temp dir (data directory, log, socket); gone after `stop()`."""
        if self._dir is None:
            raise PostgresError("the PostgreSQL test server is not started")
        return self._dir

    @property
    def port(self) -> int:
        """The TCP port on 127.0.0.1 the server listens on."""
        if self._port is None or not self._started:
            raise PostgresError("the PostgreSQL test server is not started")
        return self._port

    @property
    def log_path(self) -> Path:
        """The server's log file."""
        return self.directory / "server.log"

    def url(self, database: str = "zgate") -> str:
        """A SQLAlchemy URL (psycopg 3 driver) for `database` as the trusted superuser; the
        database must exist (`create_database`)."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def conninfo(self, database: str = "postgres") -> str:
        """A libpq connection string for `database`, for `psycopg.connect`."""
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={database}"

    def create_database(self, name: str) -> str:
        """Creates the empty database `name` and returns its `url()`."""
        try:
            with psycopg.connect(self.conninfo(), autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.Error as exc:
            raise PostgresError(f"could not create database {name!r}: {exc}") from exc
        return self.url(name)

    def start(self) -> PostgresServer:
        """initdb a fresh cluster in a new temp dir and start it on a free port; returns self.
        On failure everything made so far is removed and PostgresError says what failed."""
        if self._dir is not None:
            raise PostgresError("the PostgreSQL test server is already started")
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stops the server (immediate shutdown: nothing needs to survive) and removes its temp
        dir. Safe to call twice, and after a start that failed halfway."""
        directory, self._dir = self._dir, None
        started, self._started = self._started, False
        if directory is None:
            return
        pid_file = directory / "data" / "postmaster.pid"
        try:
            if pid_file.exists() or started:
                result = self._run_tool(
                    "pg_ctl", "stop", "-D", str(directory / "data"), "-m", "immediate", "-w",
                    check=False, cwd=directory,
                )  # fmt: skip
                # Non-zero with no pid file left means no server was running: nothing to do.
                if result.returncode != 0 and pid_file.exists():
                    raise PostgresError(
                        f"pg_ctl stop failed (exit {result.returncode}) for the server on port "
                        f"{self._port}: {(result.stdout + result.stderr).strip()}"
                    )
        finally:
            # Also under a server that would not stop: postgres shuts itself down once it
            # notices its data directory (its lock file) gone.
            shutil.rmtree(directory, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals

    def _start(self) -> None:
        bin_dir = self._bin_dir or find_postgres_bin()
        if bin_dir is None:
            raise PostgresError(
                "PostgreSQL server binaries (initdb, pg_ctl) not found in "
                f"{DEBIAN_ROOT}/*/bin or on PATH; install Debian's `postgresql` (scripts/bootstrap)"
            )
        self._bin_dir = bin_dir
        owner = self._owner()
        base = self._base_dir or Path(tempfile.gettempdir())
        if owner is not None and not _traversable(base.resolve(), owner[0], {owner[1]}):
            raise PostgresError(
                f"{base} is not traversable by user {self._user!r}, who runs the test server "
                "under root; pass base_dir= (or set TMPDIR to) a directory like /tmp"
            )
        directory = Path(tempfile.mkdtemp(prefix="zgate-pg-", dir=base))
        self._dir = directory
        if owner is not None:
            os.chown(directory, *owner)
        self._run_tool(
            "initdb",
            "-D",
            str(directory / "data"),
            "-A",
            "trust",
            "-U",
            SUPERUSER,
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            cwd=directory,
        )
        attempts = 1 if self._fixed_port is not None else PORT_ATTEMPTS
        for attempt in range(attempts):
            self._port = self._fixed_port or _free_port()
            if self._pg_ctl_start(directory):
                self._started = True
                return
            if "could not bind" not in self._log_tail() or attempt == attempts - 1:
                raise PostgresError(
                    f"pg_ctl start failed (port {self._port}); server log tail:\n"
                    + self._log_tail()
                )

    def _pg_ctl_start(self, directory: Path) -> bool:
        options = (
            f"-F -k {directory} -h 127.0.0.1 -p {self._port} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
        )
        result = self._run_tool(
            "pg_ctl",
            "start",
            "-D",
            str(directory / "data"),
            "-l",
            str(directory / "server.log"),
            "-w",
            "-t",
            str(self._start_timeout),
            "-o",
            options,
            check=False,
            cwd=directory,
        )
        return result.returncode == 0

    def _log_tail(self) -> str:
        try:
            lines = (self.directory / "server.log").read_text(errors="replace").splitlines()
        except OSError as exc:
            return f"(no server log: {exc})"
        return "\n".join(lines[-LOG_TAIL_LINES:])

    def _owner(self) -> tuple[int, int] | None:
        """(uid, gid) to run the server as: `user` under root, else None (as ourselves)."""
        if os.geteuid() != 0:
            return None
        try:
            entry = pwd.getpwnam(self._user)
        except KeyError:
            raise PostgresError(
                f"no user {self._user!r} to run the PostgreSQL test server as (root may not)"
            ) from None
        return entry.pw_uid, entry.pw_gid

    def _run_tool(
        self, tool: str, *args: str, check: bool = True, cwd: Path
    ) -> subprocess.CompletedProcess[str]:
        assert self._bin_dir is not None
        command: Sequence[str] = [str(self._bin_dir / tool), *args]
        owner = self._owner()
        # Our PG* variables (PGDATA, PGPORT, ...) must not steer the test cluster; TZ=UTC spares
        # initdb its time zone probe and makes timestamps in the log plain.
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env["TZ"] = "UTC"
        try:
            result = subprocess.run(
                command,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=self._start_timeout + 30,
                user=owner[0] if owner else None,
                group=owner[1] if owner else None,
                extra_groups=[] if owner else None,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PostgresError(f"{tool} could not run: {exc}") from exc
        if check and result.returncode != 0:
            raise PostgresError(
                f"{tool} failed (exit {result.returncode}): {' '.join(command)}\n"
                + (result.stdout + result.stderr).strip()
            )
        return result
