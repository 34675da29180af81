"""API tokens and roles.

A token reads ``zgt_<id>_<secret>``: the id finds the row, only the SHA-256 of the secret is
stored, and the secret is compared in constant time. Roles:

- ``admin``: everything, tokens included;
- ``operator``: policies, clients, connectors (write) and every read;
- ``viewer``: reads only;
- ``relay``: the sync endpoints of its relay (changes, ack, heartbeat, audit) only; a relay token
  may be bound to one relay id.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Final, Literal

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from zgate_control.db import Database
from zgate_control.models import ApiToken, utc_now
from zgate_control.problems import ProblemError

__all__ = [
    "ADMIN",
    "READ",
    "RELAY",
    "ROLES",
    "WRITE",
    "Principal",
    "Role",
    "authenticate",
    "create_token",
    "get_db",
    "hash_secret",
    "require",
    "tokens_exist",
]

Role = Literal["admin", "operator", "viewer", "relay"]
ROLES: Final[tuple[Role, ...]] = ("admin", "operator", "viewer", "relay")
READ: Final[tuple[Role, ...]] = ("admin", "operator", "viewer")
WRITE: Final[tuple[Role, ...]] = ("admin", "operator")
ADMIN: Final[tuple[Role, ...]] = ("admin",)
RELAY: Final[tuple[Role, ...]] = ("relay", "admin")

_TOKEN = re.compile(r"zgt_([0-9a-f]{12})_([A-Za-z0-9_-]{20,100})")
#: last_used_at is written at most this often per token (not on every request).
_TOUCH_EVERY: Final = timedelta(seconds=60)

_bearer = HTTPBearer(auto_error=False, description="an API token: zgt_<id>_<secret>")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's id, name and role (and its relay, for relay tokens)."""

    token_id: str
    name: str
    role: Role
    relay_id: str | None = None

    def may_act_for_relay(self, relay_id: str) -> bool:
        """A relay token bound to a relay may only speak for that relay."""
        return self.role == "admin" or self.relay_id in (None, relay_id)


def hash_secret(secret: str) -> str:
    """SHA-256 hex of a token's secret (what the database keeps)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(
    session: Session, name: str, role: Role, created_by: str, relay_id: str | None = None
) -> tuple[ApiToken, str]:
    """Add a token; returns the row and the token text, which is never stored."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: choose one of {', '.join(ROLES)}")
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    row = ApiToken(
        id=token_id,
        name=name,
        role=role,
        secret_hash=hash_secret(secret),
        relay_id=relay_id,
        created_at=utc_now(),
        created_by=created_by,
    )
    session.add(row)
    session.flush()
    return row, f"zgt_{token_id}_{secret}"


def tokens_exist(session: Session) -> bool:
    """Whether any token (revoked or not) was ever created."""
    return bool(session.scalar(select(func.count()).select_from(ApiToken)))


def authenticate(db: Database, token: str) -> Principal:
    """The principal for `token`, or a 401 problem."""
    match = _TOKEN.fullmatch(token.strip())
    refused = ProblemError(
        401,
        "missing, malformed, unknown or revoked API token; send Authorization: Bearer zgt_...",
        slug="unauthenticated",
        headers={"WWW-Authenticate": "Bearer"},
    )
    if match is None:
        raise refused
    token_id, secret = match.groups()
    with db.reader() as session:
        row = session.get(ApiToken, token_id)
        if row is None or row.revoked_at is not None:
            raise refused
        if not hmac.compare_digest(row.secret_hash, hash_secret(secret)):
            raise refused
        principal = Principal(row.id, row.name, row.role, row.relay_id)  # type: ignore[arg-type]
        last_used = row.last_used_at
    now = utc_now()
    if last_used is None or now - last_used > _TOUCH_EVERY:
        with db.session() as session:
            session.execute(
                update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=now)
            )
    return principal


def get_db(request: Request) -> Database:
    """The app's database (a FastAPI dependency)."""
    db: Database = request.app.state.db
    return db


def require(*roles: Role) -> Callable[..., Principal]:
    """A dependency that authenticates the caller and checks its role is one of `roles`."""
    allowed = frozenset(roles)

    def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        if credentials is None:
            raise ProblemError(
                401,
                "this endpoint needs an API token: Authorization: Bearer zgt_...",
                slug="unauthenticated",
                headers={"WWW-Authenticate": "Bearer"},
            )
        principal = authenticate(get_db(request), credentials.credentials)
        request.state.principal = principal
        if principal.role not in allowed:
            raise ProblemError(
                403,
                f"a {principal.role} token may not do this (needs {' or '.join(sorted(allowed))})",
                slug="forbidden",
            )
        return principal

    return dependency
