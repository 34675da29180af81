"""Audit events: field order, timestamps, compact JSON, and records built from flows."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError, dataclass
from datetime import UTC, datetime, timedelta, timezone
from ipaddress import IPv4Address, IPv6Address
from typing import Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zgate_policy.audit import (
    AuditOverflowed,
    AuthRefused,
    FlowDecided,
    FlowEnded,
    PolicyLoaded,
    PolicyRefused,
    SessionClosed,
    SessionOpened,
    address_text,
    format_ts,
    proto_name,
)
from zgate_policy.flows import FlowKey, FlowTable

TS = datetime(2026, 3, 4, 5, 6, 7, 891234, tzinfo=UTC)
AGENT = IPv4Address("100.64.0.2").packed
WORLD = IPv4Address("203.0.113.9").packed


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Literal["allow", "deny"]
    rule_id: str


def test_session_open_record_field_by_field() -> None:
    event = SessionOpened(
        TS,
        "relay-1",
        client="alice",
        kind="agent",
        serial="1f2e",
        session="abc123",
        addresses=("100.64.0.2", "fd00::2"),
        peer="198.51.100.4:51234",
        mode="datagram",
    )
    line = event.to_json()
    assert "\n" not in line and ", " not in line and '": ' not in line
    record = json.loads(line)
    assert list(record) == [
        "ts",
        "event",
        "relay",
        "client",
        "kind",
        "serial",
        "session",
        "addresses",
        "peer",
        "mode",
    ]
    assert record == {
        "ts": "2026-03-04T05:06:07.891Z",
        "event": "session.open",
        "relay": "relay-1",
        "client": "alice",
        "kind": "agent",
        "serial": "1f2e",
        "session": "abc123",
        "addresses": ["100.64.0.2", "fd00::2"],
        "peer": "198.51.100.4:51234",
        "mode": "datagram",
    }
    with pytest.raises(FrozenInstanceError):
        event.client = "mallory"  # type: ignore[misc]


def test_session_close_record() -> None:
    record = json.loads(
        SessionClosed(
            TS, "r", "alice", "agent", "01", "s", ("100.64.0.2",), "p", "datagram",
            reason="peer_closed", duration_s=12.3456789, bytes_out=10, bytes_in=20,
            packets_out=1, packets_in=2,
        ).to_json()
    )  # fmt: skip
    assert record["event"] == "session.close"
    assert record["reason"] == "peer_closed"
    assert record["duration_s"] == 12.346
    assert (record["bytes_out"], record["bytes_in"]) == (10, 20)
    assert (record["packets_out"], record["packets_in"]) == (1, 2)
    assert list(record)[-6:] == [
        "reason",
        "duration_s",
        "bytes_out",
        "bytes_in",
        "packets_out",
        "packets_in",
    ]


def test_timestamps() -> None:
    paris = timezone(timedelta(hours=1))
    assert format_ts(datetime(2026, 1, 1, 1, 0, 0, tzinfo=paris)) == "2026-01-01T00:00:00.000Z"
    assert format_ts(TS) == "2026-03-04T05:06:07.891Z"
    with pytest.raises(ValueError, match="timezone"):
        AuthRefused(datetime(2026, 1, 1), "r", "peer", "expired", "detail")


def test_flow_records_from_the_table() -> None:
    table = FlowTable()
    key = FlowKey(6, AGENT, 40000, WORLD, 443)
    flow = table.add(key, "s1", Decision("allow", "eng-corp"), "0123456789ab", 100.0, "a.example")
    assert flow is not None
    allowed = json.loads(FlowDecided.from_flow(flow, ts=TS, relay="r", client="alice").to_json())
    assert allowed == {
        "ts": "2026-03-04T05:06:07.891Z",
        "event": "flow.allow",
        "relay": "r",
        "client": "alice",
        "session": "s1",
        "proto": "tcp",
        "src": "100.64.0.2",
        "sport": 40000,
        "dst": "203.0.113.9",
        "dport": 443,
        "fqdn": "a.example",
        "verdict": "allow",
        "rule": "eng-corp",
        "policy_version": "0123456789ab",
        "connector": None,
    }
    with pytest.raises(ValueError, match="not ended"):
        FlowEnded.from_flow(flow, ts=TS, relay="r", client="alice")
    table.seen_out(flow, 60, 0x02, 100.0)
    table.seen_in(flow, 1500, 0x12, 100.5)
    table.seen_out(flow, 60, 0x11, 102.25)
    (ended,) = table.end_session("s1")
    end = json.loads(FlowEnded.from_flow(ended, ts=TS, relay="r", client="alice").to_json())
    assert end == {
        "ts": "2026-03-04T05:06:07.891Z",
        "event": "flow.end",
        "relay": "r",
        "client": "alice",
        "session": "s1",
        "proto": "tcp",
        "src": "100.64.0.2",
        "sport": 40000,
        "dst": "203.0.113.9",
        "dport": 443,
        "verdict": "allow",
        "rule": "eng-corp",
        "bytes_out": 120,
        "bytes_in": 1500,
        "packets_out": 2,
        "packets_in": 1,
        "duration_s": 2.25,
        "reason": "session_closed",
        "connector": None,
    }


def test_denied_flow_record_and_ipv6_text() -> None:
    table = FlowTable()
    a6 = IPv6Address("2001:db8:100::2").packed
    w6 = IPv6Address("2001:db8:0:0:1::9").packed
    flow = table.add(FlowKey(58, a6, 7, w6, 7), "s2", Decision("deny", "default"), "v", 0.0)
    assert flow is not None
    record = json.loads(FlowDecided.from_flow(flow, ts=TS, relay="r", client="bob").to_json())
    assert record["event"] == "flow.deny" and record["verdict"] == "deny"
    assert (record["proto"], record["src"], record["dst"]) == (
        "icmpv6",
        "2001:db8:100::2",
        "2001:db8::1:0:0:9",
    )
    assert record["fqdn"] is None and record["rule"] == "default"


def test_policy_and_auth_records() -> None:
    loaded = json.loads(PolicyLoaded(TS, "r", "abcdef012345", "sighup", 12).to_json())
    assert loaded == {
        "ts": "2026-03-04T05:06:07.891Z",
        "event": "policy.loaded",
        "relay": "r",
        "version": "abcdef012345",
        "source": "sighup",
        "rules": 12,
    }
    refused = json.loads(PolicyRefused(TS, "r", None, "reload", None, "p.yaml:3:1: bad").to_json())
    assert list(refused)[3:] == ["version", "source", "rules", "error"]
    assert refused["version"] is None and refused["error"] == "p.yaml:3:1: bad"
    auth = json.loads(AuthRefused(TS, "r", "198.51.100.9:1234", "revoked", "serial 0a").to_json())
    assert (auth["event"], auth["peer"], auth["reason"]) == (
        "auth.refused",
        "198.51.100.9:1234",
        "revoked",
    )
    assert json.loads(AuditOverflowed(TS, "r", 42).to_json())["dropped"] == 42


def test_helpers() -> None:
    assert address_text(bytes([10, 1, 2, 3])) == "10.1.2.3"
    assert address_text(IPv6Address("2001:db8::1").packed) == "2001:db8::1"
    assert address_text(b"\x01\x02") == "0102"
    assert [proto_name(p) for p in (1, 6, 17, 58, 132, 47)] == [
        "icmp",
        "tcp",
        "udp",
        "icmpv6",
        "sctp",
        "47",
    ]


@given(st.text(max_size=40), st.text(max_size=40))
def test_any_text_makes_one_ascii_line(client: str, detail: str) -> None:
    line = AuthRefused(TS, client, "peer", "bad_certificate", detail).to_json()
    assert line.isascii() and "\n" not in line and "\r" not in line
    record = json.loads(line)
    assert (record["relay"], record["detail"]) == (client, detail)
