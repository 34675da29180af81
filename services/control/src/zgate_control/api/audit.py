"""The audit trail: relays post their records; viewers query, export and verify them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from zgate_control.auth import READ, RELAY, Principal, get_db, require
from zgate_control.db import Database
from zgate_control.metrics import ControlMetrics
from zgate_control.models import utc_now
from zgate_control.pagination import DEFAULT_LIMIT, Limit, Page, decode_cursor, encode_cursor
from zgate_control.problems import PROBLEM_RESPONSES, ProblemError
from zgate_control.services import audit

__all__ = ["MAX_BATCH_BYTES", "MAX_BATCH_RECORDS", "router"]

router = APIRouter(tags=["audit"], responses=PROBLEM_RESPONSES)

DB = Annotated[Database, Depends(get_db)]

MAX_BATCH_RECORDS: Final = 1000
MAX_BATCH_BYTES: Final = 4 * 1024 * 1024


class AuditBatch(BaseModel):
    """Records as the relay wrote them, each with id, chain, seq, prev and hash."""

    records: list[dict[str, Any]] = Field(max_length=MAX_BATCH_RECORDS)


class BrokenOut(BaseModel):
    """A record that does not link (stored, chain_ok false) or could not be stored at all
    (the problem then starts with "not stored:")."""

    seq: int | None
    id: str | None
    problem: str


class IngestOut(BaseModel):
    """What became of a batch. ``last_seq``: the seq of the relay's current chain head."""

    accepted: int
    duplicates: int
    broken: list[BrokenOut]
    last_seq: int


class ChainProblemOut(BaseModel):
    """One problem of a stored chain; ``position`` is the record's place in the chain."""

    position: int
    seq: int | None
    id: str | None
    problem: str


class ChainOut(BaseModel):
    """One stored chain of one relay, verified."""

    relay: str
    chain: str
    records: int
    first_seq: int | None
    last_seq: int | None
    ok: bool
    problems: list[ChainProblemOut]
    omitted: int = Field(0, description="problems found beyond those listed")


class VerifyOut(BaseModel):
    """Every stored chain, verified."""

    relays: list[ChainOut]


async def _screen_batch(request: Request) -> bool:
    """413 for a batch over MAX_BATCH_BYTES (the header first, the body for chunked ones);
    else whether its text may hold values PostgreSQL cannot store (see audit.SUSPECT)."""
    declared = request.headers.get("content-length")
    too_big = declared is not None and declared.isdigit() and int(declared) > MAX_BATCH_BYTES
    body = b"" if too_big else await request.body()
    if too_big or len(body) > MAX_BATCH_BYTES:
        raise ProblemError(
            413,
            f"an audit batch may hold at most {MAX_BATCH_BYTES} bytes; send smaller batches",
            slug="too-large",
            title="Content too large",
        )
    return audit.SUSPECT.search(body) is not None


def _filters(
    client: Annotated[str | None, Query(description="client identity")] = None,
    dst: Annotated[str | None, Query(description="destination IP address or name")] = None,
    verdict: Literal["allow", "deny"] | None = None,
    rule: str | None = None,
    event: Annotated[str | None, Query(description="e.g. flow.deny")] = None,
    relay: str | None = None,
    session: str | None = None,
    since: Annotated[datetime | None, Query(description="from this time (RFC 3339)")] = None,
    until: Annotated[datetime | None, Query(description="before this time (RFC 3339)")] = None,
) -> audit.AuditFilter:
    return audit.AuditFilter(client, dst, verdict, rule, event, relay, session, since, until)


Filters = Annotated[audit.AuditFilter, Depends(_filters)]


@router.post(
    "/relays/{relay_id}/audit",
    response_model=IngestOut,
    responses={413: PROBLEM_RESPONSES[422] | {"description": "The batch is too large"}},
)
def post_records(
    relay_id: Annotated[str, Path(min_length=1, max_length=200)],
    body: AuditBatch,
    request: Request,
    db: DB,
    who: Annotated[Principal, Depends(require(*RELAY))],
    screen: Annotated[bool, Depends(_screen_batch)],
) -> dict[str, Any]:
    """Store a batch of a relay's audit records (idempotent by record id), each checked
    against the relay's hash chain; records that do not link are stored and listed."""
    if not who.may_act_for_relay(relay_id):
        raise ProblemError(
            403, f"this relay token is bound to relay {who.relay_id!r}", slug="forbidden"
        )
    with db.session() as session:
        result = audit.ingest(session, relay_id, body.records, utc_now(), screen=screen)
    metrics: ControlMetrics = request.app.state.metrics
    counted = metrics.audit_records
    counted.labels("stored").inc(result.accepted - result.chain_broken)
    counted.labels("chain_broken").inc(result.chain_broken)
    counted.labels("duplicate").inc(result.duplicates)
    counted.labels("rejected").inc(result.rejected)
    return {
        "accepted": result.accepted,
        "duplicates": result.duplicates,
        "broken": [{"seq": b.seq, "id": b.id, "problem": b.problem} for b in result.broken],
        "last_seq": result.last_seq,
    }


@router.get("/audit", response_model=Page[dict[str, Any]])
def list_records(
    db: DB,
    _: Annotated[Principal, Depends(require(*READ))],
    where: Filters,
    cursor: str | None = None,
    limit: Limit = DEFAULT_LIMIT,
) -> dict[str, Any]:
    """Audit records, newest first; each is the record as shipped plus ``chain_ok``."""
    after = decode_cursor(cursor, 2)
    key: tuple[datetime, str] | None = None
    if after is not None:
        if not isinstance(after[0], datetime) or not isinstance(after[1], str):
            raise ProblemError(400, "invalid cursor: not an audit cursor", slug="invalid-cursor")
        key = (after[0], after[1])
    items, last = audit.page(db, where, key, limit)
    return {"items": items, "next_cursor": encode_cursor(last) if last else None}


@router.get(
    "/audit/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "the matching records, ordered by relay, chain and seq",
            "content": {"application/x-ndjson": {}, "text/csv": {}},
        }
    },
)
def export(
    db: DB,
    _: Annotated[Principal, Depends(require(*READ))],
    where: Filters,
    format: Literal["jsonl", "csv"] = "jsonl",
) -> StreamingResponse:
    """Every matching record, streamed: JSON lines (verifiable with ``zgate audit verify``)
    or CSV with a header."""
    media = "application/x-ndjson" if format == "jsonl" else "text/csv; charset=utf-8"
    stamp = utc_now().strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        audit.export_chunks(db, where, format),
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="zgate-audit-{stamp}.{format}"'},
    )


@router.get("/audit/verify", response_model=VerifyOut)
def verify(
    db: DB,
    _: Annotated[Principal, Depends(require(*READ))],
    relay: str | None = None,
) -> dict[str, Any]:
    """Verify the stored hash chains (of one relay, or all) from the database."""
    return {"relays": audit.verify_chains(db, relay)}
