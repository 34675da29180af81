"""Policies: versions (immutable, with history), the one in force, diffs, explain and impact."""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, Header, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, Field, model_validator
from sqlalchemy import select

from zgate_control.adminlog import describe
from zgate_control.auth import READ, WRITE, Principal, get_db, require
from zgate_control.db import Database
from zgate_control.models import Client, PolicyPublication, PolicyVersion, as_utc, utc_now
from zgate_control.pagination import DEFAULT_LIMIT, Limit, Page, decode_cursor, encode_cursor
from zgate_control.problems import PROBLEM_RESPONSES, ProblemError
from zgate_control.services import impact as replay
from zgate_control.services import policies as service
from zgate_policy import TestTarget, target_flow

__all__ = ["router"]

router = APIRouter(tags=["policies"], responses=PROBLEM_RESPONSES)

DB = Annotated[Database, Depends(get_db)]
Reader = Annotated[Principal, Depends(require(*READ))]
Writer = Annotated[Principal, Depends(require(*WRITE))]
IfMatch = Annotated[
    str | None,
    Header(description='the ETag of GET /policies/published ("pub-N"); 412 when stale'),
]

#: The impact window when none is given.
DEFAULT_WINDOW: Final = timedelta(days=7)
#: Version numbers are 32-bit on both databases: larger ones cannot exist (and must not reach
#: PostgreSQL, which would refuse them as out of range).
_MAX_ID: Final = 2**31 - 1
VersionId = Annotated[int, Path(ge=1, le=_MAX_ID, description="the version number (v<N>)")]


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL: refuse it here rather than fail in the database.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


Text = Annotated[str, AfterValidator(_no_nul)]


class PolicyIn(BaseModel):
    """A policy to store as a new version."""

    yaml: str = Field(description="the policy document (YAML, at most 1 MiB)")
    comment: Text = Field("", max_length=2000, description="why this version")


class TestOut(BaseModel):
    """One inline test's result."""

    name: str
    passed: bool
    description: str


class PolicyVersionOut(BaseModel):
    """A stored policy version (``v<id>``)."""

    id: int
    digest: str = Field(description="zgate_policy's version of the compiled policy")
    author: str
    comment: str
    created_at: datetime
    rules: int = Field(description="number of rules")
    published: bool = Field(False, description="whether this version is the one in force")


class PolicyVersionCreated(PolicyVersionOut):
    """A version as created (or found, when the same YAML was submitted again)."""

    tests: list[TestOut]


class PolicyVersionDetail(PolicyVersionOut):
    """A version with its YAML."""

    yaml: str


class PublicationOut(BaseModel):
    """One publish or rollback."""

    id: int
    version_id: int
    kind: str
    published_at: datetime
    published_by: str


class PublishedOut(BaseModel):
    """The policy in force and the publication that put it there."""

    publication: PublicationOut
    version: PolicyVersionDetail


class PublishOut(PublishedOut):
    """The outcome of a publish or rollback (``changed`` false: it was already in force)."""

    changed: bool
    seq: int | None = Field(None, description="the change log entry relays will apply")


class RuleChanges(BaseModel):
    """Rule ids compared between two versions."""

    added: list[str]
    removed: list[str]
    changed: list[str]
    moved: list[str]


class DefaultChange(BaseModel):
    """The default verdict of both versions."""

    from_: str = Field(alias="from")
    to: str


class DiffOut(BaseModel):
    """What changed from one version to another."""

    from_: int = Field(alias="from")
    to: int
    unified: str
    rules: RuleChanges
    default: DefaultChange


class ExplainIn(BaseModel):
    """A flow to explain."""

    client: Text = Field(min_length=1, max_length=200)
    groups: list[str] | None = Field(
        None, description="certificate groups; default: the client's in the clients table"
    )
    target: str = Field(description="tcp://host:port, udp://host:port or icmp://host")
    fqdn: str | None = Field(None, description="a name the target IP was resolved from")
    country: str | None = Field(None, description="the destination's GeoIP country")


class ExplainOut(BaseModel):
    """The decision and, rule by rule, why."""

    verdict: str
    rule: str
    policy_version: int
    digest: str
    explanation: list[str]
    groups_used: list[str]
    note: str | None = None


class ImpactIn(BaseModel):
    """A candidate (a stored version or YAML) to replay the recorded flows against."""

    version_id: int | None = Field(None, ge=1, le=_MAX_ID)
    yaml: str | None = None
    since: datetime | None = Field(None, description="default: `until` minus 7 days")
    until: datetime | None = Field(None, description="default: now")
    client: Text | None = Field(None, max_length=200, description="only this client's flows")
    limit: int = Field(200, ge=1, le=10_000, description="most changes listed")

    @model_validator(mode="after")
    def _one_candidate(self) -> ImpactIn:
        if (self.version_id is None) == (self.yaml is None):
            raise ValueError("give exactly one of version_id and yaml")
        return self


class ChangeOut(BaseModel):
    """Flows whose verdict the candidate changes."""

    client: str
    change: Literal["loses", "gains"]
    proto: str
    dst: str | None
    dport: int | None
    fqdn: str | None
    flows: int
    last_seen: datetime
    old_rule: str | None
    new_rule: str


