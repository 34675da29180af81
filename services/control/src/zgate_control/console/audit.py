"""The Audit pages: search the records relays shipped (by client, destination, verdict, rule,
event, relay and time), page through them newest first, export what matches with the console's
session, and open one record with the rule that decided it, linked in the policy version that
was in force (records carry the compiled policy's digest; the version is looked up by it)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from zgate_control.console.deps import User
from zgate_control.console.render import render
from zgate_control.db import Database
from zgate_control.models import AuditRecord, PolicyPublication, PolicyVersion, utc_now
from zgate_control.pagination import decode_cursor, encode_cursor
from zgate_control.problems import ProblemError
from zgate_control.services import audit

__all__ = ["FIELDS", "router", "version_for_digest"]

router = APIRouter(prefix="/console", include_in_schema=False)

#: The search form's text fields, in order: (query name, label).
FIELDS: Final = (
    ("client", "Client"),
    ("dst", "Destination (IP or name)"),
    ("rule", "Rule"),
    ("event", "Event"),
    ("relay", "Relay"),
)
#: Records per page.
PAGE: Final = 50
#: Columns of the result table (the detail page shows every field).
_SHOWN: Final = ("ts", "event", "client", "proto", "dst", "dport", "fqdn", "verdict", "rule")


def _time(text: str, name: str, errors: list[str]) -> datetime | None:
    """A datetime-local value (taken as UTC), or None and an error."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        errors.append(f"{name}: not a date and time (YYYY-MM-DDTHH:MM)")
        return None


def _filters(params: dict[str, str]) -> tuple[audit.AuditFilter, dict[str, str], list[str]]:
    """The filter from the query, the non-empty values to carry on, and what was wrong."""
    errors: list[str] = []
    kept = {k: params[k].strip() for k, _ in FIELDS if params.get(k, "").strip()}
    verdict: Literal["allow", "deny"] | None = None
    wanted = params.get("verdict", "")
    if wanted in ("allow", "deny"):
        verdict = "allow" if wanted == "allow" else "deny"
        kept["verdict"] = wanted
    elif wanted:
        errors.append("verdict: allow or deny")
    since = _time(params.get("since", ""), "since", errors)
    until = _time(params.get("until", ""), "until", errors)
    for name, value in (("since", since), ("until", until)):
        if value is not None:
            kept[name] = params[name]
    where = audit.AuditFilter(
        client=kept.get("client"),
        dst=kept.get("dst"),
        verdict=verdict,
        rule=kept.get("rule"),
        event=kept.get("event"),
        relay=kept.get("relay"),
        since=since,
        until=until,
    )
    return where, kept, errors


@router.get("/audit", response_class=HTMLResponse)
def search(request: Request, user: User) -> HTMLResponse:
    """The search form and one page of matching records, newest first."""
    params = dict(request.query_params)
    where, kept, errors = _filters(params)
    key: tuple[datetime, str] | None = None
    cursor = params.get("cursor")
    if cursor:
        after = decode_cursor(cursor, 2)
        if after is None or not isinstance(after[0], datetime) or not isinstance(after[1], str):
            raise ProblemError(400, "invalid cursor: not an audit cursor", slug="invalid-cursor")
        key = (after[0], after[1])
    items, last = audit.page(request.app.state.db, where, key, PAGE) if not errors else ([], None)
    query = urlencode(kept)
    return render(
        request,
        "audit.html",
        user,
        fields=FIELDS,
        kept=kept,
        errors=errors,
        items=items,
        shown=_SHOWN,
        next_url=f"/console/audit?{urlencode({**kept, 'cursor': encode_cursor(last)})}"
        if last
        else None,
        first_url=f"/console/audit?{query}" if cursor else None,
        export_query=query,
    )


@router.get("/audit/export")
def export(
    request: Request, user: User, format: Literal["jsonl", "csv"] = "jsonl"
) -> StreamingResponse:
    """Every matching record, streamed with the console's session (the REST export takes a
    token): JSON lines or CSV, as the API's export."""
    where, _, errors = _filters(dict(request.query_params))
    if errors:
        raise ProblemError(422, "; ".join(errors), slug="invalid")
    media = "application/x-ndjson" if format == "jsonl" else "text/csv; charset=utf-8"
    stamp = utc_now().strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        audit.export_chunks(request.app.state.db, where, format),
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="zgate-audit-{stamp}.{format}"'},
    )


def version_for_digest(session: Session, digest: str) -> int | None:
    """The policy version whose compiled digest is `digest`: of several, the newest that was
    published (that is the one relays ran), else the newest; None when none has it."""
    ids = list(
        session.scalars(
            select(PolicyVersion.id)
            .where(PolicyVersion.digest == digest)
            .order_by(PolicyVersion.id.desc())
        )
    )
    if not ids:
        return None
    published = set(
        session.scalars(
            select(PolicyPublication.version_id).where(PolicyPublication.version_id.in_(ids))
        )
    )
    return next((i for i in ids if i in published), ids[0])


@router.get("/audit/{record_id}", response_class=HTMLResponse)
def record(
    request: Request, user: User, record_id: Annotated[str, Path(max_length=64)]
) -> HTMLResponse:
    """One record: every field, the rule that decided it, linked in the version in force."""
    db: Database = request.app.state.db
    with db.reader() as session:
        row = session.get(AuditRecord, record_id)
        if row is None:
            raise ProblemError(404, f"no audit record {record_id}", slug="not-found")
        version_id = version_for_digest(session, row.policy_version) if row.policy_version else None
        fields: dict[str, Any] = dict(sorted(row.record.items()))
        stored = {"relay": row.relay_id, "chain_ok": row.chain_ok}
        rule, digest = row.rule, row.policy_version
    return render(
        request,
        "audit_record.html",
        user,
        record_id=record_id,
        fields=fields,
        stored=stored,
        rule=rule,
        digest=digest,
        version_id=version_id,
    )
