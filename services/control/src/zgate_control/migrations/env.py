"""Alembic's entry: runs migrations on the connection `Database` hands over (no alembic.ini)."""

from __future__ import annotations

from alembic import context

from zgate_control.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite alters tables by copying them; batch mode does that for us.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
