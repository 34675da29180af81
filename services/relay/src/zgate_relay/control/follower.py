"""Following the control plane's change log: long-poll, apply, cache, acknowledge; on any
failure back off and try again, forever, while the relay keeps enforcing what it has."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from zgate_relay.control.apply import Applier, ApplyFailed
from zgate_relay.control.backoff import Backoff
from zgate_relay.control.cache import save_cache
from zgate_relay.control.client import ControlClient, ControlError, ControlRefused
from zgate_relay.control.metrics import ControlMetrics
from zgate_relay.control.plan import Plan, Step, plan_changes, settle
from zgate_relay.control.state import ControlState, StateFormatError

__all__ = ["Follower"]

log = logging.getLogger("zgate.relay.control")


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Follower:
    """Keeps the relay at the control plane's change-log head.

    ``state`` is what the relay enforces at start (the cache's, or an empty state under
    the built-in deny-all policy); ``cached_at`` says when that cache was saved.
    """

    def __init__(
        self,
        client: ControlClient,
        applier: Applier,
        metrics: ControlMetrics,
        *,
        state: ControlState,
        cache_path: Path,
        cached_at: datetime | None = None,
        wait: float = 25.0,
        backoff: Backoff | None = None,
        auth_retry: float = 30.0,
        failure_retry: float = 10.0,
        idle_snapshot_pause: float = 1.0,
        on_applied: Callable[[], None] = lambda: None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.client = client
        self.applier = applier
        self.metrics = metrics
        self.state = state
        self.cache_path = cache_path
        self.cached_at = cached_at
        self.wait = wait
        self.backoff = backoff or Backoff()
        self.auth_retry = auth_retry
        self.failure_retry = failure_retry
        self.idle_snapshot_pause = idle_snapshot_pause
        #: Whether the relay enforces ``state`` (a usable cache, or anything applied).
        self.in_force = state.seq > 0
        self.on_applied = on_applied
        self.clock = clock
        self.connected = False
        self.reached = False  # since start
        self.head_seq: int | None = None
        self.last_apply: datetime | None = None
        self.last_error: str | None = None
        self._acked: int | None = None
        self._failing = False  # an outage is logged once, not per attempt
        metrics.applied_seq.set(state.seq)
        metrics.using_cache.set(1 if cached_at is not None else 0)

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        """Until cancelled."""
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:  # following must never stop; the relay keeps enforcing
                log.exception("following the control plane failed unexpectedly; retrying")
                await asyncio.sleep(self.backoff.next())

    async def step(self) -> None:
        """One round: acknowledge what is pending, poll, apply (or wait after a failure)."""
        try:
            if self.state.seq and self._acked != self.state.seq:
                await self.client.ack(self.state.seq)
                self._acked = self.state.seq
            response = await self.client.changes(self.state.seq, self.wait)
        except ControlRefused as exc:
            self._unreachable(exc)
            await asyncio.sleep(self.auth_retry if exc.unauthorized else self.backoff.next())
            return
        except ControlError as exc:
            self._unreachable(exc)
            await asyncio.sleep(self.backoff.next())
            return
        self._reachable()
        before = self.state.seq
        try:
            plan = plan_changes(
                self.state, response, in_force=self.in_force, relay=self.client.relay
            )
        except StateFormatError as exc:
            self.metrics.apply_errors["response"].inc()
            log.error("the control plane sent a response that makes no sense: %s", exc)
            await asyncio.sleep(self.backoff.next())
            return
        self.head_seq = plan.head_seq
        if await self.apply(plan):
            # The failed change comes back with the next poll; do not spin on it.
            await asyncio.sleep(self.failure_retry)
        elif plan.snapshot and plan.through == before:
            # A snapshot at the position asked for: the control plane answers position 0
            # (an empty change log) with a snapshot at once instead of holding the poll.
            await asyncio.sleep(self.idle_snapshot_pause)

    async def apply(self, plan: Plan) -> list[Step]:
        """Apply a plan's steps in order; returns those that failed (each logged loudly and
        counted). The new state is cached before it is acknowledged."""
        failed: list[Step] = []
        for step in plan.steps:
            try:
                await self.applier.apply(step)
            except ApplyFailed as exc:
                failed.append(step)
                self.metrics.apply_errors[exc.kind].inc()
                log.error(
                    "CONTROL-PLANE CHANGE NOT APPLIED: the relay keeps enforcing what it had, "
                    "and does not acknowledge this change or anything after it",
                    extra={"seq": step.seq, "kind": exc.kind, "error": str(exc)},
                )
        for seq, kind in plan.ignored:
            log.warning("change of an unknown kind passed over", extra={"seq": seq, "kind": kind})
        new = settle(self.state, plan, failed)
        self.in_force = True  # what failed left the previous value in force
        applied = len(failed) < len(plan.steps)
        if new == self.state and not applied:
            return failed
        self.state = new
        now = self.clock()
        try:
            save_cache(self.cache_path, new, now)
        except OSError as exc:
            log.error(
                "cannot write the control-plane snapshot cache; a restart would start from "
                "an older state",
                extra={"path": str(self.cache_path), "error": exc.strerror or str(exc)},
            )
        self.last_apply = now
        self.metrics.applied_seq.set(new.seq)
        self.metrics.last_apply.set(now.timestamp())
        if applied:
            log.info(
                "control-plane changes applied",
                extra={
                    "seq": new.seq,
                    "kinds": [s.kind for s in plan.steps if s not in failed],
                    "snapshot": plan.snapshot,
                },
            )
        self.on_applied()
        return failed

    # --------------------------------------------------------------- reporting

    def _unreachable(self, exc: ControlError) -> None:
        self.connected = False
        self.metrics.connected.set(0)
        self.last_error = str(exc)
        if isinstance(exc, ControlRefused) and exc.unauthorized:
            # A configuration error, said every time (it comes every auth_retry seconds).
            log.error(
                "the control plane refuses this relay's token: check --control-token "
                "(a relay token for this relay name, not revoked)",
                extra={"relay": self.client.relay, "error": str(exc)},
            )
            return
        if self._failing:
            log.debug("control plane still unreachable", extra={"error": str(exc)})
            return
        self._failing = True
        if self.reached:
            log.warning(
                "control plane unreachable; enforcing the last applied state seq %d",
                self.state.seq,
                extra={"error": str(exc)},
            )
        elif self.cached_at is not None:
            log.warning(
                "control plane unreachable, enforcing cached snapshot seq %d from %s",
                self.state.seq,
                self.cached_at.isoformat(),
                extra={"error": str(exc)},
            )
        else:
            log.error(
                "control plane unreachable and no cached snapshot: enforcing the built-in "
                "deny-all policy until it answers",
                extra={"error": str(exc)},
            )

    def _reachable(self) -> None:
        if not self.connected:
            log.info(
                "control plane reached",
                extra={"url": self.client.url, "since": self.state.seq},
            )
        self.connected = True
        self.reached = True
        self._failing = False
        self.last_error = None
        self.backoff.reset()
        self.metrics.connected.set(1)
        self.metrics.using_cache.set(0)

    def status(self) -> dict[str, Any]:
        """For /status."""
        return {
            "url": self.client.url,
            "relay": self.client.relay,
            "connected": self.connected,
            "applied_seq": self.state.seq,
            "head_seq": self.head_seq,
            "using_cache": self.cached_at is not None and not self.reached,
            "cached_at": self.cached_at.isoformat() if self.cached_at else None,
            "last_apply": self.last_apply.isoformat() if self.last_apply else None,
            "policy_version_id": self.state.policy.version_id if self.state.policy else None,
            "last_error": self.last_error,
        }
