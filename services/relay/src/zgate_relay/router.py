"""Where each packet goes (sans-IO). The one place that decides: session to session,
session to egress, egress to session, or dropped (with a reason from a fixed set).

With an :class:`~zgate_relay.enforce.Enforcer` every packet must also belong to a flow the
policy allowed; a denied packet may come back as a :class:`Reject` carrying the ICMP
"administratively prohibited" answer for its sender.

With :class:`~zgate_relay.sites.SiteRoutes`, destinations in private sites go to a connector
session, and a connector's packets from its site are replies routed to the agent they are
for (checked like packets from the egress device)."""

from __future__ import annotations

from typing import Final

from zgate_relay.enforce import Enforcer
from zgate_relay.session import RelaySession
from zgate_relay.sites import SiteRoutes

__all__ = ["EGRESS", "Drop", "Egress", "Reject", "Router"]


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


# Pre-built so that routing a packet allocates nothing.
_MALFORMED: Final = Drop("malformed_packet")
_SPOOFED: Final = Drop("spoofed_source")
_NO_SESSION: Final = Drop("no_session")
_MULTICAST: Final = Drop("multicast")
_NO_CONNECTOR: Final = Drop("no_connector")


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
        #: a site from the egress device (the relay's DNS service asking a site's resolver).
        self.own_addresses = own_addresses
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

    def from_session(
        self, session: RelaySession, packet: bytes, now: float = 0.0
    ) -> RelaySession | Egress | Drop:
        """Route a packet an agent sent: its source must be the agent's own address, and
        (with an enforcer) its flow allowed by the policy."""
        n = len(packet)
        if n < 20:
            return _MALFORMED
        version = packet[0] >> 4
        if version == 4:
            src, dst = packet[12:16], packet[16:20]
        elif version == 6 and n >= 40:
            src, dst = packet[8:24], packet[24:40]
        else:
            return _MALFORMED
        sites = self.sites
        if src not in session.raw_addresses:
            if sites is None or not sites.serves(session, src):
                return _SPOOFED
            return self._from_site(packet, dst, now)
        target = self._by_address.get(dst)
        site: RelaySession | bool | None = None
        if target is None and sites is not None:
            site = sites.lookup(dst, packet, now)
            if site is False:
                return _NO_CONNECTOR
        enforcer = self.enforcer
        if enforcer is not None:
            via = site.identity.ident if isinstance(site, RelaySession) else None
            verdict = enforcer.outbound(session, packet, now, via)
            if not verdict.allowed:
                if verdict.icmp is not None:
                    return Reject(verdict.reason, verdict.icmp)
                return self._drop(verdict.reason)
        if target is not None:
            return target
        return site if isinstance(site, RelaySession) else EGRESS

    def _from_site(self, packet: bytes, dst: bytes, now: float) -> RelaySession | Egress | Drop:
        """A packet a connector brought out of its site: only to an agent, and (with an
        enforcer) only as a reply to a flow the policy allowed."""
        target = self._by_address.get(dst)
        if target is None:
            # An answer to the relay itself (its DNS service): the kernel takes it.
            return EGRESS if dst in self.own_addresses else _NO_SESSION
        return self._to_agent(target, packet, now)

    def _to_agent(self, target: RelaySession, packet: bytes, now: float) -> RelaySession | Drop:
        """A packet toward an agent from outside (egress device or a site): with an
        enforcer, only as a reply to a flow of that agent's that the policy allowed."""
        enforcer = self.enforcer
        if enforcer is not None:
            verdict = enforcer.inbound(target, packet, now)
            if not verdict.allowed:
                return self._drop(verdict.reason)
        return target

    def from_egress(self, packet: bytes, now: float = 0.0) -> RelaySession | Drop:
        """Route a packet the kernel sent into the TUN device, by destination."""
        n = len(packet)
        if n < 20:
            return _MALFORMED
        version = packet[0] >> 4
        if version == 4:
            dst = packet[16:20]
        elif version == 6 and n >= 40:
            dst = packet[24:40]
        else:
            return _MALFORMED
        target = self._by_address.get(dst)
        if target is not None:
            return self._to_agent(target, packet, now)
        sites = self.sites
        if sites is not None:
            src = packet[12:16] if version == 4 else packet[8:24]
            site = sites.lookup(dst, packet, now)
            if isinstance(site, RelaySession):
                # Only the relay's own traffic may enter a site this way: forwarded packets
                # (from the internet side) must never reach a private network.
                return site if src in self.own_addresses else _SPOOFED
            if site is False:
                return _NO_CONNECTOR
        # The kernel's own multicast (MLD reports, IGMP) on the TUN device is no one's.
        return _MULTICAST if dst[0] == 0xFF or 224 <= dst[0] <= 239 else _NO_SESSION
