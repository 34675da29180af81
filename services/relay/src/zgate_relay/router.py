"""Where each packet goes (sans-IO). The one place that decides: session to session,
session to egress, egress to session, or dropped (with a reason from a fixed set).

Each packet is parsed once, here (:func:`zgate_proto.packet.parse_packet`); the view goes
on to the enforcer and the flow table, which read no header again.

A packet for another session (an agent, or a connector's site) is forwarded by the relay
as a router: it leaves as :class:`Deliver` with its TTL (hop limit) already decremented,
and one whose TTL would reach 0 becomes a :class:`Reject` carrying ICMP "time exceeded"
for its sender (RFC 1812 §5.3.1, RFC 4443 §3.3). Packets to the egress device keep their
TTL: the kernel forwards them, and decrements it, itself.

With an :class:`~zgate_relay.enforce.Enforcer` every packet must also belong to a flow the
policy allowed; a denied packet may come back as a :class:`Reject` carrying the ICMP
"administratively prohibited" answer for its sender. ICMP answers of both kinds share the
enforcer's per-session budget (RFC 4443 §2.4 (f)).

With :class:`~zgate_relay.sites.SiteRoutes`, destinations in private sites go to a connector
session, and a connector's packets from its site are replies routed to the agent they are
for (checked like packets from the egress device)."""

from __future__ import annotations

from typing import Final

from zgate_proto.icmp import time_exceeded
from zgate_proto.ip import decrement_ttl
from zgate_proto.packet import PacketView, parse_packet
from zgate_relay.enforce import Enforcer, IcmpBudget, gateway_for
from zgate_relay.session import RelaySession
from zgate_relay.sites import SiteRoutes

__all__ = ["EGRESS", "Deliver", "Drop", "Egress", "Reject", "Router", "Target"]


class Egress:
    """The relay's TUN device: the kernel routes and NATs from there."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "EGRESS"


EGRESS: Final = Egress()


class Drop:
    """A dropped packet, with the reason it is counted under."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"Drop({self.reason!r})"


class Reject(Drop):
    """A dropped packet whose sender gets an ICMP error (built for the denied packet)."""

    __slots__ = ("icmp",)

    def __init__(self, reason: str, icmp: bytes) -> None:
        super().__init__(reason)
        self.icmp = icmp


class Deliver:
    """A packet for another session, ready to send: its TTL/hop limit already decremented."""

    __slots__ = ("packet", "session")

    def __init__(self, session: RelaySession, packet: bytes) -> None:
        self.session = session
        self.packet = packet

    def __repr__(self) -> str:
        return f"Deliver({self.session.session_id}, {len(self.packet)} bytes)"


#: Where :meth:`Router.from_session` sends a packet (a :class:`Reject` is a :class:`Drop`).
Target = Egress | Drop | Deliver

# Pre-built so that routing a packet allocates nothing.
_MALFORMED: Final = Drop("malformed_packet")
_SPOOFED: Final = Drop("spoofed_source")
_NO_SESSION: Final = Drop("no_session")
_MULTICAST: Final = Drop("multicast")
_NO_CONNECTOR: Final = Drop("no_connector")
_TTL_EXPIRED: Final = Drop("ttl_expired")


