"""The last flows the policy denied, per client: what `zgate-agent why` shows an agent about
its own traffic (sans-IO).

The enforcer records a denial once per denied flow, when the flow is decided (never per
packet: a denied flow's later packets meet the verdict kept in the flow table). Memory is
bounded twice: ``per_client`` denials per client (a ring: the oldest goes), and
``max_clients`` clients (the one denied longest ago goes), so a flood of denied flows from
many identities cannot grow the relay.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from zgate_policy.flows import FlowKey

__all__ = ["PROTOCOL_NAMES", "Denial", "DenialLog"]

#: How a denial names its IP protocol (others by number).
PROTOCOL_NAMES: Final = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}
_PORTED: Final = frozenset((6, 17, 132))


@dataclass(frozen=True, slots=True)
class Denial:
    """One denied flow: when, where to (``dst`` raw, as in the flow key), which names this
    client's DNS answers bound the destination to, and the deciding rule."""

    ts: datetime
    proto: int
    dst: bytes
    dport: int
    names: frozenset[str]
    rule: str

    def to_json(self) -> dict[str, object]:
        """The denial as `why` answers it (``dport`` null where the protocol has none)."""
        return {
            "ts": self.ts.isoformat(),
            "proto": PROTOCOL_NAMES.get(self.proto, str(self.proto)),
            "dst": str(ipaddress.ip_address(self.dst)),
            "dport": self.dport if self.proto in _PORTED else None,
            "fqdn": min(self.names) if self.names else None,
            "rule": self.rule,
        }


class DenialLog:
    """The last ``per_client`` denials of each of at most ``max_clients`` clients."""

    def __init__(self, *, per_client: int = 32, max_clients: int = 4096) -> None:
        if per_client < 1 or max_clients < 1:
            raise ValueError("per_client and max_clients must be at least 1")
        self.per_client = per_client
        self.max_clients = max_clients
        self._rings: OrderedDict[str, deque[Denial]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rings)

    def record(
        self, client: str, ts: datetime, key: FlowKey, rule: str, names: Collection[str]
    ) -> None:
        """A flow of ``client`` was denied by ``rule``."""
        ring = self._rings.get(client)
        if ring is None:
            if len(self._rings) >= self.max_clients:
                self._rings.popitem(last=False)  # the client denied longest ago
            ring = self._rings[client] = deque(maxlen=self.per_client)
        else:
            self._rings.move_to_end(client)
        ring.append(Denial(ts, key.proto, key.dst, key.dport, frozenset(names), rule))

    def recent(self, client: str) -> Iterator[Denial]:
        """``client``'s denials, newest first."""
        return reversed(self._rings.get(client, ()))
