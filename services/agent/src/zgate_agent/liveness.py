"""When the relay counts as gone: a liveness deadline on what was last heard from it.

Sans-IO: the caller says when something authenticated arrived from the relay
(:meth:`Liveness.heard`) and asks, with the time, what to do (:meth:`Liveness.check`):
nothing until a given time, send a probe (a QUIC PING, which the relay acknowledges), or
give up. While the link is quiet a probe goes out every ``probe_every`` seconds (a quarter
of the deadline by default), so that a live relay is heard several times per deadline and
a silent one is given up ``deadline`` seconds after it was last heard, not after QUIC's
idle timeout. With a ``keepalive`` a probe also goes out at least that often however busy
the link (the relay's own deadline on a connector needs to hear it).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Check", "Liveness"]


@dataclass(frozen=True, slots=True)
class Check:
    """What :meth:`Liveness.check` decided."""

    #: Nothing heard for the whole deadline: the relay is gone.
    expired: bool
    #: Send a probe now.
    probe: bool
    #: When to check next (same clock as ``now``).
    next_at: float


class Liveness:
    """A deadline on the relay's silence, and when to probe it."""

    def __init__(
        self,
        deadline: float,
        start: float,
        probe_every: float | None = None,
        keepalive: float | None = None,
    ) -> None:
        if deadline <= 0:
            raise ValueError("the liveness deadline must be positive")
        self.deadline = deadline
        self.probe_every = probe_every if probe_every is not None else deadline / 4
        self.keepalive = keepalive
        #: When the relay was last heard (the start counts as heard: the deadline runs
        #: from it for a relay never heard).
        self.last_heard = start
        self._last_probe = start

    def heard(self, at: float | None) -> None:
        """Something authenticated arrived from the relay at ``at`` (None: nothing yet)."""
        if at is not None and at > self.last_heard:
            self.last_heard = at

    def silent_for(self, now: float) -> float:
        """Seconds since the relay was last heard."""
        return max(0.0, now - self.last_heard)

    def check(self, now: float) -> Check:
        """What to do at ``now``: give up, probe, or wait until ``next_at``."""
        expires = self.last_heard + self.deadline
        if now >= expires:
            return Check(expired=True, probe=False, next_at=now)
        quiet_since = max(self.last_heard, self._last_probe)
        keepalive = self.keepalive
        probe = now - quiet_since >= self.probe_every or (
            keepalive is not None and now - self._last_probe >= keepalive
        )
        if probe:
            self._last_probe = quiet_since = now
        next_at = min(expires, quiet_since + self.probe_every)
        if keepalive is not None:
            next_at = min(next_at, self._last_probe + keepalive)
        return Check(expired=False, probe=probe, next_at=next_at)
