"""What the identity routers (clients, connectors, tokens) do alike: keyset pages of a table,
loading a row or answering 404, If-Match on a locked row, the ETag header and revoking a
certificate, so that each router keeps only what is its own."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from cryptography import x509
from fastapi import Response
from sqlalchemy import ColumnExpressionArgument, select, tuple_
from sqlalchemy.orm import Session

from zgate_control import ca
from zgate_control.db import Database
from zgate_control.models import Base, Client, Connector, utc_now
from zgate_control.pagination import decode_cursor, encode_cursor
from zgate_control.problems import ProblemError
from zgate_control.services.identities import append_revocation, check_if_match, etag, invalid
from zgate_pki import CertificateBundle, Kind, PkiError

__all__ = [
    "get_tagged",
    "identity_filters",
    "issue",
    "keyset_page",
    "load",
    "load_for_write",
    "refuse_existing",
    "revoke_certificate",
    "tagged",
]

RowT = TypeVar("RowT", bound=Base)
AnswerT = TypeVar("AnswerT")

#: The sort key of the tables listed oldest first: creation time, then id (unique).
CREATED_KEY: tuple[str, ...] = ("created_at", "id")


def keyset_page(
    db: Database,
    model: type[RowT],
    out: Callable[[RowT], dict[str, Any]],
    cursor: str | None,
    limit: int,
    filters: list[ColumnExpressionArgument[bool]] | None = None,
    key: tuple[str, ...] = CREATED_KEY,
) -> dict[str, Any]:
    """One page of `model` rows matching `filters`, ordered by the columns named in `key`,
    as ``{"items", "next_cursor"}`` (one row more is read to know whether a next page exists)."""
    columns = [getattr(model, name) for name in key]
    after = decode_cursor(cursor, len(key))
    query = select(model).order_by(*columns).limit(limit + 1)
    if after is not None:
        query = query.where(tuple_(*columns) > after)
    for clause in filters or ():
        query = query.where(clause)
    with db.reader() as session:
        rows = list(session.scalars(query))
    more = len(rows) > limit
    rows = rows[:limit]
    last = tuple(getattr(rows[-1], name) for name in key) if more else None
    return {
        "items": [out(r) for r in rows],
        "next_cursor": encode_cursor(last) if last is not None else None,
    }


def load(session: Session, model: type[RowT], ident: str, what: str, *, lock: bool = False) -> RowT:
    """The `model` row `ident` (locked FOR UPDATE when `lock`); 404 problem "no `what` ..."."""
    row = session.get(model, ident, with_for_update=lock)
    if row is None:
        raise ProblemError(404, f"no {what} {ident}", slug="not-found")
    return row


def load_for_write(
    session: Session, model: type[RowT], ident: str, what: str, if_match: str | None
) -> RowT:
    """The `model` row `ident`, locked, after checking `if_match` against its row version."""
    row = load(session, model, ident, what, lock=True)
    check_if_match(if_match, row.row_version, f"{what} {ident}")  # type: ignore[attr-defined]
    return row


def refuse_existing(session: Session, model: type[Base], ident: str, what: str) -> None:
    """409 problem when a `model` row `ident` already exists."""
    if session.get(model, ident) is not None:
        raise ProblemError(409, f"{what} {ident} already exists", slug="conflict")


def issue(
    session: Session, kind: Kind, ident: str, *, groups: Sequence[str] = (), days: int
) -> CertificateBundle:
    """A new certificate bundle for `ident`; PKI validation errors become a 422 problem."""
    try:
        return ca.issue_bundle(session, kind, ident, groups=groups, days=days)
    except PkiError as exc:
        raise invalid(exc) from None


def revoke_certificate(session: Session, row: Client | Connector, what: str, reason: str) -> None:
    """Revoke `row`'s certificate (CRL entry, revoked_at, new row version) and append the
    ``revocation`` change; 409 problem when it is already revoked."""
    if row.revoked_at is not None or row.serial is None:
        raise ProblemError(409, f"{what} {row.id} is already revoked", slug="conflict")
    ca.revoke(session, row.serial, x509.ReasonFlags(reason))
    row.revoked_at = utc_now()
    row.row_version += 1
    session.flush()
    append_revocation(session, row.id, "revoke")


def tagged(response: Response, row_version: int, answer: AnswerT) -> AnswerT:
    """`answer`, with the ETag of a row at `row_version` put in `response` (for If-Match on a
    later write)."""
    response.headers["ETag"] = etag(row_version)
    return answer


def get_tagged(
    db: Database,
    response: Response,
    model: type[Client] | type[Connector],
    ident: str,
    what: str,
    out: Callable[[Any], dict[str, Any]],
) -> dict[str, Any]:
    """The `model` row `ident` as `out` shows it, its ETag in `response`; 404 when none."""
    with db.reader() as session:
        row = load(session, model, ident, what)
        return tagged(response, row.row_version, out(row))


def identity_filters(
    model: type[Client] | type[Connector], revoked: bool | None, q: str | None
) -> list[ColumnExpressionArgument[bool]]:
    """The list filters clients and connectors share: revoked or not, and part of the id."""
    filters: list[ColumnExpressionArgument[bool]] = []
    if revoked is not None:
        filters.append(model.revoked_at.is_not(None) if revoked else model.revoked_at.is_(None))
    if q:
        filters.append(model.id.contains(q, autoescape=True))
    return filters
