"""A relay's link to its control plane, put together: the change-log follower, the
heartbeat and the audit shipper over one HTTP client, their tasks and their /status."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from zgate_relay.control.apply import Applier
from zgate_relay.control.boot import Boot
from zgate_relay.control.client import ControlClient
from zgate_relay.control.follower import Follower
from zgate_relay.control.heartbeat import Heartbeat, heartbeat_body
from zgate_relay.control.metrics import ControlMetrics
from zgate_relay.control.shipper import CURSOR_NAME, AuditShipper
from zgate_relay.policy import PolicyManager

__all__ = ["ControlPlane", "software_version"]

log = logging.getLogger("zgate.relay.control")


def software_version() -> str:
    """``zgate-relay <version>``, for the heartbeat."""
    try:
        return f"zgate-relay {version('zgate-relay')}"
    except PackageNotFoundError:  # pragma: no cover - running from a bare source tree
        return "zgate-relay (unknown version)"


class ControlPlane:
    """Everything that talks to the control plane, for one relay."""

    def __init__(
        self,
        *,
        client: ControlClient,
        boot: Boot,
        applier: Applier,
        policies: PolicyManager,
        metrics: ControlMetrics,
        status: Callable[[], dict[str, Any]],
        state_dir: Path,
        audit_log: Path | None,
        address: str | None,
        wait: float = 25.0,
        heartbeat_interval: float = 5.0,
        ship_interval: float = 1.0,
    ) -> None:
        self.client = client
        self.policies = policies
        self.heartbeat = Heartbeat(client, self._heartbeat_body, interval=heartbeat_interval)
        self.follower = Follower(
            client,
            applier,
            metrics,
            state=boot.state,
            cache_path=boot.cache_path,
            cached_at=boot.cached_at,
            wait=wait,
            on_applied=self.heartbeat.poke,
        )
        self._status = status
        self._address = address
        self._software = software_version()
        self.shipper: AuditShipper | None = None
        if audit_log is None:
            log.warning(
                "no audit log (--audit-log off): no audit record is shipped to the control plane"
            )
        else:
            self.shipper = AuditShipper(
                client, audit_log, state_dir / CURSOR_NAME, metrics, interval=ship_interval
            )

    def tasks(self) -> list[Callable[[], Awaitable[None]]]:
        """The loops to run (each until cancelled)."""
        loops: list[Callable[[], Awaitable[None]]] = [self.follower.run, self.heartbeat.run]
        if self.shipper is not None:
            loops.append(self.shipper.run)
        return loops

    async def aclose(self) -> None:
        """Close the HTTP client (after the tasks were cancelled)."""
        await self.client.aclose()

    def _heartbeat_body(self) -> dict[str, Any]:
        current = self.policies.current
        return heartbeat_body(
            self._status(),
            applied_seq=self.follower.state.seq,
            policy_version=current.version if current is not None else None,
            software=self._software,
            address=self._address,
        )

    def status(self) -> dict[str, Any]:
        """The "control" section of /status."""
        out = self.follower.status()
        out["heartbeats"] = self.heartbeat.sent
        out["heartbeat_error"] = self.heartbeat.last_error
        out["audit"] = self.shipper.status() if self.shipper is not None else None
        return out