class ClientImpactOut(BaseModel):
    """Flows one client loses and gains."""

    client: str
    loses: int
    gains: int


class RuleImpactOut(BaseModel):
    """Flows lost and gained through one of the candidate's rules."""

    rule: str
    loses: int
    gains: int


class WindowOut(BaseModel):
    """The time window replayed."""

    since: datetime
    until: datetime


class ImpactOut(BaseModel):
    """What publishing the candidate would change for the flows seen in the window."""

    window: WindowOut
    flows_considered: int
    distinct: int
    changes: list[ChangeOut]
    truncated: bool
    by_client: list[ClientImpactOut]
    by_rule: list[RuleImpactOut]
    summary: list[str]
    undecidable: int = Field(description="distinct rows with a protocol the replay cannot decide")
    notes: list[str]


def _version_out(row: PolicyVersion, in_force: int | None) -> dict[str, Any]:
    out = PolicyVersionOut.model_validate(row, from_attributes=True).model_dump()
    out["published"] = row.id == in_force
    return out


def _rejected(exc: service.PolicyRejected) -> ProblemError:
    return ProblemError(422, exc.detail, slug="policy-invalid", errors=exc.errors, tests=exc.tests)


def _published_out(publication: PolicyPublication, version: PolicyVersion) -> dict[str, Any]:
    return {
        "publication": PublicationOut.model_validate(publication, from_attributes=True),
        "version": {**_version_out(version, version.id), "yaml": version.yaml},
    }


@router.post(
    "/policies",
    status_code=201,
    response_model=PolicyVersionCreated,
    responses={
        200: {"model": PolicyVersionCreated, "description": "this YAML was stored before"},
        413: PROBLEM_RESPONSES[422] | {"description": "the policy is larger than 1 MiB"},
    },
)
def create(body: PolicyIn, request: Request, db: DB, who: Writer) -> Any:
    """Store a new policy version after checking it: it must load, compile and pass its inline
    tests (422 problem with ``errors`` at line and column, and ``tests``).

    Idempotent: YAML identical to a stored version's answers 200 with that version."""
    now = utc_now()
    try:
        checked = service.check_policy(body.yaml, now=now)
    except service.PolicyRejected as exc:
        raise _rejected(exc) from None
    with db.session() as session:
        row, created = service.create_version(
            session, body.yaml, body.comment, who.name, checked, now
        )
        current = service.current_publication(session)
        out = _version_out(row, current.version_id if current else None)
        describe(request, "policy.create", f"v{row.id}", digest=row.digest, created=created)
    out["tests"] = [asdict(t) for t in checked.tests]
    return JSONResponse(
        PolicyVersionCreated.model_validate(out).model_dump(mode="json"),
        status_code=201 if created else 200,
        headers={"Location": f"{request.url.path}/{row.id}"},
    )


@router.get("/policies", response_model=Page[PolicyVersionOut])
def list_versions(
    db: DB, _: Reader, cursor: str | None = None, limit: Limit = DEFAULT_LIMIT
) -> dict[str, Any]:
    """Every version, newest first; ``published`` marks the one in force."""
    after = decode_cursor(cursor, 1)
    query = select(PolicyVersion).order_by(PolicyVersion.id.desc()).limit(limit + 1)
    if after is not None:
        query = query.where(PolicyVersion.id < int(after[0]))
    with db.reader() as session:
        rows = list(session.scalars(query))
        current = service.current_publication(session)
    in_force = current.version_id if current else None
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "items": [_version_out(r, in_force) for r in rows],
        "next_cursor": encode_cursor((rows[-1].id,)) if more else None,
    }


@router.get("/policies/published", response_model=PublishedOut)
def published(db: DB, _: Reader, response: Response) -> dict[str, Any]:
    """The policy in force and its publication; the ETag is what If-Match takes."""
    with db.reader() as session:
        current = service.current_publication(session)
        if current is None:
            raise ProblemError(404, "no policy was ever published", slug="not-found")
        version = service.get_version(session, current.version_id)
    response.headers["ETag"] = service.etag(current)
    return _published_out(current, version)


@router.get("/policies/{version_id}", response_model=PolicyVersionDetail)
def get(version_id: VersionId, db: DB, _: Reader) -> dict[str, Any]:
    """One version with its YAML."""
    with db.reader() as session:
        row = service.get_version(session, version_id)
        current = service.current_publication(session)
    return {**_version_out(row, current.version_id if current else None), "yaml": row.yaml}


def _publish(
    request: Request,
    db: Database,
    who: Principal,
    version_id: int,
    kind: Literal["publish", "rollback"],
    if_match: str | None,
) -> JSONResponse:
    with db.session() as session:
        result = service.publish(session, version_id, kind, who.name, utc_now(), if_match)
        describe(
            request,
            f"policy.{kind}",
            f"v{version_id}",
            digest=result.version.digest,
            changed=result.changed,
        )
    if result.changed:  # changelog.append wakes the relays' long polls at commit
        request.app.state.metrics.policy_publications.labels(kind).inc()
    body = PublishOut.model_validate(
        {
            **_published_out(result.publication, result.version),
            "changed": result.changed,
            "seq": result.seq,
        }
    )
    return JSONResponse(
        body.model_dump(mode="json"), headers={"ETag": service.etag(result.publication)}
    )


