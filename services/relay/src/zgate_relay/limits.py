"""How many sessions the relay admits (sans-IO): in all, and per client identity.

The relay keeps about 100 kB per session (docs/relay.md, "Session limits and capacity"),
so an unbounded number of sessions is an unbounded amount of memory; and one client
certificate opening session after session (a copied certificate, a reconnect loop) must
not take the room every other client needs. A request past a limit is refused with a
status the agent can tell apart:

- 503 (Service Unavailable, RFC 9110 §15.6.4): the relay is full, for everyone;
- 429 (Too Many Requests, RFC 6585 §4): this identity holds its share already.

Connectors are never refused by these limits (they count toward the live total): a site
must come back when agents have filled the relay, and a site's replicas share one id.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Final

from zgate_pki import Identity

__all__ = [
    "CLIENT_LIMIT",
    "CLIENT_LIMIT_STATUS",
    "RELAY_FULL",
    "RELAY_FULL_STATUS",
    "Admission",
    "Refusal",
    "SessionLimits",
]

#: Refusal reasons (metric labels) and the status that answers each.
RELAY_FULL: Final = "relay_full"
CLIENT_LIMIT: Final = "client_limit"
RELAY_FULL_STATUS: Final = 503
CLIENT_LIMIT_STATUS: Final = 429


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """The relay's bounds on sessions; 0 means no bound (for measurements)."""

    #: Live sessions on the whole relay.
    max_sessions: int = 0
    #: Live sessions of one client identity (kind and id of its certificate).
    max_sessions_per_client: int = 0
    #: Seconds an authenticated connection may hold no session before it is closed.
    bare_connection_timeout: float = 0.0


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a session request is refused, and the status to answer it with."""

    reason: str
    status: int
    detail: str


class Admission:
    """Counts live sessions, in all and per identity, and says whether one more fits."""

    def __init__(self, limits: SessionLimits) -> None:
        self.limits = limits
        self.live = 0
        self._per_identity: Counter[tuple[str, str]] = Counter()

    def held_by(self, identity: Identity) -> int:
        """Live sessions of ``identity``."""
        return self._per_identity[(identity.kind, identity.ident)]

    def check(self, identity: Identity) -> Refusal | None:
        """None if one more session of ``identity`` fits, else why not."""
        if identity.kind == "connector":
            return None
        limits = self.limits
        if limits.max_sessions and self.live >= limits.max_sessions:
            return Refusal(
                RELAY_FULL,
                RELAY_FULL_STATUS,
                f"the relay holds {self.live} sessions, its limit (--max-sessions)",
            )
        held = self.held_by(identity)
        if limits.max_sessions_per_client and held >= limits.max_sessions_per_client:
            return Refusal(
                CLIENT_LIMIT,
                CLIENT_LIMIT_STATUS,
                f"{identity.kind} {identity.ident} holds {held} sessions, the limit per "
                f"client (--max-sessions-per-client)",
            )
        return None

    def opened(self, identity: Identity) -> None:
        """A session of ``identity`` was admitted."""
        self.live += 1
        self._per_identity[(identity.kind, identity.ident)] += 1

    def closed(self, identity: Identity) -> None:
        """A session of ``identity`` ended."""
        key = (identity.kind, identity.ident)
        self.live = max(0, self.live - 1)
        left = self._per_identity[key] - 1
        if left > 0:
            self._per_identity[key] = left
        else:
            del self._per_identity[key]  # no entry per identity that ever connected
