"""Migrations: up to head and back down to nothing on both databases, and the models match
the schema the migrations build (so a model change without a migration fails here)."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select

from zgate_control.db import Database
from zgate_control.models import Base, ChangeHead


def test_upgrade_downgrade_upgrade(database_url: str) -> None:
    db = Database(database_url)
    try:
        assert db.current_revision() is None
        db.upgrade()
        assert db.current_revision() == db.head_revision()
        tables = set(inspect(db.engine).get_table_names())
        assert set(Base.metadata.tables) <= tables
        with db.reader() as session:
            assert session.scalars(select(ChangeHead.seq)).one() == 0
        db.upgrade()  # idempotent
        db.downgrade("base")
        assert db.current_revision() is None
        assert not set(Base.metadata.tables) & set(inspect(db.engine).get_table_names())
        db.upgrade()
        assert db.current_revision() == db.head_revision()
    finally:
        db.dispose()


def test_models_match_the_migrations(database_url: str) -> None:
    db = Database(database_url)
    try:
        db.upgrade()
        with db.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            differences = compare_metadata(context, Base.metadata)
        assert differences == [], f"models and migrations differ: {differences}"
    finally:
        db.dispose()
