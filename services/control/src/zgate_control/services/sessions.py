"""Ending a live session: the control plane cannot reach into a relay, so it appends a
``session.end`` change naming the relay and the session; that relay ends the session when it
applies the change and its next heartbeat (sent right after) drops the row."""

from __future__ import annotations

from sqlalchemy.orm import Session

from zgate_control import changelog
from zgate_control.models import RelaySession
from zgate_control.problems import ProblemError

__all__ = ["end_session"]


def end_session(session: Session, relay_id: str, session_id: str) -> tuple[int, str]:
    """Append ``session.end`` for a session `relay_id` reports live; returns (seq, client).

    404 problem when the relay does not report that session (any more): a typo or a session
    already gone should say so rather than append a change that does nothing.
    """
    row = session.get(RelaySession, (relay_id, session_id))
    if row is None:
        raise ProblemError(
            404,
            f"relay {relay_id} reports no live session {session_id} "
            "(it may have ended already: GET /api/v1/sessions)",
            slug="not-found",
        )
    seq = changelog.append(session, "session.end", {"relay": relay_id, "session": session_id})
    return seq, row.client
