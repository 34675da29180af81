"""Admin resources: API tokens (admin only) and the admin audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import select

from zgate_control.adminlog import describe
from zgate_control.api._common import keyset_page
from zgate_control.auth import ADMIN, READ, Principal, Role, create_token, get_db, require
from zgate_control.db import Database
from zgate_control.models import AdminLogEntry, ApiToken, as_utc, utc_now
from zgate_control.pagination import DEFAULT_LIMIT, Limit, Page, decode_cursor, encode_cursor
from zgate_control.problems import PROBLEM_RESPONSES, ProblemError

__all__ = ["router"]

router = APIRouter(tags=["admin"], responses=PROBLEM_RESPONSES)

DB = Annotated[Database, Depends(get_db)]


class TokenCreate(BaseModel):
    """A token to create."""

    name: str = Field(min_length=1, max_length=200, description="who or what holds it")
    role: Role
    relay_id: str | None = Field(
        None, max_length=200, description="relay tokens only: the one relay it may speak for"
    )


class TokenOut(BaseModel):
    """A token as listed (never its secret)."""

    id: str
    name: str
    role: str
    relay_id: str | None
    created_at: datetime
    created_by: str
    last_used_at: datetime | None
    revoked_at: datetime | None


class TokenCreated(TokenOut):
    """A new token: ``token`` is shown this once and cannot be recovered."""

    token: str


class AdminLogOut(BaseModel):
    """One admin action."""

    id: int
    at: datetime
    actor: str
    token_id: str | None
    role: str
    method: str
    path: str
    action: str
    target: str | None
    status: int
    detail: dict[str, Any]


def _token_out(row: ApiToken) -> dict[str, Any]:
    return TokenOut.model_validate(row, from_attributes=True).model_dump()


@router.post("/tokens", status_code=201, response_model=TokenCreated)
def create(
    body: TokenCreate,
    request: Request,
    db: DB,
    who: Annotated[Principal, Depends(require(*ADMIN))],
) -> dict[str, Any]:
    """Create a token; its text is in the answer only."""
    if body.relay_id is not None and body.role != "relay":
        raise ProblemError(422, "relay_id is for relay tokens only", slug="invalid")
    with db.session() as session:
        row, text = create_token(session, body.name, body.role, who.name, body.relay_id)
        describe(request, "token.create", row.id, role=body.role, name=body.name)
        return {**_token_out(row), "token": text}


@router.get("/tokens", response_model=Page[TokenOut])
def list_tokens(
    db: DB,
    _: Annotated[Principal, Depends(require(*ADMIN))],
    cursor: str | None = None,
    limit: Limit = DEFAULT_LIMIT,
) -> dict[str, Any]:
    """Every token, oldest first."""
    return keyset_page(db, ApiToken, _token_out, cursor, limit)


@router.delete("/tokens/{token_id}", status_code=204)
def revoke(
    token_id: str,
    request: Request,
    db: DB,
    who: Annotated[Principal, Depends(require(*ADMIN))],
) -> Response:
    """Revoke a token at once (it stays listed, revoked)."""
    with db.session() as session:
        row = session.get(ApiToken, token_id)
        if row is None:
            raise ProblemError(404, f"no token {token_id}", slug="not-found")
        if row.id == who.token_id:
            raise ProblemError(
                409, "a token cannot revoke itself; use another admin token", slug="conflict"
            )
        if row.revoked_at is None:
            row.revoked_at = utc_now()
        describe(request, "token.revoke", token_id)
    return Response(status_code=204)


@router.get("/admin-log", response_model=Page[AdminLogOut])
def admin_log(
    db: DB,
    _: Annotated[Principal, Depends(require(*READ))],
    actor: str | None = None,
    action: str | None = None,
    since: Annotated[datetime | None, Query(description="from this time (RFC 3339)")] = None,
    until: Annotated[datetime | None, Query(description="before this time (RFC 3339)")] = None,
    cursor: str | None = None,
    limit: Limit = DEFAULT_LIMIT,
) -> dict[str, Any]:
    """Who changed what, newest first."""
    after = decode_cursor(cursor, 1)
    query = select(AdminLogEntry).order_by(AdminLogEntry.id.desc()).limit(limit + 1)
    if after is not None:
        query = query.where(AdminLogEntry.id < int(after[0]))
    if actor:
        query = query.where(AdminLogEntry.actor == actor)
    if action:
        query = query.where(AdminLogEntry.action == action)
    if since is not None:
        query = query.where(AdminLogEntry.at >= as_utc(since))
    if until is not None:
        query = query.where(AdminLogEntry.at < as_utc(until))
    with db.reader() as session:
        rows = list(session.scalars(query))
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "items": [AdminLogOut.model_validate(r, from_attributes=True) for r in rows],
        "next_cursor": encode_cursor((rows[-1].id,)) if more else None,
    }
