"""Access control on the packet path (sans-IO; time passed in).

Every packet from an agent belongs to a flow. The first packet of a flow is decided by the
policy, and the decision is kept in the flow table, so later packets cost one dict lookup.
Packets towards an agent pass only as replies to a flow the policy allowed. Everything the
auditor needs is queued in :attr:`Enforcer.events` for the pump to write, never per packet.
Packets come as the router's :class:`~zgate_proto.packet.PacketView`: parsed once, there.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Protocol

from zgate_pki import Identity
from zgate_policy import CompiledPolicy, Decision
from zgate_policy.audit import AuditEvent, FlowDecided, FlowEnded
from zgate_policy.flows import (
    Flow,
    FlowKey,
    FlowTable,
    flow_key_from_view,
    reply_key_from_view,
)
from zgate_proto.icmp import admin_prohibited
from zgate_proto.packet import PacketView
from zgate_relay.denials import DenialLog

__all__ = [
    "RELAY_DNS_RULE",
    "EnforcedSession",
    "Enforcer",
    "IcmpBudget",
    "Verdict",
    "gateway_for",
]

#: The rule id under which agents' queries to the relay's own DNS service are allowed:
#: the FQDN rules depend on that service, so no policy may cut agents off from it.
RELAY_DNS_RULE: Final = "relay-dns"
_DNS_ALLOWED: Final = Decision("allow", RELAY_DNS_RULE)
_TCP, _UDP = 6, 17
_DNS_PORT = 53
_PORTED = (_TCP, _UDP, 132)  # protocols whose flows have ports (TCP, UDP, SCTP)


class EnforcedSession(Protocol):
    """What the enforcer needs of a session."""

    session_id: str
    identity: Identity


@dataclass(slots=True)
class Verdict:
    """The outcome for one packet: forward it, or drop it with a reason (and maybe answer
    the sender with an ICMP error)."""

    allowed: bool
    reason: str = ""
    icmp: bytes | None = None


ALLOWED: Final = Verdict(True)
_NO_FLOW: Final = Verdict(False, "no_flow")
_MALFORMED: Final = Verdict(False, "malformed_packet")
_TABLE_FULL: Final = Verdict(False, "flow_table_full")
_DENIED: Final = Verdict(False, "policy_denied")


@dataclass(slots=True)
class IcmpBudget:
    """A token bucket per session for ICMP "administratively prohibited" answers, so a
    denied flood does not turn the relay into an ICMP generator."""

    rate: float = 10.0
    burst: float = 20.0
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def take(self, session_id: str, now: float) -> bool:
        """One answer allowed for this session now?"""
        tokens, last = self._buckets.get(session_id, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1:
            self._buckets[session_id] = (tokens, now)
            return False
        self._buckets[session_id] = (tokens - 1, now)
        return True

    def forget(self, session_id: str) -> None:
        """Drop a closed session's bucket."""
        self._buckets.pop(session_id, None)


