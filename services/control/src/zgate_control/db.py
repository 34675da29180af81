"""The database: engine, sessions and migrations, the same on SQLite and PostgreSQL.

Writes on SQLite take the write lock at BEGIN (``BEGIN IMMEDIATE``): a transaction that first
reads and later writes could otherwise fail at once with "database is locked" when another
writer committed in between, instead of waiting for its turn. Read-only sessions (`reader`)
begin deferred and never block writers in WAL mode.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any, Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["Database", "DatabaseError"]

log = logging.getLogger("zgate.control.db")

#: PostgreSQL advisory lock key held while migrating, so replicas starting together take turns.
_MIGRATION_LOCK: Final = 0x7A67617465


class DatabaseError(Exception):
    """The database cannot be used; the message says which and what to do."""


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's own is deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        reading = connection.get_execution_options().get("zgate_read", False)
        connection.exec_driver_sql("BEGIN" if reading else "BEGIN IMMEDIATE")


class Database:
    """One database: ``session()`` for work that writes, ``reader()`` for reads only."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise DatabaseError(
                f"cannot parse the database URL {url!r}; expected e.g. "
                "postgresql+psycopg://user:password@host:5432/zgate or sqlite:///path/control.db"
            ) from None
        self.url = parsed
        self.dialect = parsed.get_backend_name()
        if self.dialect == "postgres":  # Heroku-style URLs; SQLAlchemy knows no such name
            raise DatabaseError(
                "the database URL starts with postgres://: write postgresql+psycopg:// instead"
            )
        if self.dialect not in ("sqlite", "postgresql"):
            raise DatabaseError(
                f"unsupported database {self.dialect!r}: use sqlite or postgresql+psycopg"
            )
        if self.dialect == "sqlite" and parsed.database not in (None, "", ":memory:"):
            folder = Path(str(parsed.database)).parent
            if not folder.is_dir():
                raise DatabaseError(f"the SQLite database's folder {folder} does not exist")
        kwargs: dict[str, Any] = {"echo": echo}
        if self.dialect == "postgresql":
            kwargs.update(pool_pre_ping=True, pool_size=10, max_overflow=20)
        self.engine = create_engine(parsed, **kwargs)
        if self.dialect == "sqlite":
            _sqlite_setup(self.engine)
        self._writer = sessionmaker(self.engine, expire_on_commit=False)
        self._reader = sessionmaker(
            self.engine.execution_options(zgate_read=True), expire_on_commit=False
        )

    @property
    def display_url(self) -> str:
        """The URL with any password hidden (for logs)."""
        return self.url.render_as_string(hide_password=True)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction, committed on success, rolled back on error."""
        with self._writer.begin() as session:
            yield session

    @contextmanager
    def reader(self) -> Iterator[Session]:
        """A session for reads only (never blocks writers on SQLite)."""
        with self._reader() as session:
            yield session

    def check(self) -> None:
        """Raise DatabaseError if the database cannot be reached."""
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except OperationalError as exc:
            raise DatabaseError(
                f"cannot reach the database {self.display_url}: {exc.orig}"
            ) from None

    # -- migrations -------------------------------------------------------------------

    def _alembic(self, connection: Connection) -> Config:
        config = Config()
        config.set_main_option(
            "script_location", str(resources.files("zgate_control") / "migrations")
        )
        config.attributes["connection"] = connection
        return config

    @contextmanager
    def _migration_connection(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as connection:
                if self.dialect == "postgresql":
                    connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK})
                    connection.commit()
                try:
                    yield connection
                finally:
                    if self.dialect == "postgresql":
                        connection.rollback()
                        connection.execute(
                            text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK}
                        )
                        connection.commit()
        except OperationalError as exc:
            raise DatabaseError(
                f"cannot reach the database {self.display_url}: {exc.orig}"
            ) from None

    def upgrade(self, revision: str = "head") -> None:
        """Apply migrations up to `revision` (idempotent; replicas take turns)."""
        with self._migration_connection() as connection:
            command.upgrade(self._alembic(connection), revision)
            connection.commit()

    def downgrade(self, revision: str) -> None:
        """Undo migrations down to `revision` ("base": an empty database)."""
        with self._migration_connection() as connection:
            command.downgrade(self._alembic(connection), revision)
            connection.commit()

    def current_revision(self) -> str | None:
        """The revision the database is at (None: never migrated)."""
        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def head_revision(self) -> str | None:
        """The newest revision this software knows."""
        with self.engine.connect() as connection:
            return ScriptDirectory.from_config(self._alembic(connection)).get_current_head()

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
