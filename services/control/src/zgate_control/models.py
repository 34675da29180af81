"""The control plane's tables (SQLAlchemy 2, typed). Column names are the API's contract with
the migrations in ``migrations/versions``: change both together."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "AdminLogEntry",
    "ApiToken",
    "AuditRecord",
    "Authority",
    "Base",
    "Certificate",
    "ChangeHead",
    "ChangeLogEntry",
    "Client",
    "Connector",
    "ConsoleSession",
    "PolicyPublication",
    "PolicyVersion",
    "Relay",
    "RelaySample",
    "RelaySession",
    "UTCDateTime",
    "as_utc",
    "utc_now",
]


def utc_now() -> datetime:
    """The current time, aware, in UTC (microseconds kept: cursors sort by it)."""
    return datetime.now(UTC)


def as_utc(when: datetime) -> datetime:
    """`when` in UTC; a naive time (e.g. a query parameter without a zone) is taken as UTC."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on both databases. SQLite keeps no zone: values are stored as
    UTC and given back aware, so comparisons never mix naive and aware times."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


#: JSON on SQLite, JSONB on PostgreSQL (indexable, compact).
JSONType = JSON().with_variant(JSONB(), "postgresql")

#: Constraint names fixed by convention, so migrations can name what they drop.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Base of every table."""

    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType, list[Any]: JSONType}


class ApiToken(Base):
    """An admin API token. Only the SHA-256 of its secret is kept; the token is shown once."""

    __tablename__ = "api_tokens"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    secret_hash: Mapped[str] = mapped_column(String(64))
    relay_id: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(200))
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class Authority(Base):
    """The CA the control plane issues certificates with (one row, id 1)."""

    __tablename__ = "authority"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trust_domain: Mapped[str] = mapped_column(String(253))
    ca_cert_pem: Mapped[str] = mapped_column(Text)
    ca_key_pem: Mapped[str] = mapped_column(Text)
    crl_number: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]


class Certificate(Base):
    """Every certificate the CA issued, revoked or not (the CRL is built from this)."""

    __tablename__ = "certificates"
    serial: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    ident: Mapped[str] = mapped_column(String(200), index=True)
    groups: Mapped[list[Any]]
    issued_at: Mapped[datetime]
    not_after: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    revoke_reason: Mapped[str | None] = mapped_column(String(64))


class Client(Base):
    """A device identity (``client/<id>``) with its groups and state."""

    __tablename__ = "clients"
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    groups: Mapped[list[Any]]
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(200))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    revoked_at: Mapped[datetime | None]
    serial: Mapped[str | None] = mapped_column(String(64))
    last_seen_at: Mapped[datetime | None]
    last_relay: Mapped[str | None] = mapped_column(String(200))
    row_version: Mapped[int] = mapped_column(Integer, default=1)


class Connector(Base):
    """An on-prem connector (``connector/<id>``) and the prefixes it may serve."""

    __tablename__ = "connectors"
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    prefixes: Mapped[list[Any]]
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(200))
    serial: Mapped[str | None] = mapped_column(String(64))
    revoked_at: Mapped[datetime | None]
    last_seen_at: Mapped[datetime | None]
    last_relay: Mapped[str | None] = mapped_column(String(200))
    row_version: Mapped[int] = mapped_column(Integer, default=1)


class PolicyVersion(Base):
    """One immutable policy version, as submitted."""

    __tablename__ = "policy_versions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    yaml: Mapped[str] = mapped_column(Text)
    digest: Mapped[str] = mapped_column(String(64), index=True)
    author: Mapped[str] = mapped_column(String(200))
    comment: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]
    rules: Mapped[int] = mapped_column(Integer)


class PolicyPublication(Base):
    """A publish or rollback; the newest row names the version in force."""

    __tablename__ = "policy_publications"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("policy_versions.id"))
    kind: Mapped[str] = mapped_column(String(16))
    published_at: Mapped[datetime]
    published_by: Mapped[str] = mapped_column(String(200))


class ChangeHead(Base):
    """The change log's counter (one row). Taking the next number locks this row until the
    transaction commits, so rows become visible in sequence order: a relay that has read
    seq N can never later find a smaller number committed behind it."""

    __tablename__ = "change_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)


class ChangeLogEntry(Base):
    """One change relays must apply, in ``seq`` order (append-only)."""

    __tablename__ = "change_log"
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]


