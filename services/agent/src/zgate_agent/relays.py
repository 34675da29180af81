"""Which relay to try next, when an agent is given several.

Every ``--relay`` HOST:PORT is a target; a name that resolves to several addresses gives
one candidate per address (in the resolver's order, duplicates dropped). The agent uses
one candidate at a time:

- it starts with the first, and stays with whichever it is connected to;
- when an attempt fails or a live tunnel is lost it moves to the next candidate at once,
  until every candidate has failed once since the last tunnel that came up (a "round");
  only then does it wait (its backoff) before the next round, which starts where the
  last one did.

So a relay that dies hands its agents to the next live one within one liveness deadline
plus one handshake, and a single relay that restarts is retried at once. Nothing probes
the relays not in use: the next one is tried when it is needed. Sans-IO: the agent
resolves names and reports what happened.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Candidate", "Rotation", "candidates"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Candidate:
    """One relay address to try: the target as given and, once resolved, one address."""

    host: str
    port: int
    #: None until the name resolves (the attempt resolves it then, and says why it fails).
    address: IPAddress | None = None

    @property
    def target(self) -> str:
        """HOST:PORT as given ([v6]:port for an IPv6 literal)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def where(self) -> str:
        """HOST:PORT, with the address when the host is a name: ``relay.example:4433
        (192.0.2.7)``."""
        if self.address is None or str(self.address) == self.host:
            return self.target
        return f"{self.target} ({self.address})"


def candidates(
    targets: Sequence[tuple[str, int]],
    resolved: Mapping[tuple[str, int], Sequence[IPAddress]],
) -> list[Candidate]:
    """One candidate per (target, address), in the targets' order; a target absent from
    ``resolved`` (or with no address) stays one unresolved candidate."""
    out: list[Candidate] = []
    for host, port in targets:
        addresses = _unique(resolved.get((host, port), ()))
        if not addresses:
            out.append(Candidate(host, port))
        out.extend(Candidate(host, port, a) for a in addresses)
    return list(dict.fromkeys(out))


def _unique(addresses: Iterable[IPAddress]) -> list[IPAddress]:
    return list(dict.fromkeys(addresses))


class Rotation:
    """The candidate in use, and whether to try the next at once or back off first."""

    def __init__(self, initial: Sequence[Candidate]) -> None:
        if not initial:
            raise ValueError("at least one relay is needed")
        self._candidates = list(initial)
        self._index = 0
        #: Candidates that failed since the last tunnel came up or the round began.
        self._failed = 0

    @property
    def candidates(self) -> list[Candidate]:
        return list(self._candidates)

    @property
    def current(self) -> Candidate:
        return self._candidates[self._index]

    @property
    def round_start(self) -> bool:
        """Nothing failed in this round yet (a good time to resolve the names again)."""
        return self._failed == 0

    def replace(self, new: Sequence[Candidate]) -> None:
        """New candidates (names resolved again); the current one stays in use if it is
        still among them, else the first is."""
        if not new:
            return
        current = self.current
        self._candidates = list(new)
        self._index = self._candidates.index(current) if current in self._candidates else 0
        if self._failed >= len(self._candidates):
            self._failed = 0

    def connected(self) -> None:
        """A tunnel came up on the current candidate: a new round starts from it."""
        self._failed = 0

    def failed(self) -> bool:
        """The current candidate failed (or its tunnel was lost): move to the next. True:
        try it at once; False: every candidate failed in this round, back off first."""
        self._failed += 1
        self._index = (self._index + 1) % len(self._candidates)
        if self._failed >= len(self._candidates):
            self._failed = 0
            return False
        return True
