"""The relay's address pool: one IPv4 (and optionally one IPv6) address per session."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

__all__ = ["AddressPool", "PoolExhausted"]

IPv4 = ipaddress.IPv4Address
IPv6 = ipaddress.IPv6Address


class PoolExhausted(Exception):
    """No free address is left in the pool."""


@dataclass
class _Family:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    gateway: IPv4 | IPv6
    used: set[IPv4 | IPv6] = field(default_factory=set)
    next_offset: int = 2

    def allocate(self, wanted: IPv4 | IPv6 | None) -> IPv4 | IPv6:
        if wanted is not None and self.usable(wanted) and wanted not in self.used:
            self.used.add(wanted)
            return wanted
        size = self.network.num_addresses
        base = int(self.network.network_address)
        # Scan from where the last allocation ended so freed addresses are not reused at
        # once (a late packet for a gone session must not reach its successor). Bounded:
        # at most one pass, and IPv6 pools are only scanned a small window.
        for _ in range(min(size, 1 << 20)):
            if self.next_offset >= size - (1 if self.network.version == 4 else 0):
                self.next_offset = 1
            candidate = ipaddress.ip_address(base + self.next_offset)
            self.next_offset += 1
            if self.usable(candidate) and candidate not in self.used:
                self.used.add(candidate)
                return candidate
        raise PoolExhausted(f"address pool {self.network} is exhausted")

    def usable(self, address: IPv4 | IPv6) -> bool:
        if address.version != self.network.version or address not in self.network:
            return False
        if address in (self.network.network_address, self.gateway):
            return False
        return not (self.network.version == 4 and address == self.network.broadcast_address)


class AddressPool:
    """Hands out tunnel addresses from an IPv4 pool and an optional IPv6 pool.

    The first host address of each pool is the relay's own (e.g. 10.100.0.1).
    """

    def __init__(
        self,
        ipv4: ipaddress.IPv4Network,
        ipv6: ipaddress.IPv6Network | None = None,
    ) -> None:
        if ipv4.num_addresses < 4:
            raise ValueError(f"IPv4 pool {ipv4} is too small")
        self._v4 = _Family(ipv4, ipv4.network_address + 1)
        self._v6 = _Family(ipv6, ipv6.network_address + 1) if ipv6 is not None else None

    @property
    def gateway4(self) -> IPv4:
        """The relay's IPv4 address inside the pool."""
        assert isinstance(self._v4.gateway, IPv4)
        return self._v4.gateway

    @property
    def gateway6(self) -> IPv6 | None:
        """The relay's IPv6 address inside the pool, if there is an IPv6 pool."""
        if self._v6 is None:
            return None
        assert isinstance(self._v6.gateway, IPv6)
        return self._v6.gateway

    @property
    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """The pool prefixes."""
        return [self._v4.network] + ([self._v6.network] if self._v6 else [])

    def allocate(
        self, wanted4: IPv4 | None = None, wanted6: IPv6 | None = None
    ) -> list[IPv4 | IPv6]:
        """One address per family; a wanted address is honoured when it is free."""
        first = self._v4.allocate(wanted4)
        if self._v6 is None:
            return [first]
        try:
            return [first, self._v6.allocate(wanted6)]
        except PoolExhausted:
            self.release(first)
            raise

    def release(self, address: IPv4 | IPv6) -> None:
        """Give an address back (unknown addresses are ignored)."""
        family = self._v4 if address.version == 4 else self._v6
        if family is not None:
            family.used.discard(address)

    def in_use(self) -> int:
        """How many addresses are handed out, all families together."""
        return len(self._v4.used) + (len(self._v6.used) if self._v6 else 0)