class Enforcer:
    """Decides flows with the current policy and keeps them in the flow table."""

    def __init__(
        self,
        policy: CompiledPolicy,
        *,
        flows: FlowTable,
        relay_name: str,
        relay_addresses: frozenset[bytes] = frozenset(),
        names_for: Callable[[str, bytes, float], frozenset[str]] | None = None,
        country_of: Callable[[bytes], str | None] | None = None,
        icmp_budget: IcmpBudget | None = None,
        on_decision: Callable[[Decision], None] | None = None,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        denials: DenialLog | None = None,
    ) -> None:
        self.policy = policy
        #: Each client's last denied flows (for `why`), recorded once per denied flow.
        self.denials = denials if denials is not None else DenialLog()
        self.flows = flows
        self.relay_name = relay_name
        self.relay_addresses = relay_addresses
        self.names_for = names_for
        self.country_of = country_of
        self.icmp_budget = icmp_budget or IcmpBudget()
        self.on_decision = on_decision
        self.wall_clock = wall_clock
        self.events: list[AuditEvent] = []
        self._sessions: dict[str, EnforcedSession] = {}

    # ---------------------------------------------------------------- packets

    def outbound(
        self, session: EnforcedSession, view: PacketView, now: float, connector: str | None = None
    ) -> Verdict:
        """A packet an agent sent (its source already checked): its flow's verdict.
        ``connector``: the connector that will carry it, named in the flow's records.

        The TCP flags move the flow's state only when the packet itself is TCP (the view
        has none for an ICMP error about a TCP flow)."""
        key = flow_key_from_view(view)
        if key is None:
            return _MALFORMED
        flows = self.flows
        flow = flows.get(key)
        if flow is None:
            # An answer to a flow another agent opened towards this one?
            reply = reply_key_from_view(view)
            opened = flows.get(reply) if reply is not None else None
            if opened is not None and opened.verdict == "allow":
                flows.seen_in(opened, len(view.data), view.tcp_flags, now)
                return ALLOWED
            flow = self._new_flow(session, key, now, connector)
            if flow is None:
                return _TABLE_FULL
        flows.seen_out(flow, len(view.data), view.tcp_flags, now)
        if flow.verdict == "allow":
            return ALLOWED
        return self._denied(session, view, now)

    def inbound(self, session: EnforcedSession, view: PacketView, now: float) -> Verdict:
        """A packet towards an agent: only replies to a flow of that session's that the
        policy allowed get through."""
        key = reply_key_from_view(view)
        if key is None:
            return _MALFORMED
        flow = self.flows.get(key)
        if flow is None or flow.verdict != "allow" or flow.session_id != session.session_id:
            return _NO_FLOW
        self.flows.seen_in(flow, len(view.data), view.tcp_flags, now)
        return ALLOWED

    def _decide(
        self, identity: Identity, key: FlowKey, names: Collection[str], wall: datetime
    ) -> Decision:
        """The running policy's decision for a flow (the relay's own DNS always allowed)."""
        if key.dst in self.relay_addresses and key.dport == _DNS_PORT and key.proto in (_TCP, _UDP):
            return _DNS_ALLOWED
        policy = self.policy
        country = (
            self.country_of(key.dst) if policy.uses_geoip and self.country_of is not None else None
        )
        return policy.decide(
            identity.ident,
            identity.groups,
            key.proto,
            ipaddress.ip_address(key.dst),
            key.dport if key.proto in _PORTED else None,
            fqdns=names,
            country=country,
            now=wall,
        )

    def _new_flow(
        self, session: EnforcedSession, key: FlowKey, now: float, connector: str | None = None
    ) -> Flow | None:
        identity = session.identity
        names = self.names_for(identity.ident, key.dst, now) if self.names_for is not None else ()
        wall = self.wall_clock()
        decision = self._decide(identity, key, names, wall)
        fqdn = min(names) if names else None
        flow = self.flows.add(key, session.session_id, decision, self.policy.version, now, fqdn)
        if flow is None:
            return None
        flow.connector = connector
        if decision.verdict == "deny":  # once per denied flow, never per packet
            self.denials.record(str(identity), wall, key, decision.rule_id, names)
        self._sessions[session.session_id] = session
        if self.on_decision is not None:
            self.on_decision(decision)
        self.events.append(
            FlowDecided.from_flow(flow, ts=wall, relay=self.relay_name, client=str(identity))
        )
        return flow

    def _denied(self, session: EnforcedSession, view: PacketView, now: float) -> Verdict:
        if not self.icmp_budget.take(session.session_id, now):
            return _DENIED
        # The answer comes from the relay's tunnel address of the packet's family.
        gateway = gateway_for(self.relay_addresses, view.version)
        if gateway is None:
            return _DENIED
        icmp = admin_prohibited(view.data, gateway)
        return Verdict(False, "policy_denied", icmp) if icmp is not None else _DENIED

    # ------------------------------------------------------------ lifecycle

    def expire(self, now: float) -> int:
        """End idle flows (amortized); returns how many ended."""
        return self._ended(self.flows.expire(now))

    def end_session(self, session: EnforcedSession) -> int:
        """End every flow of a closed session."""
        self.icmp_budget.forget(session.session_id)
        ended = self._ended(self.flows.end_session(session.session_id))
        self._sessions.pop(session.session_id, None)
        return ended

    def set_policy(self, policy: CompiledPolicy, now: float) -> int:
        """Swap in a new policy version: flows it would decide differently are ended (the
        next packet of such a flow is decided again). Returns how many ended."""
        self.policy = policy
        wall = self.wall_clock()

        def decide(flow: Flow) -> Decision:
            session = self._sessions.get(flow.session_id)
            if session is None:
                return Decision("deny", "default")
            key = flow.key
            names: Collection[str] = ()
            if flow.fqdn is not None:  # the name the flow was allowed by, if still bound
                bound = (
                    self.names_for(session.identity.ident, key.dst, now) if self.names_for else ()
                )
                names = bound or (flow.fqdn,)
            return self._decide(session.identity, key, names, wall)

        return self._ended(self.flows.revalidate(decide, policy_version=policy.version))

    def _ended(self, flows: list[Flow]) -> int:
        ts = self.wall_clock()
        for flow in flows:
            session = self._sessions.get(flow.session_id)
            client = str(session.identity) if session is not None else ""
            self.events.append(
                FlowEnded.from_flow(flow, ts=ts, relay=self.relay_name, client=client)
            )
        return len(flows)

    def take_events(self) -> list[AuditEvent]:
        """The audit events queued since the last call."""
        events, self.events = self.events, []
        return events


def gateway_for(
    addresses: Collection[bytes], version: int
) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The relay's own address (of ``addresses``, raw) of IP ``version``: where the ICMP
    errors it sends come from. None when it has none of that family."""
    size = 4 if version == 4 else 16
    raw = next((a for a in addresses if len(a) == size), None)
    return ipaddress.ip_address(raw) if raw is not None else None
