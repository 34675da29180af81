"""Relays: their certificates, what they report (heartbeats, live sessions), the change log
they follow (long poll) and their acknowledgements; the CA and CRL anyone may fetch."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import delete, select, tuple_, update
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from zgate_control import ca, changelog, wakeup
from zgate_control.adminlog import describe
from zgate_control.api.clients import Bundle
from zgate_control.auth import ADMIN, READ, RELAY, WRITE, Principal, get_db, require
from zgate_control.db import Database
from zgate_control.models import (
    Client,
    Connector,
    Relay,
    RelaySample,
    RelaySession,
    as_utc,
    utc_now,
)
from zgate_control.pagination import DEFAULT_LIMIT, Limit, Page, decode_cursor, encode_cursor
from zgate_control.problems import PROBLEM_RESPONSES, ProblemError
from zgate_control.services.identities import (
    MAX_BIGINT,
    IdPath,
    Printable,
    TextQuery,
    bundle_out,
    invalid,
)
from zgate_control.services.relays import relay_for_update
from zgate_control.services.sessions import end_session
from zgate_pki import PkiError

__all__ = ["router"]

router = APIRouter(tags=["relays"], responses=PROBLEM_RESPONSES)

DB = Annotated[Database, Depends(get_db)]
RelayId = IdPath
#: Who may read the CA and CRL: every role (relays fetch them too).
_ANYONE = (*READ, "relay")


def _relay_caller(relay_id: str, who: Principal) -> None:
    if not who.may_act_for_relay(relay_id):
        raise ProblemError(
            403,
            f"this relay token is bound to relay {who.relay_id}, not {relay_id}",
            slug="forbidden",
        )


# -- models ---------------------------------------------------------------------------


class RelayCertificateRequest(BaseModel):
    """The names and addresses agents dial the relay by (its certificate's SANs)."""

    names: list[Printable] = Field(default_factory=list, max_length=100)
    ips: list[Printable] = Field(default_factory=list, max_length=100)
    days: int = Field(825, ge=1, le=3650, description="certificate lifetime")


class RelayCertificate(BaseModel):
    """A relay's new server bundle (the private key is in this answer only)."""

    relay: str
    bundle: Bundle


class SessionReport(BaseModel):
    """One live session as a relay reports it."""

    session: Printable = Field(min_length=1, max_length=64)
    client: Printable = Field(min_length=1, max_length=200)
    kind: Literal["client", "connector"]
    addresses: list[Annotated[Printable, Field(max_length=64)]] = Field(
        default_factory=list, max_length=64
    )
    mode: Printable = Field("", max_length=16)
    since: datetime = Field(description="RFC 3339; a time without a zone is taken as UTC")
    bytes_in: int = Field(0, ge=0, le=MAX_BIGINT)
    bytes_out: int = Field(0, ge=0, le=MAX_BIGINT)


class Heartbeat(BaseModel):
    """What a relay reports every few seconds; its sessions replace the previous list."""

    applied_seq: int = Field(0, ge=0, le=MAX_BIGINT)
    policy_version: Printable | None = Field(None, max_length=64)
    software: Printable = Field("", max_length=64)
    address: Printable | None = Field(None, max_length=200)
    following: bool = True
    sessions: list[SessionReport] = Field(default_factory=list, max_length=100_000)


class HeartbeatAnswer(BaseModel):
    """The relay's id and the newest change (to see it is behind)."""

    relay: str
    head_seq: int


class Ack(BaseModel):
    """The seq a relay applied."""

    seq: int = Field(ge=0, le=MAX_BIGINT)


class SessionOut(BaseModel):
    """A live session, as its relay last reported it."""

    relay: str
    session: str
    client: str
    kind: str
    addresses: list[str]
    mode: str
    since: datetime
    bytes_in: int
    bytes_out: int


class SessionEnding(BaseModel):
    """A session asked to end: the relay applies change `seq` within its next long poll and
    its next heartbeat no longer lists the session."""

    relay: str
    session: str
    client: str
    seq: int = Field(description="the session.end change appended to the change log")


class RelayOut(BaseModel):
    """A relay and what it last reported; `behind` = changes it has not applied."""

    id: str
    registered_at: datetime
    last_heartbeat_at: datetime | None
    applied_seq: int
    behind: int
    policy_version: str | None
    software: str | None
    address: str | None
    sessions: int
    following: bool
    audit_chain: str | None
    audit_seq: int


class RelayDetail(RelayOut):
    """A relay with its live sessions."""

    live_sessions: list[SessionOut]


class CaOut(BaseModel):
    """The CA certificate and a freshly signed CRL."""

    ca_pem: str
    crl_pem: str


class ChangeOut(BaseModel):
    """One change of the log."""

    seq: int
    kind: str
    payload: dict[str, Any]
    created_at: datetime


class PolicyState(BaseModel):
    """The policy in force."""

    version_id: int
    digest: str
    yaml: str


class Snapshot(BaseModel):
    """The whole state at `seq`."""

    seq: int
    policy: PolicyState | None
    crl_pem: str
    blocked: list[str]
    connectors: dict[str, list[str]]
    ca_pem: str


class ChangesAnswer(BaseModel):
    """The changes after `since` (empty when the wait ran out)."""

    type: Literal["changes"]
    changes: list[ChangeOut]
    head_seq: int


class SnapshotAnswer(BaseModel):
    """A full snapshot (the relay was too far behind, ahead, or at 0)."""

    type: Literal["snapshot"]
    snapshot: Snapshot
    head_seq: int


# -- operators' endpoints --------------------------------------------------------------


def _session_out(row: RelaySession) -> dict[str, Any]:
    return {
        "relay": row.relay_id,
        "session": row.session_id,
        "client": row.client,
        "kind": row.kind,
        "addresses": list(row.addresses),
        "mode": row.mode,
        "since": row.since,
        "bytes_in": row.bytes_in,
        "bytes_out": row.bytes_out,
    }


def _relay_out(row: Relay, head: int) -> dict[str, Any]:
    return {
        "id": row.id,
        "registered_at": row.registered_at,
        "last_heartbeat_at": row.last_heartbeat_at,
        "applied_seq": row.applied_seq,
        "behind": max(0, head - row.applied_seq),
        "policy_version": row.policy_version,
        "software": row.software,
        "address": row.address,
        "sessions": row.sessions,
        "following": row.following,
        "audit_chain": row.audit_chain,
        "audit_seq": row.audit_seq,
    }


@router.post("/relays/{relay_id}/certificate", status_code=201, response_model=RelayCertificate)
def relay_certificate(
    relay_id: RelayId,
    body: RelayCertificateRequest,
    request: Request,
    db: DB,
    _: Annotated[Principal, Depends(require(*ADMIN))],
) -> dict[str, Any]:
    """Issue a relay's TLS server certificate for `names` and `ips` (admin only)."""
    if not body.names and not body.ips:
        raise ProblemError(422, "give at least one DNS name or IP address", slug="invalid")
    with db.session() as session:
        try:
            bundle = ca.issue_relay_bundle(session, relay_id, body.names, body.ips, days=body.days)
        except PkiError as exc:
            raise invalid(exc) from None
        describe(request, "relay.certificate", relay_id, names=body.names, ips=body.ips)
        return {"relay": relay_id, "bundle": bundle_out(bundle)}


@router.get("/relays", response_model=Page[RelayOut])
def list_relays(
    db: DB,
    _: Annotated[Principal, Depends(require(*READ))],
    cursor: str | None = None,
    limit: Limit = DEFAULT_LIMIT,
) -> dict[str, Any]:
    """Every relay that ever sent a heartbeat, by id."""
    after = decode_cursor(cursor, 1)
    query = select(Relay).order_by(Relay.id).limit(limit + 1)
    if after is not None:
        query = query.where(Relay.id > str(after[0]))
    with db.reader() as session:
        head = changelog.head(session)
        rows = list(session.scalars(query))
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "items": [_relay_out(r, head) for r in rows],
        "next_cursor": encode_cursor((rows[-1].id,)) if more else None,
    }


