"""Initial schema: tokens, CA, certificates, clients, connectors, policies, change log,
relays and their sessions, audit records, admin log.

Revision ID: 0001
Revises:
Create Date: 2026-12-04 23:10:59.446727
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "admin_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("token_id", sa.String(length=32), nullable=True),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("path", sa.String(length=500), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=500), nullable=True),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column(
            "detail",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_log")),
    )
    with op.batch_alter_table("admin_log", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_admin_log_action"), ["action"], unique=False)
        batch_op.create_index(batch_op.f("ix_admin_log_at"), ["at"], unique=False)

    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("relay_id", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
    )
    op.create_table(
        "audit_records",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("relay_id", sa.String(length=200), nullable=False),
        sa.Column("chain", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("client", sa.String(length=200), nullable=True),
        sa.Column("session", sa.String(length=64), nullable=True),
        sa.Column("proto", sa.String(length=16), nullable=True),
        sa.Column("src", sa.String(length=64), nullable=True),
        sa.Column("sport", sa.Integer(), nullable=True),
        sa.Column("dst", sa.String(length=64), nullable=True),
        sa.Column("dport", sa.Integer(), nullable=True),
        sa.Column("fqdn", sa.String(length=253), nullable=True),
        sa.Column("verdict", sa.String(length=8), nullable=True),
        sa.Column("rule", sa.String(length=200), nullable=True),
        sa.Column("policy_version", sa.String(length=64), nullable=True),
        sa.Column("connector", sa.String(length=200), nullable=True),
        sa.Column("prev", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("chain_ok", sa.Boolean(), nullable=False),
        sa.Column(
            "record",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_records")),
    )
    with op.batch_alter_table("audit_records", schema=None) as batch_op:
        batch_op.create_index("ix_audit_records_chain", ["relay_id", "chain", "seq"], unique=False)
        batch_op.create_index("ix_audit_records_client_ts", ["client", "ts"], unique=False)
        batch_op.create_index("ix_audit_records_dst_ts", ["dst", "ts"], unique=False)
        batch_op.create_index("ix_audit_records_event_ts", ["event", "ts"], unique=False)
        batch_op.create_index("ix_audit_records_rule_ts", ["rule", "ts"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_records_ts"), ["ts"], unique=False)
        batch_op.create_index("ix_audit_records_verdict_ts", ["verdict", "ts"], unique=False)

    op.create_table(
        "authority",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("trust_domain", sa.String(length=253), nullable=False),
        sa.Column("ca_cert_pem", sa.Text(), nullable=False),
        sa.Column("ca_key_pem", sa.Text(), nullable=False),
        sa.Column("crl_number", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_authority")),
    )
    op.create_table(
        "certificates",
        sa.Column("serial", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("ident", sa.String(length=200), nullable=False),
        sa.Column(
            "groups",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoke_reason", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("serial", name=op.f("pk_certificates")),
    )
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_certificates_ident"), ["ident"], unique=False)

    op.create_table(
        "change_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_change_head")),
    )
    # The change log's counter starts at 0: the first change is seq 1.
    op.bulk_insert(
        sa.table("change_head", sa.column("id"), sa.column("seq")), [{"id": 1, "seq": 0}]
    )
    op.create_table(
        "change_log",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column(
            "payload",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_change_log")),
    )
    op.create_table(
        "clients",
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column(
            "groups",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("serial", sa.String(length=64), nullable=True),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_relay", sa.String(length=200), nullable=True),
        sa.Column("row_version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_clients")),
    )
    op.create_table(
        "connectors",
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column(
            "prefixes",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("serial", sa.String(length=64), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_relay", sa.String(length=200), nullable=True),
        sa.Column("row_version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_connectors")),
    )
    op.create_table(
        "policy_versions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("yaml", sa.Text(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("author", sa.String(length=200), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rules", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policy_versions")),
    )
    with op.batch_alter_table("policy_versions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_policy_versions_digest"), ["digest"], unique=False)

    op.create_table(
        "relays",
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("applied_seq", sa.BigInteger(), nullable=False),
        sa.Column("policy_version", sa.String(length=64), nullable=True),
        sa.Column("software", sa.String(length=64), nullable=True),
        sa.Column("address", sa.String(length=200), nullable=True),
        sa.Column("sessions", sa.Integer(), nullable=False),
        sa.Column("following", sa.Boolean(), nullable=False),
        sa.Column("audit_chain", sa.String(length=64), nullable=True),
        sa.Column("audit_seq", sa.BigInteger(), nullable=False),
        sa.Column("audit_hash", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_relays")),
    )
    op.create_table(
        "policy_publications",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_by", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["policy_versions.id"],
            name=op.f("fk_policy_publications_version_id_policy_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policy_publications")),
    )
    op.create_table(
        "relay_sessions",
        sa.Column("relay_id", sa.String(length=200), nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("client", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column(
            "addresses",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("bytes_in", sa.BigInteger(), nullable=False),
        sa.Column("bytes_out", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["relay_id"],
            ["relays.id"],
            name=op.f("fk_relay_sessions_relay_id_relays"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("relay_id", "session_id", name=op.f("pk_relay_sessions")),
    )
    with op.batch_alter_table("relay_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_relay_sessions_client"), ["client"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("relay_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_relay_sessions_client"))

    op.drop_table("relay_sessions")
    op.drop_table("policy_publications")
    op.drop_table("relays")
    with op.batch_alter_table("policy_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_policy_versions_digest"))

    op.drop_table("policy_versions")
    op.drop_table("connectors")
    op.drop_table("clients")
    op.drop_table("change_log")
    op.drop_table("change_head")
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_certificates_ident"))

    op.drop_table("certificates")
    op.drop_table("authority")
    with op.batch_alter_table("audit_records", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_records_verdict_ts")
        batch_op.drop_index(batch_op.f("ix_audit_records_ts"))
        batch_op.drop_index("ix_audit_records_rule_ts")
        batch_op.drop_index("ix_audit_records_event_ts")
        batch_op.drop_index("ix_audit_records_dst_ts")
        batch_op.drop_index("ix_audit_records_client_ts")
        batch_op.drop_index("ix_audit_records_chain")

    op.drop_table("audit_records")
    op.drop_table("api_tokens")
    with op.batch_alter_table("admin_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_admin_log_at"))
        batch_op.drop_index(batch_op.f("ix_admin_log_action"))

    op.drop_table("admin_log")
