"""Console sign-in state: a browser signs in with an API token once and then carries an
HttpOnly, SameSite=Strict cookie holding a random session id (only its SHA-256 is stored, in
the database, so every control-plane replica knows it). Each session has a CSRF token that
every form carries and every POST must return; the token's role decides what the pages offer,
and the API's role checks stand behind them anyway."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from fastapi import Request
from sqlalchemy import delete

from zgate_control.auth import WRITE, Principal, authenticate
from zgate_control.db import Database
from zgate_control.models import ApiToken, ConsoleSession, utc_now
from zgate_control.problems import ProblemError

__all__ = [
    "COOKIE",
    "LIFETIME",
    "ConsoleUser",
    "SignInRequired",
    "check_csrf",
    "current_user",
    "sign_in",
    "sign_out",
]

COOKIE: Final = "zgate_console"
LIFETIME: Final = timedelta(hours=12)


class SignInRequired(Exception):
    """No valid console session: the page answers with a redirect to the sign-in page."""


@dataclass(frozen=True, slots=True)
class ConsoleUser:
    """Who is looking at the console: the token's name and role, and the session's CSRF."""

    name: str
    role: str
    token_id: str
    csrf: str

    @property
    def can_write(self) -> bool:
        """Whether this role may change policies, clients and connectors."""
        return self.role in WRITE

    def principal(self) -> Principal:
        """The same caller as the API sees it (for the admin log and role checks)."""
        return Principal(self.token_id, self.name, self.role)  # type: ignore[arg-type]


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def sign_in(db: Database, token: str) -> tuple[str, ConsoleUser]:
    """Check an API token (401 problem if it is not valid) and open a session: the cookie
    value (never stored) and the user."""
    principal = authenticate(db, token)
    session_id = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    now = utc_now()
    with db.session() as session:
        session.execute(delete(ConsoleSession).where(ConsoleSession.expires_at < now))
        session.add(
            ConsoleSession(
                id_hash=_hash(session_id),
                token_id=principal.token_id,
                csrf=csrf,
                created_at=now,
                expires_at=now + LIFETIME,
            )
        )
    return session_id, ConsoleUser(principal.name, principal.role, principal.token_id, csrf)


def sign_out(db: Database, session_id: str | None) -> None:
    """End the session (nothing if there is none)."""
    if session_id:
        with db.session() as session:
            session.execute(
                delete(ConsoleSession).where(ConsoleSession.id_hash == _hash(session_id))
            )


def current_user(request: Request) -> ConsoleUser:
    """The signed-in user of `request`; SignInRequired when the cookie is missing, unknown,
    expired, or its token was revoked meanwhile."""
    session_id = request.cookies.get(COOKIE)
    if not session_id:
        raise SignInRequired
    db: Database = request.app.state.db
    with db.reader() as session:
        row = session.get(ConsoleSession, _hash(session_id))
        if row is None or row.expires_at < utc_now():
            raise SignInRequired
        token = session.get(ApiToken, row.token_id)
        if token is None or token.revoked_at is not None:
            raise SignInRequired
        user = ConsoleUser(token.name, token.role, token.id, row.csrf)
    request.state.principal = user.principal()  # for the admin log
    return user


def check_csrf(user: ConsoleUser, sent: str | None) -> None:
    """403 problem unless `sent` is the session's CSRF token."""
    if not sent or not hmac.compare_digest(sent, user.csrf):
        raise ProblemError(
            403, "the form's CSRF token is missing or stale: reload the page", slug="csrf"
        )
