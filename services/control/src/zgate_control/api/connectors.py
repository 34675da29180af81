"""Connectors: on-prem sites and the prefixes each may serve.

Every change to the set (create, new prefixes, revoke) appends a ``connectors`` change with
the whole set, so a relay that applies the newest one holds the truth.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from pydantic import BaseModel, Field, field_validator

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
from zgate_control.api.clients import Bundle, IdentStr, IfMatch, RevokeRequest
from zgate_control.auth import READ, WRITE, Principal, get_db, require
from zgate_control.db import Database
from zgate_control.models import Connector, utc_now
from zgate_control.pagination import DEFAULT_LIMIT, Limit, Page
from zgate_control.problems import PROBLEM_RESPONSES, ProblemError
from zgate_control.services.identities import (
    PRINTABLE,
    IdPath,
    Printable,
    append_connectors,
    bundle_out,
)

__all__ = ["router"]

router = APIRouter(tags=["connectors"], responses=PROBLEM_RESPONSES)

DB = Annotated[Database, Depends(get_db)]


def _prefixes(values: list[str]) -> list[str]:
    """CIDR prefixes in canonical text, duplicates dropped; host bits set are an error."""
    out: list[str] = []
    for value in values:
        try:
            network = ipaddress.ip_network(value.strip(), strict=True)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a CIDR prefix ({exc})") from None
        out.append(str(network))
    return list(dict.fromkeys(out))


class ConnectorCreate(BaseModel):
    """A connector to create, with the prefixes it serves."""

    id: IdentStr
    prefixes: list[Printable] = Field(max_length=1024, description='e.g. ["10.20.0.0/24"]')
    days: int = Field(365, ge=1, le=3650, description="certificate lifetime")

    @field_validator("prefixes")
    @classmethod
    def _check(cls, value: list[str]) -> list[str]:
        return _prefixes(value)


class ConnectorPatch(BaseModel):
    """New prefixes (the whole list)."""

    prefixes: list[Printable] = Field(max_length=1024)

    @field_validator("prefixes")
    @classmethod
    def _check(cls, value: list[str]) -> list[str]:
        return _prefixes(value)


class ConnectorOut(BaseModel):
    """A connector as listed."""

    id: str
    prefixes: list[str]
    created_at: datetime
    created_by: str
    serial: str | None
    revoked_at: datetime | None
    last_seen_at: datetime | None
    last_relay: str | None
    row_version: int


class ConnectorCreated(BaseModel):
    """A new connector and its bundle (the private key is in this answer only)."""

    connector: ConnectorOut
    bundle: Bundle


def _out(row: Connector) -> dict[str, Any]:
    return ConnectorOut.model_validate(row, from_attributes=True).model_dump()


@router.post("/connectors", status_code=201, response_model=ConnectorCreated)
def create_connector(
    body: ConnectorCreate,
    request: Request,
    response: Response,
    db: DB,
    who: Annotated[Principal, Depends(require(*WRITE))],
) -> dict[str, Any]:
    """Create a connector and issue its certificate; relays learn its prefixes."""
    with db.session() as session:
        refuse_existing(session, Connector, body.id, "connector")
        bundle = issue(session, "connector", body.id, days=body.days)
        row = Connector(
            id=body.id,
            prefixes=body.prefixes,
            created_at=utc_now(),
            created_by=who.name,
            serial=ca.serial_hex(bundle.serial),
            row_version=1,
        )
        session.add(row)
        append_connectors(session)
        describe(request, "connector.create", body.id, prefixes=body.prefixes)
        return tagged(
            response, row.row_version, {"connector": _out(row), "bundle": bundle_out(bundle)}
        )


@router.get("/connectors", response_model=Page[ConnectorOut])
def list_connectors(
    db: DB,
    _: Annotated[Principal, Depends(require(*READ))],
    revoked: bool | None = None,
    q: Annotated[
        str | None, Query(max_length=200, pattern=PRINTABLE, description="part of the id")
    ] = None,
    cursor: str | None = None,
    limit: Limit = DEFAULT_LIMIT,
) -> dict[str, Any]:
    """Connectors, oldest first."""
    return keyset_page(db, Connector, _out, cursor, limit, identity_filters(Connector, revoked, q))


@router.get("/connectors/{connector_id}", response_model=ConnectorOut)
def get_connector(
    connector_id: IdPath,
    response: Response,
    db: DB,
    _: Annotated[Principal, Depends(require(*READ))],
) -> dict[str, Any]:
    """One connector; its ETag header is for If-Match on PATCH."""
    return get_tagged(db, response, Connector, connector_id, "connector", _out)


@router.patch("/connectors/{connector_id}", response_model=ConnectorOut)
def patch_connector(
    connector_id: IdPath,
    body: ConnectorPatch,
    request: Request,
    response: Response,
    db: DB,
    _: Annotated[Principal, Depends(require(*WRITE))],
    if_match: IfMatch = None,
) -> dict[str, Any]:
    """Replace the prefixes a connector serves."""
    with db.session() as session:
        row = load_for_write(session, Connector, connector_id, "connector", if_match)
        if row.revoked_at is not None:
            raise ProblemError(409, f"connector {connector_id} is revoked", slug="conflict")
        if body.prefixes != row.prefixes:
            row.prefixes = body.prefixes
            row.row_version += 1
            append_connectors(session)
        describe(request, "connector.update", connector_id, prefixes=body.prefixes)
        return tagged(response, row.row_version, _out(row))


@router.post("/connectors/{connector_id}/revoke", response_model=ConnectorOut)
def revoke_connector(
    connector_id: IdPath,
    request: Request,
    response: Response,
    db: DB,
    _: Annotated[Principal, Depends(require(*WRITE))],
    body: Annotated[RevokeRequest | None, Body()] = None,
) -> dict[str, Any]:
    """Revoke a connector: its certificate goes into the CRL and its prefixes are withdrawn."""
    reason = (body or RevokeRequest()).reason
    with db.session() as session:
        row = load(session, Connector, connector_id, "connector", lock=True)
        revoke_certificate(session, row, "connector", reason)
        append_connectors(session)
        describe(request, "connector.revoke", connector_id, serial=row.serial, reason=reason)
        return tagged(response, row.row_version, _out(row))
