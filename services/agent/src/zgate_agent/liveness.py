"""When the relay counts as gone: a deadline on an answer to what we sent.

Sans-IO, and WireGuard-like: an answer is expected only when we sent something. The caller
gives, each turn, when the relay was last heard (something authenticated arrived from it)
and since when the link has been *waiting*: the first send after the relay was last heard,
which the relay has neither answered nor acknowledged yet (:meth:`Liveness.observe`; the
link records both). It then asks, with the time, what to do (:meth:`Liveness.check`):
nothing until a given time, send a probe (a QUIC PING, which the relay acknowledges), or
give up.

- Waiting: a probe goes out every ``probe_every`` seconds (a quarter of the deadline by
  default), so that a live relay answers several times per deadline, and the relay is
  given up ``deadline`` seconds after the wait began (not after QUIC's idle timeout).
- Not waiting (an idle link: the relay was heard after our last send): nothing expires and
  only a keepalive probe goes out, every ``keepalive`` seconds (none without one). That
  probe is a send: it starts a wait, and so is held to the deadline. An idle agent thus
  costs the relay one PING per keepalive, not one per ``probe_every``; it notices a dead
  relay at its next send or keepalive, plus the deadline.

``next_at`` still comes back within ``probe_every`` while not waiting, so that the caller
notices a new wait promptly (a local timer only: nothing is sent). With a ``keepalive`` a
probe also goes out at least that often however busy the link (the relay's own deadline on
a connector needs to hear it). ``probe_idle`` restores the behaviour before, for
benchmarks: an idle link counts as waiting since the relay was last heard.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Check", "Liveness"]


@dataclass(frozen=True, slots=True)
class Check:
    """What :meth:`Liveness.check` decided."""

    #: Nothing heard for the whole deadline while waiting for an answer: the relay is gone.
    expired: bool
    #: Send a probe now.
    probe: bool
    #: When to check next (same clock as ``now``).
    next_at: float


class Liveness:
    """A deadline on the relay's silence after we sent something, and when to probe it."""

    def __init__(
        self,
        deadline: float,
        start: float,
        probe_every: float | None = None,
        keepalive: float | None = None,
        *,
        probe_idle: bool = False,
    ) -> None:
        if deadline <= 0:
            raise ValueError("the liveness deadline must be positive")
        self.deadline = deadline
        self.probe_every = probe_every if probe_every is not None else deadline / 4
        self.keepalive = keepalive
        #: The behaviour before (a switch for benchmarks): always waiting since the relay
        #: was last heard, so an idle link is probed every probe_every and expires too.
        self.probe_idle = probe_idle
        #: When the relay was last heard (the start counts as heard: a wait that began
        #: before it runs from the start).
        self.last_heard = start
        #: Since when we have been waiting for an answer (None: not waiting).
        self.waiting_since: float | None = None
        self._last_probe = start

    def observe(self, last_heard: float | None, waiting_since: float | None) -> None:
        """The link's view: when the relay was last heard (None: never) and since when
        something we sent has gone unanswered (None: nothing has)."""
        if last_heard is not None and last_heard > self.last_heard:
            self.last_heard = last_heard
        mine = self.waiting_since
        if waiting_since is None and mine is not None and (last_heard is None or last_heard < mine):
            return  # our own probe, not sent yet when the link was asked: still waiting
        self.waiting_since = waiting_since

    def heard(self, at: float | None) -> None:
        """Something authenticated arrived from the relay at ``at`` (None: nothing yet),
        and it answered everything we sent."""
        self.observe(at, None)

    def silent_for(self, now: float) -> float:
        """Seconds since the relay was last heard."""
        return max(0.0, now - self.last_heard)

    def check(self, now: float) -> Check:
        """What to do at ``now``: give up, probe, or wait until ``next_at``."""
        keepalive = self.keepalive
        keepalive_due = keepalive is not None and now - self._last_probe >= keepalive
        waiting = self.last_heard if self.probe_idle else self.waiting_since
        if waiting is None:
            # Idle: nothing of ours is unanswered. Only the keepalive goes out (it is a
            # send, so a wait starts with it); wake again within probe_every to look.
            if keepalive_due:
                self._last_probe = now
                self.waiting_since = now
                return self._waiting(now, now, probe=True)
            next_at = now + self.probe_every
            if keepalive is not None:
                next_at = min(next_at, self._last_probe + keepalive)
            return Check(expired=False, probe=False, next_at=next_at)
        expires = max(self.last_heard, waiting) + self.deadline
        if now >= expires:
            return Check(expired=True, probe=False, next_at=now)
        probe = keepalive_due or now - max(waiting, self._last_probe) >= self.probe_every
        if probe:
            self._last_probe = now
        return self._waiting(now, waiting, probe=probe)

    def _waiting(self, now: float, waiting: float, *, probe: bool) -> Check:
        """The answer while waiting since ``waiting``: when the next probe or the deadline
        comes."""
        expires = max(self.last_heard, waiting) + self.deadline
        next_at = min(expires, max(waiting, self._last_probe) + self.probe_every)
        if self.keepalive is not None:
            next_at = min(next_at, self._last_probe + self.keepalive)
        return Check(expired=False, probe=probe, next_at=next_at)