@router.post("/policies/{version_id}/publish", response_model=PublishOut)
def publish(
    version_id: VersionId, request: Request, db: DB, who: Writer, if_match: IfMatch = None
) -> JSONResponse:
    """Put a version in force: relays follow within seconds. The version already in force is a
    no-op (``changed`` false, no change for the relays)."""
    return _publish(request, db, who, version_id, "publish", if_match)


@router.post("/policies/{version_id}/rollback", response_model=PublishOut)
def rollback(
    version_id: VersionId, request: Request, db: DB, who: Writer, if_match: IfMatch = None
) -> JSONResponse:
    """Put back a version that was published before (409 for one never published)."""
    return _publish(request, db, who, version_id, "rollback", if_match)


@router.get("/policies/{from_id}/diff/{to_id}", response_model=DiffOut)
def diff(from_id: VersionId, to_id: VersionId, db: DB, _: Reader) -> dict[str, Any]:
    """The YAML's unified diff and the rules added, removed, changed and moved (by id)."""
    with db.reader() as session:
        a = service.get_version(session, from_id)
        b = service.get_version(session, to_id)
    return service.diff_versions(a, b)


@router.post("/policies/{version_id}/explain", response_model=ExplainOut)
def explain(
    version_id: VersionId, body: ExplainIn, request: Request, db: DB, _: Reader
) -> dict[str, Any]:
    """How a version decides one flow, rule by rule."""
    try:
        target = TestTarget.parse(body.target)
    except ValueError as exc:
        raise ProblemError(
            422, str(exc), slug="invalid", errors=[{"field": "target", "message": str(exc)}]
        ) from None
    note = None
    with db.reader() as session:
        row = service.get_version(session, version_id)
        groups = body.groups
        if groups is None:
            client = session.get(Client, body.client)
            if client is None:
                groups, note = [], f"client {body.client} is not registered: decided without groups"
            else:
                groups = [str(g) for g in client.groups]
    compiled = service.compiled_version(row)[1]
    proto, dst, dport, fqdns = target_flow(target, body.fqdn)
    result = compiled.explain(
        body.client,
        tuple(groups),
        proto,
        dst,
        dport,
        fqdns=fqdns,
        country=body.country,
        now=utc_now(),
    )
    describe(request, "policy.explain", f"v{version_id}", client=body.client, flow=str(target))
    return {
        "verdict": result.decision.verdict,
        "rule": result.decision.rule_id,
        "policy_version": row.id,
        "digest": row.digest,
        "explanation": result.lines(),
        "groups_used": groups,
        "note": note,
    }


@router.post("/policies/impact", response_model=ImpactOut)
def impact(body: ImpactIn, request: Request, db: DB, _: Reader) -> dict[str, Any]:
    """Replay the flows relays recorded in a window (default: the last 7 days) against a
    candidate and list who would lose or gain what, biggest first. Changes nothing."""
    started = time.perf_counter()
    now = utc_now()
    try:
        until = as_utc(body.until) if body.until is not None else now
        since = as_utc(body.since) if body.since is not None else until - DEFAULT_WINDOW
    except OverflowError:
        raise ProblemError(422, "the window is out of range: give since", slug="invalid") from None
    if since >= until:
        raise ProblemError(422, "since must be before until", slug="invalid")
    notes: list[str] = []
    with db.reader() as session:
        if body.version_id is not None:
            text = service.get_version(session, body.version_id).yaml
            target = f"v{body.version_id}"
        else:
            text = body.yaml or ""
            target = "yaml"
        try:
            checked = service.check_policy(text, now=now, run_tests=False)
        except service.PolicyRejected as exc:
            raise _rejected(exc) from None
        rows = service.recorded_flows(session, since, until, body.client)
        seen = {r.client for r in rows}
        groups = service.client_groups(session, seen)
    if checked.compiled.uses_geoip:
        notes.append("country rules never match in the replay: the control plane has no GeoIP")
    missing = sorted(seen - set(groups))
    if missing:
        notes.append(
            f"{len(missing)} client(s) not registered, replayed without groups: "
            + ", ".join(missing[:10])
            + (" ..." if len(missing) > 10 else "")
        )
    result = replay.replay(
        rows,
        checked.compiled,
        client_groups=groups,
        since=since,
        until=until,
        now=now,
        limit=body.limit,
    )
    describe(request, "policy.impact", target, flows=result.flows_considered)
    request.app.state.metrics.impact_seconds.observe(time.perf_counter() - started)
    return {
        "window": {"since": result.since, "until": result.until},
        "flows_considered": result.flows_considered,
        "distinct": result.distinct,
        "changes": [asdict(c) for c in result.changes],
        "truncated": result.truncated,
        "by_client": [asdict(c) for c in result.by_client],
        "by_rule": [asdict(r) for r in result.by_rule],
        "summary": list(result.summary),
        "undecidable": result.undecidable,
        "notes": notes,
    }