@router.get("/relays/{relay_id}", response_model=RelayDetail)
def get_relay(
    relay_id: RelayId,
    db: DB,
    _: Annotated[Principal, Depends(require(*READ))],
) -> dict[str, Any]:
    """One relay with its live sessions."""
    with db.reader() as session:
        row = session.get(Relay, relay_id)
        if row is None:
            raise ProblemError(404, f"no relay {relay_id}", slug="not-found")
        sessions = session.scalars(
            select(RelaySession)
            .where(RelaySession.relay_id == relay_id)
            .order_by(RelaySession.session_id)
        )
        return {
            **_relay_out(row, changelog.head(session)),
            "live_sessions": [_session_out(s) for s in sessions],
        }


@router.get("/sessions", response_model=Page[SessionOut])
def list_sessions(
    db: DB,
    _: Annotated[Principal, Depends(require(*READ))],
    client: TextQuery = None,
    relay: TextQuery = None,
    cursor: str | None = None,
    limit: Limit = DEFAULT_LIMIT,
) -> dict[str, Any]:
    """Live sessions on every relay (as last reported), by relay and session id."""
    after = decode_cursor(cursor, 2)
    query = (
        select(RelaySession)
        .order_by(RelaySession.relay_id, RelaySession.session_id)
        .limit(limit + 1)
    )
    if after is not None:
        query = query.where(tuple_(RelaySession.relay_id, RelaySession.session_id) > after)
    if client:
        query = query.where(RelaySession.client == client)
    if relay:
        query = query.where(RelaySession.relay_id == relay)
    with db.reader() as session:
        rows = list(session.scalars(query))
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "items": [_session_out(r) for r in rows],
        "next_cursor": encode_cursor((rows[-1].relay_id, rows[-1].session_id)) if more else None,
    }


