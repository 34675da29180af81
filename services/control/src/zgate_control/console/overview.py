"""The overview: relays (health, applied change-log position, policy in force, sessions),
totals, and throughput over the last hour, refreshed live by the page's script from
``/console/overview.json``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from zgate_control import changelog
from zgate_control.console.deps import User
from zgate_control.console.render import render
from zgate_control.db import Database
from zgate_control.models import (
    Client,
    Connector,
    PolicyPublication,
    PolicyVersion,
    Relay,
    RelaySample,
    RelaySession,
    utc_now,
)

__all__ = ["router", "snapshot"]

router = APIRouter(prefix="/console", include_in_schema=False)

#: A relay that has not reported for this long is shown as stale.
STALE_AFTER: Final = timedelta(seconds=20)
#: Throughput is drawn in buckets of this many seconds over the last hour.
BUCKET: Final = 60


def _relays(session: Session, head: int) -> list[dict[str, Any]]:
    now = utc_now()
    rows = session.scalars(select(Relay).order_by(Relay.id)).all()
    out = []
    for r in rows:
        age = (now - r.last_heartbeat_at).total_seconds() if r.last_heartbeat_at else None
        out.append(
            {
                "id": r.id,
                "healthy": age is not None and age < STALE_AFTER.total_seconds(),
                "last_heartbeat_s": None if age is None else round(age),
                "applied_seq": r.applied_seq,
                "behind": max(0, head - r.applied_seq),
                "policy_version": r.policy_version,
                "sessions": r.sessions,
                "address": r.address,
            }
        )
    return out


def _throughput(session: Session) -> list[dict[str, Any]]:
    """Bytes per second in and out, per minute of the last hour, over every relay."""
    now = utc_now()
    start = now - timedelta(hours=1)
    buckets = [{"t": i * BUCKET, "in": 0.0, "out": 0.0} for i in range(3600 // BUCKET)]
    for at, moved_in, moved_out in session.execute(
        select(RelaySample.at, RelaySample.bytes_in, RelaySample.bytes_out).where(
            RelaySample.at >= start
        )
    ):
        index = min(len(buckets) - 1, int((at - start).total_seconds()) // BUCKET)
        buckets[index]["in"] += moved_in / BUCKET
        buckets[index]["out"] += moved_out / BUCKET
    return buckets


def snapshot(db: Database) -> dict[str, Any]:
    """Everything the overview shows, as JSON."""
    with db.reader() as session:
        head = changelog.head(session)
        published = session.execute(
            select(PolicyVersion.id, PolicyVersion.digest)
            .join(PolicyPublication, PolicyPublication.version_id == PolicyVersion.id)
            .order_by(PolicyPublication.id.desc())
            .limit(1)
        ).first()
        totals = {
            "clients": session.scalar(
                select(func.count()).select_from(Client).where(Client.revoked_at.is_(None))
            ),
            "connectors": session.scalar(
                select(func.count()).select_from(Connector).where(Connector.revoked_at.is_(None))
            ),
            "sessions": session.scalar(select(func.count()).select_from(RelaySession)),
            "relays": session.scalar(select(func.count()).select_from(Relay)),
        }
        return {
            "head_seq": head,
            "policy": {"id": published[0], "digest": published[1]} if published else None,
            "relays": _relays(session, head),
            "totals": totals,
            "throughput": _throughput(session),
        }


@router.get("/", response_class=HTMLResponse)
async def overview(request: Request, user: User) -> HTMLResponse:
    """The overview page."""
    data = await run_in_threadpool(snapshot, request.app.state.db)
    return render(request, "overview.html", user, data=data)


@router.get("/overview.json")
async def overview_json(request: Request, user: User) -> JSONResponse:
    """What the overview's script refreshes itself from."""
    return JSONResponse(await run_in_threadpool(snapshot, request.app.state.db))
