"""The admin audit log: who changed what, when.

Every mutating API call (POST, PUT, PATCH, DELETE) is recorded after it was answered, with its
status, by the middleware `install` adds; a handler names the action and its target with
`describe` (otherwise the method and path stand for them). Relays' own sync calls (heartbeats,
acknowledgements, audit batches) are machine traffic, not administration, and are left out.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, Final

from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from zgate_control.auth import Principal
from zgate_control.db import Database
from zgate_control.models import AdminLogEntry, utc_now

__all__ = ["describe", "install"]

log = logging.getLogger("zgate.control.admin")

_MUTATING: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_RELAY_SYNC: Final = re.compile(r"^/api/v1/relays/[^/]+/(heartbeat|ack|audit)$")


def describe(request: Request, action: str, target: str | None = None, **detail: Any) -> None:
    """Name the action a handler performs (e.g. ``policy.publish``, target ``v3``)."""
    request.state.admin_action = (action, target, detail)


def _write(db: Database, entry: AdminLogEntry) -> None:
    with db.session() as session:
        session.add(entry)


def install(app: FastAPI) -> None:
    """Record every mutating call in the admin log."""

    @app.middleware("http")
    async def _admin_log(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        path = request.url.path
        # Console forms are recorded too once their handler named the action (describe).
        named = hasattr(request.state, "admin_action")
        if (
            request.method not in _MUTATING
            or not (path.startswith("/api/") or named)
            or _RELAY_SYNC.match(path)
        ):
            return response
        principal: Principal | None = getattr(request.state, "principal", None)
        action, target, detail = getattr(
            request.state, "admin_action", (f"{request.method} {path}", None, {})
        )
        entry = AdminLogEntry(
            at=utc_now(),
            actor=principal.name if principal else "anonymous",
            token_id=principal.token_id if principal else None,
            role=principal.role if principal else "none",
            method=request.method,
            path=path[:500],
            action=action[:64],
            target=target[:500] if target else None,
            status=response.status_code,
            detail=detail,
        )
        try:
            await run_in_threadpool(_write, request.app.state.db, entry)
        except Exception:
            log.exception("could not write the admin log entry", extra={"path": path})
        log.info(
            "admin action",
            extra={
                "actor": entry.actor,
                "action": entry.action,
                "target": entry.target,
                "status": entry.status,
            },
        )
        return response