class Router:
    """Maps tunnel addresses (raw 4/16-byte keys) to sessions and routes packets."""

    def __init__(
        self,
        enforcer: Enforcer | None = None,
        sites: SiteRoutes | None = None,
        own_addresses: frozenset[bytes] = frozenset(),
    ) -> None:
        self._by_address: dict[bytes, RelaySession] = {}
        self.enforcer = enforcer
        self.sites = sites
        #: The relay's own tunnel addresses (its gateways): the only sources that may reach
        #: a site from the egress device (the relay's DNS service asking a site's resolver),
        #: and where its ICMP "time exceeded" comes from.
        self.own_addresses = own_addresses
        self.icmp_budget = enforcer.icmp_budget if enforcer is not None else IcmpBudget()
        self._drops: dict[str, Drop] = {}

    def attach(self, session: RelaySession) -> None:
        """Make the session reachable at its addresses."""
        for raw in session.raw_addresses:
            self._by_address[raw] = session

    def detach(self, session: RelaySession) -> None:
        """Forget every address that points at the session."""
        for raw in [k for k, s in self._by_address.items() if s is session]:
            del self._by_address[raw]

    def session_for(self, raw_address: bytes) -> RelaySession | None:
        """The session holding an address, if any."""
        return self._by_address.get(raw_address)

    def __len__(self) -> int:
        return len(self._by_address)

    def _drop(self, reason: str) -> Drop:
        drop = self._drops.get(reason)
        if drop is None:
            drop = self._drops[reason] = Drop(reason)
        return drop

    def from_session(self, session: RelaySession, packet: bytes, now: float = 0.0) -> Target:
        """Route a packet a session sent: its source must be the session's own address (or,
        for a connector, in its site), and (with an enforcer) its flow allowed by the
        policy."""
        view = parse_packet(packet)
        if view is None:
            return _MALFORMED
        dst = view.dst
        sites = self.sites
        if view.src not in session.raw_addresses:
            if sites is None or not sites.serves(session, view.src):
                return _SPOOFED
            return self._from_site(session, view, now)
        target = self._by_address.get(dst)
        site: RelaySession | bool | None = None
        if target is None and sites is not None:
            site = sites.lookup(dst, packet, now)
            if site is False:
                return _NO_CONNECTOR
            if isinstance(site, RelaySession):
                target = site
        if target is not None and view.ttl <= 1:
            return self._expired(session, view, now)
        enforcer = self.enforcer
        if enforcer is not None:
            via = site.identity.ident if isinstance(site, RelaySession) else None
            verdict = enforcer.outbound(session, view, now, via)
            if not verdict.allowed:
                if verdict.icmp is not None:
                    return Reject(verdict.reason, verdict.icmp)
                return self._drop(verdict.reason)
        if target is None:
            return EGRESS
        return _forward(target, packet)

    def _from_site(self, connector: RelaySession, view: PacketView, now: float) -> Target:
        """A packet a connector brought out of its site: only to an agent, and (with an
        enforcer) only as a reply to a flow the policy allowed."""
        target = self._by_address.get(view.dst)
        if target is None:
            # An answer to the relay itself (its DNS service): the kernel takes it.
            return EGRESS if view.dst in self.own_addresses else _NO_SESSION
        if view.ttl <= 1:
            return self._expired(connector, view, now)
        routed = self._to_agent(target, view, now)
        if isinstance(routed, Drop):
            return routed
        return _forward(target, view.data)

    def _to_agent(self, target: RelaySession, view: PacketView, now: float) -> RelaySession | Drop:
        """A packet toward an agent from outside (egress device or a site): with an
        enforcer, only as a reply to a flow of that agent's that the policy allowed."""
        enforcer = self.enforcer
        if enforcer is not None:
            verdict = enforcer.inbound(target, view, now)
            if not verdict.allowed:
                return self._drop(verdict.reason)
        return target

    def _expired(self, sender: RelaySession, view: PacketView, now: float) -> Drop:
        """A packet whose TTL runs out here: ICMP "time exceeded" from the relay's own
        address for its sender, within the sender's ICMP budget."""
        gateway = gateway_for(self.own_addresses, view.version)
        if gateway is None or not self.icmp_budget.take(sender.session_id, now):
            return _TTL_EXPIRED
        icmp = time_exceeded(view.data, gateway)
        return Reject("ttl_expired", icmp) if icmp is not None else _TTL_EXPIRED

    def from_egress(self, packet: bytes, now: float = 0.0) -> RelaySession | Drop:
        """Route a packet the kernel sent into the TUN device, by destination. The kernel
        has decremented its TTL already (it forwarded it to the device)."""
        view = parse_packet(packet)
        if view is None:
            return _MALFORMED
        dst = view.dst
        target = self._by_address.get(dst)
        if target is not None:
            return self._to_agent(target, view, now)
        sites = self.sites
        if sites is not None:
            site = sites.lookup(dst, packet, now)
            if isinstance(site, RelaySession):
                # Only the relay's own traffic may enter a site this way: forwarded packets
                # (from the internet side) must never reach a private network.
                return site if view.src in self.own_addresses else _SPOOFED
            if site is False:
                return _NO_CONNECTOR
        # The kernel's own multicast (MLD reports, IGMP) on the TUN device is no one's.
        return _MULTICAST if dst[0] == 0xFF or 224 <= dst[0] <= 239 else _NO_SESSION


def _forward(target: RelaySession, packet: bytes) -> Deliver:
    """The packet for ``target`` with its TTL/hop limit one lower (the caller checked that
    it is above 1)."""
    forwarded = bytearray(packet)
    decrement_ttl(forwarded)
    return Deliver(target, bytes(forwarded))
