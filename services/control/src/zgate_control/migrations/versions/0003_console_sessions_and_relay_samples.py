"""Console sessions (signed-in browsers) and relay samples (throughput over the last hour).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05 00:26:11.536851
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "relay_samples",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("relay_id", sa.String(length=200), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sessions", sa.Integer(), nullable=False),
        sa.Column("bytes_in", sa.BigInteger(), nullable=False),
        sa.Column("bytes_out", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_relay_samples")),
    )
    with op.batch_alter_table("relay_samples", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_relay_samples_at"), ["at"], unique=False)
        batch_op.create_index("ix_relay_samples_relay_at", ["relay_id", "at"], unique=False)

    op.create_table(
        "console_sessions",
        sa.Column("id_hash", sa.String(length=64), nullable=False),
        sa.Column("token_id", sa.String(length=32), nullable=False),
        sa.Column("csrf", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["token_id"],
            ["api_tokens.id"],
            name=op.f("fk_console_sessions_token_id_api_tokens"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id_hash", name=op.f("pk_console_sessions")),
    )
    with op.batch_alter_table("console_sessions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_console_sessions_expires_at"), ["expires_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("console_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_console_sessions_expires_at"))

    op.drop_table("console_sessions")
    with op.batch_alter_table("relay_samples", schema=None) as batch_op:
        batch_op.drop_index("ix_relay_samples_relay_at")
        batch_op.drop_index(batch_op.f("ix_relay_samples_at"))

    op.drop_table("relay_samples")
