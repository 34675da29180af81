"""What a candidate policy would change, replayed over the flows the relays recorded (sans-IO).

The database aggregates the window's ``flow.allow``/``flow.deny`` records into `FlowGroup` rows
(one per client, protocol, destination, port, name, recorded verdict and rule), so a million
flows arrive here as a few thousand rows; `replay` decides each row once with the candidate and
reports the rows whose verdict would change. No database, no clock: the caller passes the rows,
the client groups and ``now``, which makes it testable (and benchmarkable) on its own.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from ipaddress import ip_address
from typing import Final, Literal

from zgate_policy import CompiledPolicy
from zgate_policy.names import IPAddress
from zgate_policy.ports import ICMP, ICMPV6, TCP, UDP

__all__ = [
    "PROTO_NUMBERS",
    "ClientImpact",
    "FlowChange",
    "FlowGroup",
    "Impact",
    "RuleImpact",
    "replay",
    "window_phrase",
]

#: Protocol names as audit records write them (zgate_policy.audit.proto_name).
PROTO_NUMBERS: Final = {"tcp": TCP, "udp": UDP, "icmp": ICMP, "icmpv6": ICMPV6, "sctp": 132}
#: Protocols whose flows have a destination port (for ICMP the record's dport is the echo id).
_PORTED: Final = frozenset({TCP, UDP})

Change = Literal["loses", "gains"]


@dataclass(frozen=True, slots=True)
class FlowGroup:
    """Recorded flows sharing one key in the window, counted by the database."""

    client: str
    proto: str
    dst: str | None
    dport: int | None
    fqdn: str | None
    #: The verdict and rule recorded when the flows were decided.
    verdict: str
    rule: str | None
    flows: int
    last_seen: datetime


@dataclass(frozen=True, slots=True)
class FlowChange:
    """Flows whose verdict the candidate changes: the client ``loses`` or ``gains`` access."""

    client: str
    change: Change
    proto: str
    dst: str | None
    dport: int | None
    fqdn: str | None
    flows: int
    last_seen: datetime
    old_rule: str | None
    new_rule: str

    def describe(self, window: str) -> str:
        """``alice loses tcp/5432 to db.corp: 213 flows in the last 7 days``."""
        what = f"{self.proto}/{self.dport}" if self.dport is not None else self.proto
        where = self.fqdn or self.dst or "(unknown destination)"
        unit = "flow" if self.flows == 1 else "flows"
        return f"{self.client} {self.change} {what} to {where}: {self.flows} {unit} {window}"


@dataclass(frozen=True, slots=True)
class ClientImpact:
    """Flows one client loses and gains."""

    client: str
    loses: int
    gains: int


@dataclass(frozen=True, slots=True)
class RuleImpact:
    """Flows lost and gained through one of the candidate's rules ("default": no rule)."""

    rule: str
    loses: int
    gains: int


@dataclass(frozen=True, slots=True)
class Impact:
    """The replay's outcome; `changes` (and `summary`) hold at most the limit, biggest first."""

    since: datetime
    until: datetime
    flows_considered: int
    distinct: int
    changes: tuple[FlowChange, ...]
    truncated: bool
    by_client: tuple[ClientImpact, ...]
    by_rule: tuple[RuleImpact, ...]
    summary: tuple[str, ...]
    #: Rows that could not be decided (unknown protocol name); their flows are not in changes.
    undecidable: int


def window_phrase(since: datetime, until: datetime, now: datetime) -> str:
    """``in the last 7 days`` for a window ending now, else ``between ... and ... UTC``."""
    span = until - since
    if abs(now - until) < timedelta(minutes=1) and span > timedelta(0):
        days, rest = divmod(span, timedelta(days=1))
        if not rest:
            return "in the last day" if days == 1 else f"in the last {days} days"
        hours, rest = divmod(span, timedelta(hours=1))
        if not rest:
            return "in the last hour" if hours == 1 else f"in the last {hours} hours"
    return f"between {since:%Y-%m-%d %H:%M} and {until:%Y-%m-%d %H:%M} UTC"


def _proto_number(name: str) -> int | None:
    if name.isdigit():
        return int(name)
    return PROTO_NUMBERS.get(name.lower())


def _address(text: str | None) -> IPAddress | None:
    if not text:
        return None
    try:
        return ip_address(text)
    except ValueError:  # recorded as hex when the relay could not read it
        return None


_Key = tuple[str, Change, str, str | None, int | None, str | None, str | None, str]


def replay(
    rows: Iterable[FlowGroup],
    candidate: CompiledPolicy,
    *,
    client_groups: Mapping[str, Sequence[str]],
    since: datetime,
    until: datetime,
    now: datetime,
    limit: int,
) -> Impact:
    """Decide every row with `candidate` (rule expiry judged at `now`) and report the changes.

    A client's groups are `client_groups[client]` (none for a client missing there): flow
    records carry no groups, and the candidate would meet today's clients anyway. Rows whose
    flows the candidate decides like the recorded verdict (whatever the rule) are not changes.
    Changes with the same client, flow and rules are merged.
    """
    merged: dict[_Key, tuple[int, datetime]] = {}
    considered = distinct = undecidable = 0
    for row in rows:
        considered += row.flows
        distinct += 1
        proto = _proto_number(row.proto)
        if proto is None:
            undecidable += 1
            continue
        groups = tuple(client_groups.get(row.client, ()))
        dport = row.dport if proto in _PORTED else None
        decision = candidate.decide(
            row.client,
            groups,
            proto,
            _address(row.dst),
            dport,
            fqdns=(row.fqdn,) if row.fqdn else (),
            now=now,
        )
        if decision.verdict == row.verdict:
            continue
        change: Change = "gains" if decision.verdict == "allow" else "loses"
        key = (row.client, change, row.proto, row.dst, dport, row.fqdn, row.rule, decision.rule_id)
        flows, last = merged.get(key, (0, row.last_seen))
        merged[key] = (flows + row.flows, max(last, row.last_seen))
    changes = sorted(
        (
            FlowChange(client, change, proto_name, dst, dport, fqdn, flows, last, old, new)
            for (client, change, proto_name, dst, dport, fqdn, old, new), (flows, last) in (
                merged.items()
            )
        ),
        key=lambda c: (-c.flows, -c.last_seen.timestamp(), c.client, c.proto, c.dst or ""),
    )
    window = window_phrase(since, until, now)
    shown = tuple(changes[:limit])
    return Impact(
        since=since,
        until=until,
        flows_considered=considered,
        distinct=distinct,
        changes=shown,
        truncated=len(changes) > limit,
        by_client=_by_client(changes),
        by_rule=_by_rule(changes),
        summary=tuple(c.describe(window) for c in shown),
        undecidable=undecidable,
    )


def _totals(changes: Sequence[FlowChange], key: str) -> list[tuple[str, int, int]]:
    sums: defaultdict[str, list[int]] = defaultdict(lambda: [0, 0])
    for change in changes:
        sums[getattr(change, key)][change.change == "gains"] += change.flows
    return sorted(
        ((name, loses, gains) for name, (loses, gains) in sums.items()),
        key=lambda t: (-(t[1] + t[2]), t[0]),
    )


def _by_client(changes: Sequence[FlowChange]) -> tuple[ClientImpact, ...]:
    return tuple(ClientImpact(*t) for t in _totals(changes, "client"))


def _by_rule(changes: Sequence[FlowChange]) -> tuple[RuleImpact, ...]:
    # Attributed to the candidate's deciding rule: the one to look at before publishing.
    return tuple(RuleImpact(*t) for t in _totals(changes, "new_rule"))