class Relay(Base):
    """A relay that registered itself (first heartbeat) and what it last reported."""

    __tablename__ = "relays"
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    registered_at: Mapped[datetime]
    last_heartbeat_at: Mapped[datetime | None]
    applied_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    policy_version: Mapped[str | None] = mapped_column(String(64))
    software: Mapped[str | None] = mapped_column(String(64))
    address: Mapped[str | None] = mapped_column(String(200))
    sessions: Mapped[int] = mapped_column(Integer, default=0)
    following: Mapped[bool] = mapped_column(Boolean, default=True)
    audit_chain: Mapped[str | None] = mapped_column(String(64))
    audit_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    audit_hash: Mapped[str | None] = mapped_column(String(64))


class RelaySession(Base):
    """A live session as its relay last reported it (replaced by every heartbeat)."""

    __tablename__ = "relay_sessions"
    relay_id: Mapped[str] = mapped_column(
        ForeignKey("relays.id", ondelete="CASCADE"), primary_key=True
    )
    session_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    client: Mapped[str] = mapped_column(String(200), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    addresses: Mapped[list[Any]]
    mode: Mapped[str] = mapped_column(String(16))
    since: Mapped[datetime]
    bytes_in: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_out: Mapped[int] = mapped_column(BigInteger, default=0)


class AuditRecord(Base):
    """One audit record shipped by a relay, with its place in that relay's hash chain."""

    __tablename__ = "audit_records"
    __table_args__ = (
        Index("ix_audit_records_chain", "relay_id", "chain", "seq"),
        Index("ix_audit_records_client_ts", "client", "ts"),
        Index("ix_audit_records_dst_ts", "dst", "ts"),
        Index("ix_audit_records_verdict_ts", "verdict", "ts"),
        Index("ix_audit_records_rule_ts", "rule", "ts"),
        Index("ix_audit_records_event_ts", "event", "ts"),
        Index("ix_audit_records_fqdn_ts", "fqdn", "ts"),
        Index("ix_audit_records_session_ts", "session", "ts"),
    )
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    relay_id: Mapped[str] = mapped_column(String(200))
    chain: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger)
    ts: Mapped[datetime] = mapped_column(index=True)
    event: Mapped[str] = mapped_column(String(32))
    client: Mapped[str | None] = mapped_column(String(200))
    session: Mapped[str | None] = mapped_column(String(64))
    proto: Mapped[str | None] = mapped_column(String(16))
    src: Mapped[str | None] = mapped_column(String(64))
    sport: Mapped[int | None] = mapped_column(Integer)
    dst: Mapped[str | None] = mapped_column(String(64))
    dport: Mapped[int | None] = mapped_column(Integer)
    fqdn: Mapped[str | None] = mapped_column(String(253))
    verdict: Mapped[str | None] = mapped_column(String(8))
    rule: Mapped[str | None] = mapped_column(String(200))
    policy_version: Mapped[str | None] = mapped_column(String(64))
    connector: Mapped[str | None] = mapped_column(String(200))
    prev: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    chain_ok: Mapped[bool] = mapped_column(Boolean, default=True)
    record: Mapped[dict[str, Any]]


class AdminLogEntry(Base):
    """Who changed what, when: one row per mutating API call."""

    __tablename__ = "admin_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(String(200))
    token_id: Mapped[str | None] = mapped_column(String(32))
    role: Mapped[str] = mapped_column(String(16))
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(String(500))
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str | None] = mapped_column(String(500))
    status: Mapped[int] = mapped_column(Integer)
    detail: Mapped[dict[str, Any]]


class ConsoleSession(Base):
    """A signed-in console browser: the cookie holds a random id, the table its SHA-256, so a
    copy of the database signs nobody in. ``csrf`` goes into every form the console serves."""

    __tablename__ = "console_sessions"
    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_id: Mapped[str] = mapped_column(ForeignKey("api_tokens.id", ondelete="CASCADE"))
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)


class RelaySample(Base):
    """What a relay carried, as of one heartbeat (its live sessions' byte totals): the console
    draws throughput from the differences. Kept for an hour."""

    __tablename__ = "relay_samples"
    __table_args__ = (Index("ix_relay_samples_relay_at", "relay_id", "at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    relay_id: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(index=True)
    sessions: Mapped[int] = mapped_column(Integer)
    bytes_in: Mapped[int] = mapped_column(BigInteger)
    bytes_out: Mapped[int] = mapped_column(BigInteger)