@router.delete("/sessions/{relay_id}/{session_id}", status_code=202, response_model=SessionEnding)
def end_live_session(
    relay_id: RelayId,
    session_id: IdPath,
    request: Request,
    db: DB,
    _: Annotated[Principal, Depends(require(*WRITE))],
) -> dict[str, Any]:
    """End a live session now: appends a ``session.end`` change ({"relay", "session"}) that
    the relay applies; 202 because the session is gone only once the relay has done so (its
    row leaves the list with the relay's next heartbeat). The agent may connect again:
    disable or revoke the client to keep it out. 404 when the relay reports no such session."""
    with db.session() as session:
        seq, client = end_session(session, relay_id, session_id)
        describe(request, "session.end", f"{relay_id}/{session_id}", client=client, seq=seq)
        return {"relay": relay_id, "session": session_id, "client": client, "seq": seq}


@router.get("/ca", response_model=CaOut)
def get_ca(db: DB, _: Annotated[Principal, Depends(require(*_ANYONE))]) -> dict[str, str]:
    """The CA certificate every peer trusts and the current CRL."""
    with db.reader() as session:
        return {"ca_pem": ca.ca_pem(session), "crl_pem": ca.crl_pem(session)}


# -- relays' sync endpoints --------------------------------------------------------------


def _relay_row(session: Session, relay_id: str) -> Relay:
    return relay_for_update(session, relay_id, utc_now())


#: How long the per-heartbeat samples the console draws throughput from are kept.
SAMPLES_KEPT: Final = timedelta(hours=1)


def _moved_since_last_beat(
    session: Session, relay_id: str, reports: Mapping[str, Any]
) -> tuple[int, int]:
    """Bytes the relay's sessions moved since its previous heartbeat (in, out): a session
    seen before counts its growth, a new one all it has."""
    before = {
        s.session_id: (s.bytes_in, s.bytes_out)
        for s in session.scalars(select(RelaySession).where(RelaySession.relay_id == relay_id))
    }
    moved_in = moved_out = 0
    for session_id, report in reports.items():
        old_in, old_out = before.get(session_id, (0, 0))
        moved_in += max(0, report.bytes_in - old_in)
        moved_out += max(0, report.bytes_out - old_out)
    return moved_in, moved_out


