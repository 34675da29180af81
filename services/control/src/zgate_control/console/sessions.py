"""The Sessions page: every relay's live sessions as last reported (the rows of
``GET /api/v1/sessions``), filtered by part of the client id and by relay, re-read every two
seconds by the page's script; writers may end a session (a ``session.end`` change its relay
applies, then its next heartbeat drops the row) or revoke the client behind it."""

from __future__ import annotations

from typing import Annotated, Any, Final
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import select

from zgate_control.api import relays as relays_api
from zgate_control.console.deps import User, Writer
from zgate_control.console.identities import back, human_bytes, human_time
from zgate_control.console.render import render
from zgate_control.db import Database
from zgate_control.models import Relay, RelaySession
from zgate_control.problems import ProblemError

__all__ = ["live_sessions", "router"]

router = APIRouter(prefix="/console", include_in_schema=False)

#: At most this many sessions are listed (filters narrow it down).
SHOWN: Final = 500


def live_sessions(db: Database, client: str, relay: str) -> dict[str, Any]:
    """The sessions matching the filters (client: part of its id; relay: exact), the relays
    to choose from, and how many matched in all."""
    query = select(RelaySession).order_by(
        RelaySession.client, RelaySession.relay_id, RelaySession.session_id
    )
    if client:
        query = query.where(RelaySession.client.contains(client, autoescape=True))
    if relay:
        query = query.where(RelaySession.relay_id == relay)
    with db.reader() as session:
        rows = list(session.scalars(query.limit(SHOWN + 1)))
        relays = list(session.scalars(select(Relay.id).order_by(Relay.id)))
    return {
        "sessions": [_row(r) for r in rows[:SHOWN]],
        "truncated": len(rows) > SHOWN,
        "relays": relays,
    }


def _row(row: RelaySession) -> dict[str, Any]:
    return {
        "relay": row.relay_id,
        "session": row.session_id,
        "client": row.client,
        "kind": row.kind,
        "addresses": list(row.addresses),
        "mode": row.mode,
        "since": human_time(row.since),
        "since_iso": row.since.isoformat(),
        "bytes_in": human_bytes(row.bytes_in),
        "bytes_out": human_bytes(row.bytes_out),
    }


@router.get("/sessions", response_class=HTMLResponse)
def sessions(request: Request, user: User, client: str = "", relay: str = "") -> HTMLResponse:
    """Live sessions, refreshing themselves."""
    client, relay = client[:200], relay[:200]
    data = live_sessions(request.app.state.db, client, relay)
    chosen = {k: v for k, v in (("client", client), ("relay", relay)) if v}
    return render(
        request,
        "sessions.html",
        user,
        filters={"client": client, "relay": relay},
        back="/console/sessions" + (f"?{urlencode(chosen)}" if chosen else ""),
        done=request.query_params.get("done"),
        error=request.query_params.get("error"),
        **data,
    )


@router.post("/sessions/end")
def end_session(
    request: Request,
    user: Writer,
    relay: Annotated[str, Form()],
    session: Annotated[str, Form()],
    next: Annotated[str, Form()] = "",
) -> RedirectResponse:
    """Ask `relay` to end `session` (as DELETE /api/v1/sessions/{relay}/{session})."""
    try:
        ended = relays_api.end_live_session(
            relay, session, request, request.app.state.db, user.principal()
        )
    except ProblemError as exc:
        return back(next, "/console/sessions", error=exc.detail)
    return back(
        next,
        "/console/sessions",
        done=f"asked {relay} to end {ended['client']}'s session {session}",
    )
