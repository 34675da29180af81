"""The Policies pages: the history of versions, an editor for a new one (errors placed at their
line, inline test results), a version with its rules as anchors, publish and rollback, and the
read-only questions (explain a flow, the impact over recorded flows, the diff of two versions).

Everything goes through the same service functions as the REST API (services/policies.py,
services/impact.py); explain, impact and diff are GET forms since they change nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Form, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select

from zgate_control.adminlog import describe
from zgate_control.console.deps import User, Writer
from zgate_control.console.render import render
from zgate_control.db import Database
from zgate_control.models import Client, PolicyPublication, PolicyVersion, utc_now
from zgate_control.problems import ProblemError
from zgate_control.services import impact as replay
from zgate_control.services import policies as service
from zgate_policy import TestTarget, target_flow

__all__ = ["SourceLine", "numbered", "router"]

router = APIRouter(prefix="/console", include_in_schema=False)

VersionId = Annotated[int, Path(ge=1, le=2**31 - 1)]
#: Versions listed on the history page (newest first).
HISTORY: Final = 200
#: What the editor starts from when nothing was ever published.
STARTER: Final = "default: deny\nrules: []\n"
#: What a page says after a change (the redirect names it in ``?done=``).
DONE: Final = {
    "created": "Saved as a new version: its inline tests pass. Publish it when ready.",
    "exists": "This exact text was saved before: here is that version.",
    "published": "Published: relays apply it within seconds.",
    "rolled-back": "Rolled back: relays apply this version again within seconds.",
    "in-force": "This version is already in force: nothing changed.",
}
#: Impact windows the form accepts, in days.
MAX_DAYS: Final = 366


@dataclass(slots=True)
class SourceLine:
    """One line of a policy as the pages show it: its number, text, the rule starting on it
    (for the ``#rule-<id>`` anchor) and the errors placed at it (with their list index)."""

    number: int
    text: str
    rule: str | None = None
    errors: list[tuple[int, dict[str, Any]]] = field(default_factory=list)


def numbered(
    text: str,
    errors: list[dict[str, Any]] | None = None,
    rule_lines: dict[int, str] | None = None,
) -> list[SourceLine]:
    """`text` as numbered lines with each error at its line (one past the end for an error at
    the end of the text, line 1 for one without a line) and rule ids at their first line."""
    lines = [SourceLine(i, t) for i, t in enumerate(text.split("\n"), start=1)]
    if lines and lines[-1].text == "" and len(lines) > 1:
        lines.pop()  # the final newline opens no line of its own
    for number, rule in (rule_lines or {}).items():
        if 1 <= number <= len(lines):
            lines[number - 1].rule = rule
    for index, error in enumerate(errors or [], start=1):
        at = max(1, int(error.get("line") or 1))
        while at > len(lines):
            lines.append(SourceLine(len(lines) + 1, ""))
        lines[at - 1].errors.append((index, error))
    return lines


def _rule_lines(text: str) -> dict[int, str]:
    try:
        policy, _ = service.compiled(text)
    except Exception:  # a stored version that no longer loads: no anchors, still shown
        return {}
    return {policy.source.locate(("rules", i))[0]: r.id for i, r in enumerate(policy.rules)}


def _in_force(db: Database) -> PolicyVersion | None:
    with db.reader() as session:
        current = service.current_publication(session)
        return service.get_version(session, current.version_id) if current else None


def _history(db: Database) -> tuple[list[PolicyVersion], set[int], int | None]:
    """The newest versions, the ids ever published, and the id in force."""
    with db.reader() as session:
        rows = list(
            session.scalars(select(PolicyVersion).order_by(PolicyVersion.id.desc()).limit(HISTORY))
        )
        published = set(session.scalars(select(PolicyPublication.version_id).distinct()))
        current = service.current_publication(session)
    return rows, published, current.version_id if current else None


def _list_page(
    request: Request,
    user: Any,
    *,
    yaml: str | None = None,
    comment: str = "",
    errors: list[dict[str, Any]] | None = None,
    tests: list[dict[str, Any]] | None = None,
    detail: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    db: Database = request.app.state.db
    rows, published, in_force = _history(db)
    if yaml is None:
        current = _in_force(db)
        yaml = current.yaml if current else STARTER
    return render(
        request,
        "policies.html",
        user,
        status_code=status_code,
        versions=rows,
        ever_published=published,
        in_force=in_force,
        yaml=yaml,
        comment=comment,
        errors=errors or [],
        tests=tests or [],
        detail=detail,
        lines=numbered(yaml, errors or []) if errors else [],
        done=DONE.get(request.query_params.get("done", "")),
    )


@router.get("/policies", response_class=HTMLResponse)
def policies(request: Request, user: User) -> HTMLResponse:
    """The history of versions and, for writers, the editor."""
    return _list_page(request, user)


@router.post("/policies", response_model=None)
def submit(
    request: Request,
    user: Writer,
    yaml: Annotated[str, Form()],
    comment: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    """Store a new version; on errors the editor again with the errors at their lines."""
    yaml = yaml.replace("\r\n", "\n")  # browsers send CRLF from a textarea
    now = utc_now()
    try:
        if "\x00" in yaml or "\x00" in comment:
            raise ProblemError(422, "the policy must not contain NUL characters", slug="invalid")
        checked = service.check_policy(yaml, now=now)
    except service.PolicyRejected as exc:
        return _list_page(
            request,
            user,
            yaml=yaml,
            comment=comment,
            errors=exc.errors,
            tests=exc.tests,
            detail=exc.detail,
            status_code=422,
        )
    except ProblemError as exc:  # too large, NUL
        return _list_page(
            request, user, yaml=yaml, comment=comment, detail=exc.detail, status_code=exc.status
        )
    db: Database = request.app.state.db
    with db.session() as session:
        row, created = service.create_version(session, yaml, comment, user.name, checked, now)
        describe(request, "policy.create", f"v{row.id}", digest=row.digest, created=created)
    done = "created" if created else "exists"
    return RedirectResponse(f"/console/policies/{row.id}?done={done}", status_code=303)


def _tests_of(row: PolicyVersion) -> list[dict[str, Any]]:
    try:
        return [
            {"name": t.name, "passed": t.passed, "description": t.description}
            for t in service.check_policy(row.yaml, now=utc_now()).tests
        ]
    except service.PolicyRejected as exc:  # a rule expired since, say: show what fails now
        return exc.tests


def _explain(db: Database, row: PolicyVersion, params: dict[str, str]) -> dict[str, Any]:
    """The explain form's answer (or its error) for `row`."""
    client = params.get("client", "").strip()
    target_text = params.get("target", "").strip()
    if not client or not target_text:
        return {
            "error": "give a client and a target (tcp://host:port, udp://host:port, icmp://host)"
        }
    try:
        target = TestTarget.parse(target_text)
    except ValueError as exc:
        return {"error": f"target: {exc}"}
    note = None
    given = params.get("groups", "").strip()
    if given:
        groups = [g.strip() for g in given.split(",") if g.strip()]
    else:
        with db.reader() as session:
            registered = session.get(Client, client)
            if registered is None:
                groups, note = [], f"client {client} is not registered: decided without groups"
            else:
                groups = [str(g) for g in registered.groups]
    _, compiled = service.compiled_version(row)
    proto, dst, dport, fqdns = target_flow(target, None)
    result = compiled.explain(client, tuple(groups), proto, dst, dport, fqdns=fqdns, now=utc_now())
    return {
        "verdict": result.decision.verdict,
        "rule": result.decision.rule_id,
        "lines": result.lines(),
        "groups": groups,
        "note": note,
        "target": str(target),
    }


def _impact(db: Database, row: PolicyVersion, days_text: str) -> dict[str, Any]:
    """The impact form's answer for `row` over the last `days_text` days."""
    try:
        days = int(days_text)
        if not 1 <= days <= MAX_DAYS:
            raise ValueError
    except ValueError:
        return {"error": f"the window is a whole number of days from 1 to {MAX_DAYS}"}
    now = utc_now()
    since = now - timedelta(days=days)
    _, compiled = service.compiled_version(row)
    with db.reader() as session:
        rows = service.recorded_flows(session, since, now)
        groups = service.client_groups(session, {r.client for r in rows})
    result = replay.replay(
        rows, compiled, client_groups=groups, since=since, until=now, now=now, limit=200
    )
    notes = []
    if compiled.uses_geoip:
        notes.append("country rules never match in the replay: the control plane has no GeoIP")
    missing = sorted({r.client for r in rows} - set(groups))
    if missing:
        notes.append(f"{len(missing)} client(s) not registered, replayed without groups")
    return {"days": days, "result": result, "notes": notes}


@router.get("/policies/diff", response_class=HTMLResponse)
def diff(request: Request, user: User, a: int = 0, b: int = 0) -> HTMLResponse:
    """The unified diff of two versions and the rules added, removed, changed and moved."""
    db: Database = request.app.state.db
    rows, _, _ = _history(db)
    result = None
    error = None
    if a and b:
        with db.reader() as session:
            try:
                result = service.diff_versions(
                    service.get_version(session, a), service.get_version(session, b)
                )
            except ProblemError as exc:
                error = exc.detail
    return render(
        request,
        "policy_diff.html",
        user,
        versions=rows,
        a=a,
        b=b,
        diff=result,
        diff_lines=_diff_lines(result["unified"]) if result else [],
        error=error,
    )


def _diff_lines(unified: str) -> list[tuple[str, str]]:
    """(kind, text) per line of a unified diff: add, del, hunk, file or same."""
    out = []
    for line in unified.splitlines():
        if line.startswith(("+++", "---")):
            kind = "file"
        elif line.startswith("@@"):
            kind = "hunk"
        elif line.startswith("+"):
            kind = "add"
        elif line.startswith("-"):
            kind = "del"
        else:
            kind = "same"
        out.append((kind, line))
    return out


@router.get("/policies/{version_id}", response_class=HTMLResponse)
def version(request: Request, user: User, version_id: VersionId) -> HTMLResponse:
    """One version: its YAML with rule anchors, its tests, publish/rollback, and the explain,
    impact and diff forms with their answers."""
    db: Database = request.app.state.db
    params = dict(request.query_params)
    with db.reader() as session:
        row = service.get_version(session, version_id)
    rows, published, in_force = _history(db)
    explained = _explain(db, row, params) if "target" in params else None
    impact = _impact(db, row, params.get("days", "7")) if "days" in params else None
    earlier = [v for v in rows if v.id != row.id]
    return render(
        request,
        "policy_version.html",
        user,
        version=row,
        lines=numbered(row.yaml, [], _rule_lines(row.yaml)),
        tests=_tests_of(row),
        in_force=in_force,
        was_published=row.id in published,
        versions=rows,
        diff_from=earlier[0].id if earlier else row.id,
        explained=explained,
        impact=impact,
        params=params,
        done=DONE.get(params.get("done", "")),
    )


def _publish(
    request: Request, user: Any, version_id: int, kind: Literal["publish", "rollback"]
) -> RedirectResponse:
    db: Database = request.app.state.db
    with db.session() as session:
        result = service.publish(session, version_id, kind, user.name, utc_now())
        describe(
            request,
            f"policy.{kind}",
            f"v{version_id}",
            digest=result.version.digest,
            changed=result.changed,
        )
    if result.changed:
        request.app.state.metrics.policy_publications.labels(kind).inc()
    done = ("published" if kind == "publish" else "rolled-back") if result.changed else "in-force"
    return RedirectResponse(f"/console/policies/{version_id}?done={done}", status_code=303)


@router.post("/policies/{version_id}/publish")
def publish(request: Request, user: Writer, version_id: VersionId) -> RedirectResponse:
    """Put this version in force (relays follow within seconds)."""
    return _publish(request, user, version_id, "publish")


@router.post("/policies/{version_id}/rollback")
def rollback(request: Request, user: Writer, version_id: VersionId) -> RedirectResponse:
    """Put back this earlier published version."""
    return _publish(request, user, version_id, "rollback")
