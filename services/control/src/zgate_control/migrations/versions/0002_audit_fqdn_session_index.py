"""Audit records: indexes (fqdn, ts) and (session, ts), so the audit list filtered by a
destination name or by a session seeks instead of scanning newest-first.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 23:30:00
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_records", schema=None) as batch_op:
        batch_op.create_index("ix_audit_records_fqdn_ts", ["fqdn", "ts"], unique=False)
        batch_op.create_index("ix_audit_records_session_ts", ["session", "ts"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("audit_records", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_records_session_ts")
        batch_op.drop_index("ix_audit_records_fqdn_ts")
