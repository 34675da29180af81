"""Clients: device identities with their certificates.

A client's groups are the ones put in its certificate at issue time (one OU per group); the
relay reads them from the certificate, so they change only with a new certificate
(``POST /clients/{id}/certificate`` after a revoke). The policy can still assign groups of its
own by client id. Disabling is reversible (the serial is "blocked" in the change log, not put
in the CRL); revoking is not.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Header, Query, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import TextClause, text

from zgate_control import ca
from zgate_control.adminlog import describe
from zgate_control.api._common import (
    get_tagged,
    identity_filters,
    issue,
    keyset_page,
    load,
    load_for_write,
    refuse_existing,
    revoke_certificate,
    tagged,
)
from zgate_control.auth import READ, WRITE, Principal, get_db, require
from zgate_control.db import Database
from zgate_control.models import Client, utc_now
from zgate_control.pagination import DEFAULT_LIMIT, Limit, Page
from zgate_control.problems import PROBLEM_RESPONSES, ProblemError
from zgate_control.services.identities import (
    PRINTABLE,
    IdPath,
    Printable,
    TextQuery,
    append_revocation,
    bundle_out,
)

__all__ = ["Bundle", "IdentStr", "IfMatch", "RevokeRequest", "group_filter", "router"]

router = APIRouter(tags=["clients"], responses=PROBLEM_RESPONSES)

DB = Annotated[Database, Depends(get_db)]
IfMatch = Annotated[
    str | None, Header(description="the ETag from GET; 412 if the object changed since")
]
#: A client or connector id (what zgate_pki accepts; it becomes a URI path segment).
IdentStr = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]


class Bundle(BaseModel):
    """A new certificate with its private key and the CA: shown once, never stored."""

    serial: str
    not_after: datetime
    cert_pem: str
    key_pem: str
    ca_pem: str


class ClientCreate(BaseModel):
    """A client to create; its certificate carries `groups`."""

    id: IdentStr
    groups: list[Printable] = Field(default_factory=list, max_length=64)
    days: int = Field(365, ge=1, le=3650, description="certificate lifetime")


class ClientOut(BaseModel):
    """A client as listed."""

    id: str
    groups: list[str]
    created_at: datetime
    created_by: str
    disabled: bool
    revoked_at: datetime | None
    serial: str | None
    last_seen_at: datetime | None
    last_relay: str | None
    row_version: int


class ClientCreated(BaseModel):
    """A new client and its bundle (the private key is in this answer only)."""

    client: ClientOut
    bundle: Bundle


class ClientPatch(BaseModel):
    """Fields to change. `groups` may only repeat the current ones: they live in the
    certificate (revoke and re-issue to change them)."""

    disabled: bool | None = None
    groups: list[Printable] | None = None


ReasonName = Literal[
    "unspecified", "keyCompromise", "affiliationChanged", "superseded", "cessationOfOperation"
]


class RevokeRequest(BaseModel):
    """Why a certificate is revoked (RFC 5280 reason code name)."""

    reason: ReasonName = "unspecified"


class Reissue(BaseModel):
    """A new certificate for a revoked client (groups: the current ones if omitted)."""

    groups: list[Printable] | None = None
    days: int = Field(365, ge=1, le=3650)


def _out(row: Client) -> dict[str, Any]:
    return ClientOut.model_validate(row, from_attributes=True).model_dump()


def group_filter(dialect: str, table: str, group: str) -> TextClause:
    """`table`.groups (a JSON list) contains `group`, on SQLite or PostgreSQL."""
    if dialect == "postgresql":
        clause = text(f"{table}.groups @> jsonb_build_array(CAST(:group AS text))")
    else:
        clause = text(f"EXISTS (SELECT 1 FROM json_each({table}.groups) WHERE value = :group)")
    return clause.bindparams(group=group)


@router.post("/clients", status_code=201, response_model=ClientCreated)
def create_client(
    body: ClientCreate,
    request: Request,
    response: Response,
    db: DB,
    who: Annotated[Principal, Depends(require(*WRITE))],
) -> dict[str, Any]:
    """Create a client and issue its certificate; the bundle is in this answer only."""
    with db.session() as session:
        refuse_existing(session, Client, body.id, "client")
        bundle = issue(session, "client", body.id, groups=body.groups, days=body.days)
        row = Client(
            id=body.id,
            groups=list(bundle.groups),
            created_at=utc_now(),
            created_by=who.name,
            disabled=False,
            serial=ca.serial_hex(bundle.serial),
            row_version=1,
        )
        session.add(row)
        session.flush()
        describe(request, "client.create", body.id, groups=list(bundle.groups))
        return tagged(
            response, row.row_version, {"client": _out(row), "bundle": bundle_out(bundle)}
        )


@router.get("/clients", response_model=Page[ClientOut])
def list_clients(
    db: DB,
    _: Annotated[Principal, Depends(require(*READ))],
    group: TextQuery = None,
    disabled: bool | None = None,
    revoked: bool | None = None,
    q: Annotated[
        str | None, Query(max_length=200, pattern=PRINTABLE, description="part of the id")
    ] = None,
    cursor: str | None = None,
    limit: Limit = DEFAULT_LIMIT,
) -> dict[str, Any]:
    """Clients, oldest first, filtered by group, state or part of the id."""
    filters = identity_filters(Client, revoked, q)
    if group:
        filters.append(group_filter(db.dialect, "clients", group))
    if disabled is not None:
        filters.append(Client.disabled.is_(disabled))
    return keyset_page(db, Client, _out, cursor, limit, filters)


@router.get("/clients/{client_id}", response_model=ClientOut)
def get_client(
    client_id: IdPath,
    response: Response,
    db: DB,
    _: Annotated[Principal, Depends(require(*READ))],
) -> dict[str, Any]:
    """One client; its ETag header is for If-Match on PATCH."""
    return get_tagged(db, response, Client, client_id, "client", _out)


@router.patch("/clients/{client_id}", response_model=ClientOut)
def patch_client(
    client_id: IdPath,
    body: ClientPatch,
    request: Request,
    response: Response,
    db: DB,
    _: Annotated[Principal, Depends(require(*WRITE))],
    if_match: IfMatch = None,
) -> dict[str, Any]:
    """Disable or enable a client (reversible; relays refuse a disabled client's serial)."""
    with db.session() as session:
        row = load_for_write(session, Client, client_id, "client", if_match)
        if body.groups is not None and list(dict.fromkeys(body.groups)) != row.groups:
            raise ProblemError(
                409,
                f"client {client_id}'s groups are in its certificate and cannot change in "
                f"place: revoke it (POST /clients/{client_id}/revoke) and issue a new one "
                f"(POST /clients/{client_id}/certificate with the groups)",
                slug="groups-in-certificate",
            )
        if body.disabled is not None and body.disabled != row.disabled:
            if row.revoked_at is not None:
                raise ProblemError(
                    409,
                    f"client {client_id} is revoked; disabling changes nothing",
                    slug="conflict",
                )
            row.disabled = body.disabled
            row.row_version += 1
            session.flush()
            action: Literal["disable", "enable"] = "disable" if body.disabled else "enable"
            append_revocation(session, client_id, action)
            describe(request, f"client.{action}", client_id)
        else:
            describe(request, "client.update", client_id)
        return tagged(response, row.row_version, _out(row))


@router.post("/clients/{client_id}/revoke", response_model=ClientOut)
def revoke_client(
    client_id: IdPath,
    request: Request,
    response: Response,
    db: DB,
    _: Annotated[Principal, Depends(require(*WRITE))],
    body: Annotated[RevokeRequest | None, Body()] = None,
) -> dict[str, Any]:
    """Revoke the client's certificate: it goes into the CRL and relays end its sessions."""
    reason = (body or RevokeRequest()).reason
    with db.session() as session:
        row = load(session, Client, client_id, "client", lock=True)
        revoke_certificate(session, row, "client", reason)
        describe(request, "client.revoke", client_id, serial=row.serial, reason=reason)
        return tagged(response, row.row_version, _out(row))


@router.post("/clients/{client_id}/certificate", status_code=201, response_model=ClientCreated)
def reissue_client(
    client_id: IdPath,
    body: Reissue,
    request: Request,
    response: Response,
    db: DB,
    _: Annotated[Principal, Depends(require(*WRITE))],
    if_match: IfMatch = None,
) -> dict[str, Any]:
    """Issue a new certificate for a revoked client (optionally with new groups)."""
    with db.session() as session:
        row = load_for_write(session, Client, client_id, "client", if_match)
        if row.revoked_at is None:
            raise ProblemError(
                409,
                f"client {client_id} holds a valid certificate; revoke it first",
                slug="conflict",
            )
        groups = row.groups if body.groups is None else body.groups
        bundle = issue(session, "client", client_id, groups=groups, days=body.days)
        row.groups = list(bundle.groups)
        row.serial = ca.serial_hex(bundle.serial)
        row.revoked_at = None
        row.row_version += 1
        session.flush()
        if row.disabled:  # the new serial must be blocked too
            append_revocation(session, client_id, "disable")
        describe(request, "client.reissue", client_id, serial=row.serial, groups=row.groups)
        return tagged(
            response, row.row_version, {"client": _out(row), "bundle": bundle_out(bundle)}
        )
