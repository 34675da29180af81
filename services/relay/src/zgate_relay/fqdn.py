"""Which names each client's own DNS answers bound to which addresses (sans-IO, time passed in).

An FQDN policy rule matches a flow only when *this* client resolved the destination address
through the relay's DNS service under a matching name, and that answer has not expired. A
name another client resolved, or one the agent learned elsewhere, grants nothing.
"""

from __future__ import annotations

import heapq
import ipaddress
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["FqdnBindings", "normalize_name"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_EMPTY: frozenset[str] = frozenset()


def normalize_name(name: str) -> str:
    """The form names are stored and matched in: lowercase, without the trailing dot."""
    return name.rstrip(".").lower()


def _packed(address: bytes | IPAddress) -> bytes:
    return address if isinstance(address, bytes) else address.packed


@dataclass(slots=True)
class _Name:
    """One name a client resolved: its addresses, each with its own expiry."""

    addresses: dict[bytes, float] = field(default_factory=dict)
    expires: float = 0.0  # the latest address expiry: the name is gone after it


@dataclass(slots=True)
class _Client:
    # Least recently recorded first: that is the one evicted when the client is at its bound.
    names: OrderedDict[str, _Name] = field(default_factory=OrderedDict)
    # The lookup index: packed address -> {name: expiry}.
    by_address: dict[bytes, dict[str, float]] = field(default_factory=dict)


class FqdnBindings:
    """Per-client bindings of DNS names to the addresses they resolved to, bounded by TTL.

    ``record`` is called by the DNS service before the answer goes back to the agent;
    ``names_for`` is called once per new flow. ``expire`` is cheap to call often: it pops a
    heap of expiry times and does work only for names that are due.
    """

    def __init__(
        self,
        max_names_per_client: int = 4096,
        min_ttl: int = 5,
        max_ttl: int = 3600,
        max_addresses_per_name: int = 64,
    ) -> None:
        if max_names_per_client < 1 or max_addresses_per_name < 1:
            raise ValueError("bounds must be at least 1")
        if not 0 <= min_ttl <= max_ttl:
            raise ValueError("need 0 <= min_ttl <= max_ttl")
        self.max_names_per_client = max_names_per_client
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self.max_addresses_per_name = max_addresses_per_name
        self._clients: dict[str, _Client] = {}
        # (expiry, client, name); an entry whose name has since been re-recorded with a later
        # expiry (or evicted, or forgotten) is stale and skipped when popped.
        self._heap: list[tuple[float, str, str]] = []
        self._live = 0  # names held over all clients

    def __len__(self) -> int:
        """How many (client, name) bindings are held, expired-but-not-yet-swept included."""
        return self._live

    def count_for(self, client: str) -> int:
        """How many names are held for ``client``."""
        entry = self._clients.get(client)
        return 0 if entry is None else len(entry.names)

    def record(
        self,
        client: str,
        name: str,
        addresses: Iterable[bytes | IPAddress],
        ttl: int,
        now: float,
    ) -> None:
        """Bind ``name`` to ``addresses`` for ``client`` until ``now + ttl`` (TTL clamped).

        For a CNAME chain, call it for the queried name and for each canonical name, each
        with the chain's final addresses.
        """
        packed = [_packed(a) for a in addresses]
        if not packed:
            return
        name = normalize_name(name)
        expires = now + min(max(ttl, self.min_ttl), self.max_ttl)
        state = self._clients.get(client)
        if state is None:
            state = self._clients[client] = _Client()
        entry = state.names.get(name)
        if entry is None:
            if len(state.names) >= self.max_names_per_client:
                self._evict_oldest(state)
            entry = state.names[name] = _Name()
            self._live += 1
        else:
            state.names.move_to_end(name)
        for address in packed:
            # Each answer grants its own TTL: a shorter-lived later answer does not cut an
            # earlier one short. Re-inserting keeps the dict least recently recorded first.
            until = max(expires, entry.addresses.pop(address, 0.0))
            entry.addresses[address] = until
            state.by_address.setdefault(address, {})[name] = until
        while len(entry.addresses) > self.max_addresses_per_name:
            oldest = next(iter(entry.addresses))
            del entry.addresses[oldest]
            self._unindex(state, oldest, name)
        if expires > entry.expires:
            entry.expires = expires
            heapq.heappush(self._heap, (expires, client, name))
        self._compact_if_needed()

    def names_for(self, client: str, address: bytes | IPAddress, now: float) -> frozenset[str]:
        """The names ``client``'s unexpired answers bound ``address`` (raw 4/16 bytes) to."""
        state = self._clients.get(client)
        if state is None:
            return _EMPTY
        names = state.by_address.get(_packed(address))
        if not names:
            return _EMPTY
        return frozenset(name for name, expires in names.items() if expires > now)

    def expire(self, now: float, budget: int = 1000) -> int:
        """Drop names whose every answer has expired, at most ``budget`` heap entries a call.

        Returns how many names were dropped. Addresses that expired while their name lives
        on (a newer answer for the name) are already invisible to ``names_for`` and go when
        the name does or when the name's address bound pushes them out.
        """
        heap = self._heap
        dropped = 0
        while heap and budget > 0 and heap[0][0] <= now:
            expires, client, name = heapq.heappop(heap)
            budget -= 1
            state = self._clients.get(client)
            entry = None if state is None else state.names.get(name)
            if state is None or entry is None or entry.expires != expires:
                continue  # stale heap entry
            self._drop_name(state, name, entry)
            dropped += 1
            if not state.names:
                del self._clients[client]
        return dropped

    def forget(self, client: str) -> None:
        """Drop every binding of ``client`` (its session ended)."""
        state = self._clients.pop(client, None)
        if state is not None:
            self._live -= len(state.names)

    # ------------------------------------------------------------------ internals

    def _evict_oldest(self, state: _Client) -> None:
        name, entry = next(iter(state.names.items()))
        self._drop_name(state, name, entry)

    def _drop_name(self, state: _Client, name: str, entry: _Name) -> None:
        del state.names[name]
        self._live -= 1
        for address in entry.addresses:
            self._unindex(state, address, name)

    @staticmethod
    def _unindex(state: _Client, address: bytes, name: str) -> None:
        names = state.by_address.get(address)
        if names is not None:
            names.pop(name, None)
            if not names:
                del state.by_address[address]

    def _compact_if_needed(self) -> None:
        # Every re-record with a later expiry pushes a new heap entry; rebuild from the live
        # names when stale entries outnumber them, so the heap stays O(live names).
        if len(self._heap) <= 2 * self._live + 1024:
            return
        self._heap = [
            (entry.expires, client, name)
            for client, state in self._clients.items()
            for name, entry in state.names.items()
        ]
        heapq.heapify(self._heap)
