"""One CONNECT-IP session on the relay (sans-IO): who it is, which addresses it holds,
what it was told, and its counters. The relay core keeps it; the router reads its
addresses; the session core (:class:`zgate_proto.session.ServerConnection`) carries its
packets."""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

from zgate_pki import Identity
from zgate_proto.capsules import (
    AddressAssign,
    AddressRequest,
    AssignedAddress,
    Capsule,
    IPAddressRange,
    RouteAdvertisement,
    normalize_ranges,
)
from zgate_proto.session import PacketMode, ServerConnection
from zgate_relay.pool import AddressPool, PoolExhausted

__all__ = ["FULL_ROUTES", "RelaySession", "routes_for"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: "Everything": the whole IPv4 and IPv6 space, all protocols.
FULL_ROUTES = (
    IPAddressRange(ipaddress.IPv4Address(0), ipaddress.IPv4Address(2**32 - 1), 0),
    IPAddressRange(ipaddress.IPv6Address(0), ipaddress.IPv6Address(2**128 - 1), 0),
)


def routes_for(prefixes: Sequence[Network]) -> tuple[IPAddressRange, ...]:
    """ROUTE_ADVERTISEMENT ranges for prefixes, in the order RFC 9484 §4.7.3 requires."""
    return normalize_ranges(IPAddressRange.from_network(p) for p in prefixes)


@dataclass(eq=False)
class RelaySession:
    """A live CONNECT-IP session: identity, where it lives, addresses and counters."""

    identity: Identity
    peer: str
    #: Wall clock (seconds since the epoch) when it opened: for /status and audit records.
    opened_at: float
    #: The CONNECT stream on its QUIC connection, and the connection's session core, which
    #: sends its packets (None only for sessions made up by tests of the router).
    stream_id: int = 0
    server: ServerConnection | None = None
    mode: PacketMode = PacketMode.DATAGRAM
    #: The relay's monotonic clock when it opened: durations come from this one, so a wall
    #: clock that steps cannot make a session last a negative time.
    started: float = 0.0
    session_id: str = field(default_factory=lambda: secrets.token_hex(6))
    addresses: list[Address] = field(default_factory=list)
    #: Raw source addresses (4 or 16 bytes) this session may send from (BCP 38).
    raw_addresses: frozenset[bytes] = frozenset()
    packets_in: int = 0
    bytes_in: int = 0
    packets_out: int = 0
    bytes_out: int = 0

    def assign(self, pool: AddressPool, wanted: Sequence[Address] = ()) -> list[Address]:
        """Take addresses from the pool (honouring wanted ones when free)."""
        want4 = next((a for a in wanted if isinstance(a, ipaddress.IPv4Address)), None)
        want6 = next((a for a in wanted if isinstance(a, ipaddress.IPv6Address)), None)
        self.set_addresses(pool.allocate(want4, want6))
        return self.addresses

    def set_addresses(self, addresses: Sequence[Address]) -> None:
        """Replace the session's addresses."""
        self.addresses = list(addresses)
        self.raw_addresses = frozenset(a.packed for a in addresses)

    def release(self, pool: AddressPool) -> None:
        """Give the session's addresses back to the pool."""
        for address in self.addresses:
            pool.release(address)
        self.set_addresses([])

    def address_assign(self, request_ids: dict[int, int] | None = None) -> AddressAssign:
        """ADDRESS_ASSIGN listing every address held (request ID 0 = unsolicited)."""
        ids = request_ids or {}
        return AddressAssign(
            tuple(
                AssignedAddress(ids.get(a.version, 0), ipaddress.ip_network(a))
                for a in self.addresses
            )
        )

    def answer_address_request(self, request: AddressRequest, pool: AddressPool) -> Capsule:
        """Honour ADDRESS_REQUEST where possible (RFC 9484 §4.7.1).

        A requested host address that is free replaces the one held for that family;
        anything else is answered with the address already held, under the request's ID.
        Returns the ADDRESS_ASSIGN to send; the caller re-attaches the session to the
        router when the addresses changed.
        """
        request_ids: dict[int, int] = {}
        current = {a.version: a for a in self.addresses}
        for requested in request.addresses:
            version = requested.prefix.version
            request_ids[version] = requested.request_id
            wanted = requested.prefix.network_address
            full = requested.prefix.prefixlen == requested.prefix.max_prefixlen
            held = current.get(version)
            if not full or held is None or wanted == held:
                continue
            try:
                got = pool.allocate(
                    wanted if version == 4 else None,  # type: ignore[arg-type]
                    wanted if version == 6 else None,  # type: ignore[arg-type]
                )
            except PoolExhausted:
                continue
            for address in got:
                if address.version == version and address == wanted:
                    pool.release(held)
                    current[version] = address
                else:
                    pool.release(address)
        self.set_addresses([current[v] for v in sorted(current)])
        return self.address_assign(request_ids)

    @staticmethod
    def route_advertisement(prefixes: Sequence[Network] | None = None) -> RouteAdvertisement:
        """ROUTE_ADVERTISEMENT of what the agent may reach (default: everything)."""
        return RouteAdvertisement(FULL_ROUTES if prefixes is None else routes_for(prefixes))