def _record_heartbeat(db: Database, relay_id: str, beat: Heartbeat) -> int:
    now = utc_now()
    reports = {s.session: s for s in beat.sessions}  # a repeated id: the last report wins
    with db.session() as session:
        row = _relay_row(session, relay_id)
        row.last_heartbeat_at = now
        row.applied_seq = beat.applied_seq
        row.policy_version = beat.policy_version
        row.software = beat.software
        row.address = beat.address
        row.following = beat.following
        row.sessions = len(reports)
        session.flush()
        moved_in, moved_out = _moved_since_last_beat(session, relay_id, reports)
        session.add(
            RelaySample(
                relay_id=relay_id,
                at=now,
                sessions=len(reports),
                bytes_in=moved_in,
                bytes_out=moved_out,
            )
        )
        session.execute(delete(RelaySample).where(RelaySample.at < now - SAMPLES_KEPT))
        session.execute(delete(RelaySession).where(RelaySession.relay_id == relay_id))
        session.add_all(
            RelaySession(
                relay_id=relay_id,
                session_id=s.session,
                client=s.client,
                kind=s.kind,
                addresses=list(s.addresses),
                mode=s.mode,
                since=as_utc(s.since),
                bytes_in=s.bytes_in,
                bytes_out=s.bytes_out,
            )
            for s in reports.values()
        )
        for table, kind in ((Client, "client"), (Connector, "connector")):
            ids = sorted({s.client for s in reports.values() if s.kind == kind})
            if ids:
                # Lock in id order first: two relays' heartbeats naming the same clients then
                # queue instead of deadlocking (an UPDATE ... IN locks in no set order).
                session.execute(
                    select(table.id).where(table.id.in_(ids)).order_by(table.id).with_for_update()
                )
                session.execute(
                    update(table)
                    .where(table.id.in_(ids))
                    .values(last_seen_at=now, last_relay=relay_id)
                )
        return changelog.head(session)


@router.post("/relays/{relay_id}/heartbeat", response_model=HeartbeatAnswer)
def heartbeat(
    relay_id: RelayId,
    body: Heartbeat,
    db: DB,
    who: Annotated[Principal, Depends(require(*RELAY))],
) -> dict[str, Any]:
    """A relay reports itself (registered on its first call) and its live sessions."""
    _relay_caller(relay_id, who)
    return {"relay": relay_id, "head_seq": _record_heartbeat(db, relay_id, body)}


def _read(db: Database, since: int, snapshot_after: int) -> changelog.Changes:
    with db.reader() as session:
        return changelog.read_since(session, since, snapshot_after)


@router.get("/relays/{relay_id}/changes", response_model=ChangesAnswer | SnapshotAnswer)
async def changes(
    relay_id: RelayId,
    request: Request,
    who: Annotated[Principal, Depends(require(*RELAY))],
    since: Annotated[
        int, Query(ge=0, le=MAX_BIGINT, description="the last seq the relay applied")
    ] = 0,
    wait: Annotated[
        float, Query(ge=0, le=30, description="seconds to wait for a change when none is new")
    ] = 25,
) -> dict[str, Any]:
    """The changes after `since`, a snapshot when `since` cannot be followed, or (after up to
    `wait` seconds without news) an empty list."""
    _relay_caller(relay_id, who)
    state = request.app.state
    db: Database = state.db
    settings = state.settings
    wakeups = wakeup.for_app(state)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    state.metrics.relays_waiting.inc()
    try:
        while True:
            watched = wakeups.watch()  # before reading: a commit meanwhile still wakes us
            answer = await run_in_threadpool(_read, db, since, settings.snapshot_after)
            remaining = deadline - loop.time()
            # Stopping: answer now, so a restart does not wait out every held poll.
            if not answer.empty or remaining <= 0 or getattr(state, "stopping", False):
                return answer.body()
            # Re-check every poll_interval even unwoken: a lost NOTIFY costs at most that.
            await wakeups.wait(watched, min(settings.poll_interval, remaining))
    finally:
        state.metrics.relays_waiting.dec()


def _ack(db: Database, relay_id: str, seq: int) -> None:
    with db.session() as session:
        _relay_row(session, relay_id).applied_seq = seq


@router.post("/relays/{relay_id}/ack", status_code=204)
def ack(
    relay_id: RelayId,
    body: Ack,
    db: DB,
    who: Annotated[Principal, Depends(require(*RELAY))],
) -> Response:
    """The relay applied everything up to `seq`."""
    _relay_caller(relay_id, who)
    _ack(db, relay_id, body.seq)
    return Response(status_code=204)
