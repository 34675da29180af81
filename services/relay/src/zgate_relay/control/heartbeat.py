"""The heartbeat: what the relay runs and its live sessions, for the control plane's
console. :func:`heartbeat_body` builds it (sans-IO) from the core's status;
:class:`Heartbeat` sends it every few seconds, and at once after each apply."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from zgate_relay.control.client import ControlClient, ControlError

__all__ = ["Heartbeat", "heartbeat_body", "session_entry"]

log = logging.getLogger("zgate.relay.control")


def session_entry(session: Mapping[str, Any]) -> dict[str, Any]:
    """One session of the core's status in the heartbeat's form.

    Bytes are counted from the client's side, as the session.close audit record does:
    ``bytes_out`` is what the client sent (the relay received), ``bytes_in`` what it got.
    """
    kind = session.get("kind")
    client = session.get("ident") or str(session.get("client", "")).partition("/")[2]
    return {
        "session": str(session.get("session", "")),
        "client": client,
        "kind": kind if kind in ("client", "connector") else "client",
        "addresses": [str(a) for a in session.get("addresses", [])],
        "mode": str(session.get("mode", "")),
        "since": datetime.fromtimestamp(float(session.get("opened_at", 0.0)), UTC).isoformat(),
        "bytes_in": int(session.get("bytes_out", 0)),
        "bytes_out": int(session.get("bytes_in", 0)),
    }


def heartbeat_body(
    status: Mapping[str, Any],
    *,
    applied_seq: int,
    policy_version: str | None,
    software: str,
    address: str | None,
) -> dict[str, Any]:
    """The POST .../heartbeat body (``following`` is always true: only a following relay
    sends one)."""
    sessions = status.get("sessions") or []
    return {
        "applied_seq": applied_seq,
        "policy_version": policy_version,
        "software": software,
        "address": address,
        "following": True,
        "sessions": [session_entry(s) for s in sessions],
    }


class Heartbeat:
    """Sends a heartbeat every ``interval`` seconds, or sooner when :meth:`poke` is called."""

    def __init__(
        self,
        client: ControlClient,
        body: Callable[[], dict[str, Any]],
        *,
        interval: float = 5.0,
    ) -> None:
        self.client = client
        self.body = body
        self.interval = interval
        self.head_seq: int | None = None
        self.sent = 0
        self.last_error: str | None = None
        self._wake = asyncio.Event()

    def poke(self) -> None:
        """Send the next heartbeat now (something changed)."""
        self._wake.set()

    async def run(self) -> None:
        """Until cancelled."""
        while True:
            await self.beat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()

    async def beat(self) -> bool:
        """Send one heartbeat; False (logged once per outage) if it failed."""
        try:
            answer = await self.client.heartbeat(self.body())
        except ControlError as exc:
            if self.last_error is None:
                log.warning("heartbeat failed; will keep trying", extra={"error": str(exc)})
            self.last_error = str(exc)
            return False
        self.last_error = None
        self.sent += 1
        if isinstance(answer, Mapping) and isinstance(answer.get("head_seq"), int):
            self.head_seq = answer["head_seq"]
        return True
