"""Audit events: one JSON line per event, never per packet (sans-IO: the caller passes the
time; writing them is the relay's job).

Every record starts with ``ts`` (RFC 3339, UTC, milliseconds), ``event`` and ``relay``,
then the event's own fields in declaration order. Byte and packet counters follow the flow
table: ``out`` is from the agent, ``in`` towards it. Addresses are text; ports are the
flow key's (the echo identifier for ICMP echo, 0 for protocols without ports).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from zgate_policy.flows import Flow, FlowKey

__all__ = [
    "AuditEvent",
    "AuditOverflowed",
    "AuthRefused",
    "FlowDecided",
    "FlowEnded",
    "PolicyLoaded",
    "PolicyRefused",
    "PolicySource",
    "SessionClosed",
    "SessionEvent",
    "SessionOpened",
    "address_text",
    "format_ts",
    "proto_name",
]

PolicySource = Literal["file", "reload", "sighup", "control"]

_PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}


def address_text(raw: bytes) -> str:
    """A raw 4- or 16-byte address as text (IPv6 compressed, RFC 5952). Anything else is
    shown as hex, so a record is always written."""
    if len(raw) in (4, 16):
        return str(ipaddress.ip_address(raw))
    return raw.hex()


def proto_name(proto: int) -> str:
    """``tcp``, ``udp``, ``icmp``, ``icmpv6``, ``sctp``, or the protocol number as text."""
    return _PROTO_NAMES.get(proto, str(proto))


def format_ts(ts: datetime) -> str:
    """RFC 3339 in UTC with milliseconds, e.g. ``2026-01-02T03:04:05.678Z``."""
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json_value(value: object) -> object:
    # Floats are durations: milliseconds are enough and keep lines short and stable.
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, tuple):
        return list(value)
    return value


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """Base of all audit events: when (an aware datetime), and which relay."""

    EVENT: ClassVar[str] = ""

    ts: datetime
    relay: str

    def __post_init__(self) -> None:
        if self.ts.tzinfo is None or self.ts.utcoffset() is None:
            raise ValueError("audit timestamps must be timezone-aware")

    @property
    def event(self) -> str:
        """The record's ``event`` field, e.g. ``session.open``."""
        return self.EVENT

    def to_dict(self) -> dict[str, Any]:
        """The record as a dict in its stable key order."""
        record: dict[str, Any] = {"ts": format_ts(self.ts), "event": self.event}
        for f in fields(self):
            if f.name != "ts":
                record[f.name] = _json_value(getattr(self, f.name))
        return record

    def to_json(self) -> str:
        """One compact JSON line (no newline), ASCII-only so any sink can take it."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=True)


@dataclass(frozen=True, slots=True)
class SessionEvent(AuditEvent):
    """What every session record says: who, which session, where from, which addresses.
    ``serial`` is the certificate serial in hex."""

    client: str
    kind: str
    serial: str
    session: str
    addresses: tuple[str, ...]
    peer: str
    mode: str


@dataclass(frozen=True, slots=True)
class SessionOpened(SessionEvent):
    """A CONNECT-IP session started."""

    EVENT: ClassVar[str] = "session.open"


@dataclass(frozen=True, slots=True)
class SessionClosed(SessionEvent):
    """A session ended, with why, how long it lasted and what it moved."""

    EVENT: ClassVar[str] = "session.close"

    reason: str
    duration_s: float
    bytes_out: int
    bytes_in: int
    packets_out: int
    packets_in: int


def _five_tuple(key: FlowKey) -> tuple[str, str, int, str, int]:
    return proto_name(key.proto), address_text(key.src), key.sport, address_text(key.dst), key.dport


@dataclass(frozen=True, slots=True)
class FlowDecided(AuditEvent):
    """A flow's first packet was decided: ``flow.allow`` or ``flow.deny``."""

    client: str
    session: str
    proto: str
    src: str
    sport: int
    dst: str
    dport: int
    fqdn: str | None
    verdict: Literal["allow", "deny"]
    rule: str
    policy_version: str
    connector: str | None = None  # the connector that carries it (flows into a private site)

    @property
    def event(self) -> str:
        """``flow.allow`` or ``flow.deny``."""
        return "flow.allow" if self.verdict == "allow" else "flow.deny"

    @classmethod
    def from_flow(cls, flow: Flow, *, ts: datetime, relay: str, client: str) -> FlowDecided:
        """The record for a flow the table has just added."""
        proto, src, sport, dst, dport = _five_tuple(flow.key)
        return cls(
            ts,
            relay,
            client,
            flow.session_id,
            proto,
            src,
            sport,
            dst,
            dport,
            flow.fqdn,
            flow.verdict,
            flow.rule_id,
            flow.policy_version,
            flow.connector,
        )


@dataclass(frozen=True, slots=True)
class FlowEnded(AuditEvent):
    """A flow left the table. ``duration_s`` runs from its first to its last packet;
    ``reason`` is the flow's ``end_reason``."""

    EVENT: ClassVar[str] = "flow.end"

    client: str
    session: str
    proto: str
    src: str
    sport: int
    dst: str
    dport: int
    verdict: Literal["allow", "deny"]
    rule: str
    bytes_out: int
    bytes_in: int
    packets_out: int
    packets_in: int
    duration_s: float
    reason: str
    connector: str | None = None

    @classmethod
    def from_flow(cls, flow: Flow, *, ts: datetime, relay: str, client: str) -> FlowEnded:
        """The record for a flow the table has removed (ValueError if it is still live)."""
        if flow.end_reason is None:
            raise ValueError("the flow has not ended")
        proto, src, sport, dst, dport = _five_tuple(flow.key)
        return cls(
            ts,
            relay,
            client,
            flow.session_id,
            proto,
            src,
            sport,
            dst,
            dport,
            flow.verdict,
            flow.rule_id,
            flow.bytes_out,
            flow.bytes_in,
            flow.packets_out,
            flow.packets_in,
            max(0.0, flow.last_seen - flow.created),
            flow.end_reason,
            flow.connector,
        )


@dataclass(frozen=True, slots=True)
class AuthRefused(AuditEvent):
    """A handshake or request was refused (``reason`` from the relay's fixed set)."""

    EVENT: ClassVar[str] = "auth.refused"

    peer: str
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class PolicyLoaded(AuditEvent):
    """A policy version took effect; ``rules`` is its rule count."""

    EVENT: ClassVar[str] = "policy.loaded"

    version: str
    source: PolicySource
    rules: int


@dataclass(frozen=True, slots=True)
class PolicyRefused(AuditEvent):
    """A policy was refused and the previous one kept. ``version`` and ``rules`` are null
    when the file did not get far enough to have them."""

    EVENT: ClassVar[str] = "policy.refused"

    version: str | None
    source: PolicySource
    rules: int | None
    error: str


@dataclass(frozen=True, slots=True)
class AuditOverflowed(AuditEvent):
    """The audit writer fell behind and ``dropped`` records could not be queued."""

    EVENT: ClassVar[str] = "audit.overflow"

    dropped: int
