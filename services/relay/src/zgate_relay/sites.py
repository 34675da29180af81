"""Private sites behind connectors (sans-IO): which prefixes each connector may serve, which
it advertised, longest-prefix match, and spreading flows over a site's live connectors.

A connector (a session whose certificate says ``connector/<id>``) advertises its site's
prefixes with ROUTE_ADVERTISEMENT. Only prefixes inside what the relay's configuration
allows for that id are installed; the rest are refused (and the caller logs them). Several
connectors may serve one prefix: a new flow goes to the one rendezvous hashing picks for
its 5-tuple, and is pinned there while it stays active, so a connector that joins later
takes only new flows, and one that leaves takes only its own flows with it (they move to
a survivor on their next packet). A destination inside an allowed prefix that no live
connector serves is dropped (``no_connector``), never sent to the internet.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from zgate_proto.capsules import IPAddressRange
from zgate_relay.session import RelaySession

__all__ = ["Advertised", "ConnectorState", "Replaced", "SiteRoutes", "flow_hash_key"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
CONNECTOR = "connector"


@dataclass
class ConnectorState:
    """What the relay knows of one connector id now."""

    sessions: int = 0
    prefixes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Advertised:
    """The outcome of one ROUTE_ADVERTISEMENT: what was installed, what was refused, why."""

    accepted: tuple[Network, ...]
    refused: tuple[tuple[str, str], ...]  # (range or prefix, reason)


@dataclass(frozen=True)
class Replaced:
    """The outcome of :meth:`SiteRoutes.replace`: per live connector session (by session
    id), the routes it lost and the ones it gained under the new allowed prefixes."""

    withdrawn: dict[str, tuple[Network, ...]]
    installed: dict[str, tuple[Network, ...]]


def flow_hash_key(packet: bytes) -> bytes:
    """The bytes that name a packet's flow for spreading: protocol, addresses, and the
    first four transport bytes (ports for TCP/UDP, type/code/checksum for ICMP)."""
    if packet[0] >> 4 == 4:
        ihl = (packet[0] & 0x0F) * 4
        return packet[9:10] + packet[12:20] + packet[ihl : ihl + 4]
    return packet[6:7] + packet[8:40] + packet[40:44]


class _Table:
    """Prefixes of one IP version, by length, each with the sessions serving it."""

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.by_length: dict[int, dict[int, list[RelaySession]]] = {}
        self.lengths: list[int] = []  # longest first

    def add(self, network: Network, session: RelaySession | None) -> None:
        prefixes = self.by_length.setdefault(network.prefixlen, {})
        key = int(network.network_address) >> (self.bits - network.prefixlen)
        sessions = prefixes.setdefault(key, [])
        if session is not None and session not in sessions:
            sessions.append(session)
        self.lengths = sorted(self.by_length, reverse=True)

    def remove(self, network: Network, session: RelaySession) -> None:
        prefixes = self.by_length.get(network.prefixlen, {})
        key = int(network.network_address) >> (self.bits - network.prefixlen)
        sessions = prefixes.get(key)
        if sessions is not None and session in sessions:
            sessions.remove(session)

    def match(self, address: int) -> list[RelaySession] | None:
        """The sessions of the longest prefix holding ``address`` (maybe none alive), or
        None when no prefix holds it."""
        for length in self.lengths:
            sessions = self.by_length[length].get(address >> (self.bits - length))
            if sessions is not None:
                return sessions
        return None


class SiteRoutes:
    """The relay's routes to private sites, kept from connectors' advertisements."""

    def __init__(
        self,
        allowed: Mapping[str, Sequence[Network]],
        *,
        pin_timeout: float = 120.0,
        max_pins: int = 262_144,
    ) -> None:
        self.allowed: dict[str, tuple[Network, ...]] = {}
        self.pin_timeout = pin_timeout
        self.max_pins = max_pins
        self._tables = {4: _Table(32), 6: _Table(128)}
        self._advertised: dict[RelaySession, tuple[Network, ...]] = {}
        # Everything each connector session offered, allowed or not: when the allowed
        # prefixes change (the control plane), its routes are decided again from this.
        self._offered: dict[RelaySession, tuple[IPAddressRange, ...]] = {}
        self._pins: dict[bytes, tuple[RelaySession, float]] = {}
        self._set_allowed(allowed)

    def _set_allowed(self, allowed: Mapping[str, Sequence[Network]]) -> None:
        self.allowed = {ident: tuple(nets) for ident, nets in allowed.items()}
        self._tables = {4: _Table(32), 6: _Table(128)}
        # Every allowed prefix is a site address space, served or not (see no_connector).
        for nets in self.allowed.values():
            for net in nets:
                self._tables[net.version].add(net, None)

    def replace(self, allowed: Mapping[str, Sequence[Network]]) -> Replaced:
        """Take a new set of allowed prefixes (the whole set) at once: every live
        connector's advertisement is decided again, so a connector whose prefixes shrink
        loses the withdrawn routes now (its flows there move or are dropped on their next
        packet) and one whose prefixes grow gains what it had offered. Flow pins stay:
        :meth:`lookup` only follows a pin to a session still serving the prefix."""
        before = dict(self._advertised)
        offered = dict(self._offered)
        self._set_allowed(allowed)
        self._advertised.clear()
        self._offered.clear()
        for session, ranges in offered.items():
            self.advertise(session, ranges)
        withdrawn: dict[str, tuple[Network, ...]] = {}
        installed: dict[str, tuple[Network, ...]] = {}
        for session in offered:
            old, new = set(before.get(session, ())), set(self._advertised.get(session, ()))
            if old - new:
                withdrawn[session.session_id] = tuple(n for n in before[session] if n not in new)
            if new - old:
                installed[session.session_id] = tuple(
                    n for n in self._advertised[session] if n not in old
                )
        return Replaced(withdrawn, installed)

    # -------------------------------------------------------------- advertisements

    def advertise(self, session: RelaySession, ranges: Iterable[IPAddressRange]) -> Advertised:
        """Install what a connector advertised (replacing its earlier advertisement)."""
        ranges = tuple(ranges)
        identity = session.identity
        permitted = self.allowed.get(identity.ident, ()) if identity.kind == CONNECTOR else ()
        accepted: list[Network] = []
        refused: list[tuple[str, str]] = []
        for item in ranges:
            if identity.kind != CONNECTOR:
                refused.append((_label(item), "not a connector"))
                continue
            if item.ip_protocol != 0:
                refused.append((_label(item), "protocol-limited routes are not supported"))
                continue
            for network in item.networks():
                if any(network.version == p.version and network.subnet_of(p) for p in permitted):  # type: ignore[arg-type]
                    accepted.append(network)
                elif not permitted:
                    refused.append((str(network), f"no prefixes allowed for {identity}"))
                else:
                    refused.append((str(network), f"outside what {identity} may serve"))
        self.withdraw(session)
        if identity.kind == CONNECTOR:
            self._offered[session] = ranges
        if accepted:
            for network in accepted:
                self._tables[network.version].add(network, session)
            self._advertised[session] = tuple(accepted)
        return Advertised(tuple(accepted), tuple(refused))

    def withdraw(self, session: RelaySession) -> tuple[Network, ...]:
        """Forget a connector's routes (its session ended); its flows move on their next
        packet. Returns the prefixes it had."""
        gone = self._advertised.pop(session, ())
        self._offered.pop(session, None)
        for network in gone:
            self._tables[network.version].remove(network, session)
        return gone

    def serves(self, session: RelaySession, source: bytes) -> bool:
        """Whether ``source`` (4 or 16 raw bytes) lies in a prefix this connector installed:
        the source check (BCP 38) for packets coming out of a site."""
        networks = self._advertised.get(session)
        if not networks:
            return False
        value, version = int.from_bytes(source, "big"), 4 if len(source) == 4 else 6
        bits = 32 if version == 4 else 128
        for network in networks:
            if network.version == version:
                shift = bits - network.prefixlen
                if value >> shift == int(network.network_address) >> shift:
                    return True
        return False

    def is_connector(self, session: RelaySession) -> bool:
        """Whether the session has routes installed."""
        return session in self._advertised

    # ------------------------------------------------------------------- lookups

    def lookup(self, destination: bytes, packet: bytes, now: float) -> RelaySession | bool | None:
        """Where ``packet`` to ``destination`` goes: a connector session; False when the
        address belongs to a site no live connector serves; None when it is no site's.

        On the path of every packet to the internet: with no site prefixes it costs one
        empty loop, and the flow key is made only for site traffic."""
        table = self._tables[4 if len(destination) == 4 else 6]
        if not table.lengths:
            return None
        sessions = table.match(int.from_bytes(destination, "big"))
        if sessions is None:
            return None
        if not sessions:
            return False
        flow = flow_hash_key(packet)
        pinned = self._pins.get(flow)
        if pinned is not None and pinned[0] in sessions:
            if now - pinned[1] > 1.0:  # refresh the timestamp at most once a second
                self._pins[flow] = (pinned[0], now)
            return pinned[0]
        chosen = sessions[0] if len(sessions) == 1 else _rendezvous(flow, sessions)
        if len(self._pins) < self.max_pins:
            self._pins[flow] = (chosen, now)
        return chosen

    def expire(self, now: float) -> int:
        """Drop flow pins idle longer than ``pin_timeout``; how many went."""
        stale = [k for k, (_, seen) in self._pins.items() if now - seen > self.pin_timeout]
        for key in stale:
            del self._pins[key]
        return len(stale)

    # ------------------------------------------------------------------- reports

    def connectors(self) -> dict[str, ConnectorState]:
        """Per connector id (every configured one, and any other that advertised): its live
        sessions with routes installed and the prefixes they serve."""
        out = {ident: ConnectorState() for ident in self.allowed}
        for session, networks in self._advertised.items():
            state = out.setdefault(session.identity.ident, ConnectorState())
            state.sessions += 1
            for network in networks:
                if str(network) not in state.prefixes:
                    state.prefixes.append(str(network))
        return out

    def __len__(self) -> int:
        return len(self._pins)


def _rendezvous(flow: bytes, sessions: Sequence[RelaySession]) -> RelaySession:
    """Highest-random-weight choice: stable for a flow while the set holds, and only the
    flows of a session that leaves move.

    The weight is a cryptographic hash of flow and session: Python's own tuple hash mixes
    its parts so that, for some pairs of sessions, 95 % of flows went to one of them.
    Runs once per new flow (the choice is pinned), so its microsecond does not matter.
    """

    def weight(session: RelaySession) -> bytes:
        return hashlib.blake2b(flow + session.session_id.encode(), digest_size=8).digest()

    return max(sessions, key=weight)


def _label(item: IPAddressRange) -> str:
    return f"{item.start}-{item.end}" + (f" proto {item.ip_protocol}" if item.ip_protocol else "")
