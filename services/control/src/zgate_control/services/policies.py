"""Policy versions: checking submitted YAML, storing versions, publishing, rolling back, diffs.

Policies are compiled as if a GeoIP database were present (``geoip_available=True``): the
control plane has none, and whether a relay has one is the relay's business; a relay without
one refuses a policy with country rules when it loads it, and says so in its audit log.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Final, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from zgate_control import changelog
from zgate_control.models import (
    AuditRecord,
    ChangeHead,
    Client,
    PolicyPublication,
    PolicyVersion,
)
from zgate_control.problems import ProblemError
from zgate_control.services.audit import client_id as bare_client_id
from zgate_control.services.impact import FlowGroup
from zgate_policy import (
    CompiledPolicy,
    Policy,
    PolicyInvalid,
    Problem,
    compile_policy,
    load_policy_text,
    run_policy_tests,
)

__all__ = [
    "MAX_YAML_BYTES",
    "Checked",
    "PolicyRejected",
    "Published",
    "TestOutcome",
    "check_policy",
    "client_groups",
    "compiled",
    "compiled_version",
    "create_version",
    "current_publication",
    "diff_versions",
    "etag",
    "get_version",
    "publish",
    "recorded_flows",
]

#: The largest policy accepted, in bytes of UTF-8.
MAX_YAML_BYTES: Final = 1 << 20
#: The name problems are reported under (the API has no file name).
_SOURCE: Final = "policy.yaml"
_FLOW_EVENTS: Final = ("flow.allow", "flow.deny")


@dataclass(frozen=True, slots=True)
class TestOutcome:
    """One inline test's result, as the API shows it."""

    __test__ = False  # not a pytest test class

    name: str
    passed: bool
    description: str


@dataclass(frozen=True, slots=True)
class Checked:
    """A policy that loads, compiles and passes its inline tests."""

    policy: Policy
    compiled: CompiledPolicy
    tests: tuple[TestOutcome, ...]


class PolicyRejected(Exception):
    """The policy cannot become a version: `errors` at lines and columns, `tests` run (if any)."""

    def __init__(
        self, detail: str, errors: Sequence[Problem], tests: Sequence[TestOutcome] = ()
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = [{"line": p.line, "column": p.column, "message": _message(p)} for p in errors]
        self.tests = [asdict(t) for t in tests]


def _message(problem: Problem) -> str:
    return f"{problem.field}: {problem.message}" if problem.field else problem.message


@lru_cache(maxsize=32)
def compiled(text: str) -> tuple[Policy, CompiledPolicy]:
    """Load and compile `text` (cached: versions are immutable); PolicyInvalid if it is wrong."""
    policy = load_policy_text(text, _SOURCE)
    return policy, compile_policy(policy, geoip_available=True)


def compiled_version(row: PolicyVersion) -> tuple[Policy, CompiledPolicy]:
    """A stored version, compiled; a 409 problem if this software no longer accepts it."""
    try:
        return compiled(row.yaml)
    except PolicyInvalid as exc:
        raise ProblemError(
            409,
            f"v{row.id} no longer loads with this zgate-control: {exc.problems[0]}",
            slug="conflict",
        ) from None


def check_policy(text: str, *, now: datetime, run_tests: bool = True) -> Checked:
    """Load, compile and (with `run_tests`) run the inline tests at `now`; PolicyRejected if any
    of that fails."""
    size = len(text.encode())
    if size > MAX_YAML_BYTES:
        raise ProblemError(
            413,
            f"the policy is {size} bytes; the limit is {MAX_YAML_BYTES} (1 MiB)",
            slug="too-large",
            title="Content too large",
        )
    try:
        policy, compiled_policy = compiled(text)
    except PolicyInvalid as exc:
        count = len(exc.problems)
        raise PolicyRejected(
            f"the policy is invalid ({count} problem{'s' if count != 1 else ''})", exc.problems
        ) from None
    if not run_tests:
        return Checked(policy, compiled_policy, ())
    results = run_policy_tests(policy, compiled_policy, now=now)
    tests = tuple(
        TestOutcome(r.test.name or f"tests[{r.index}]", r.passed, r.describe()) for r in results
    )
    failed = [r for r in results if not r.passed]
    if failed:
        problems = [
            policy.source.problem(("tests", r.index), "FAIL " + r.describe()) for r in failed
        ]
        raise PolicyRejected(f"{len(failed)} of {len(results)} inline tests fail", problems, tests)
    return Checked(policy, compiled_policy, tests)


def get_version(session: Session, version_id: int) -> PolicyVersion:
    """The version, or a 404 problem."""
    row = session.get(PolicyVersion, version_id)
    if row is None:
        raise ProblemError(404, f"no policy version v{version_id}", slug="not-found")
    return row


def create_version(
    session: Session, text: str, comment: str, author: str, checked: Checked, now: datetime
) -> tuple[PolicyVersion, bool]:
    """Store `text` as a new version; (row, True). Text identical to a stored version's gives
    that version back instead: (row, False). A different text with the same digest (comments or
    layout changed) is a new version, so what an operator wrote is kept as written."""
    digest = checked.compiled.version
    for row in session.scalars(
        select(PolicyVersion).where(PolicyVersion.digest == digest).order_by(PolicyVersion.id)
    ):
        if row.yaml == text:
            return row, False
    row = PolicyVersion(
        yaml=text,
        digest=digest,
        author=author,
        comment=comment,
        created_at=now,
        rules=len(checked.policy.rules),
    )
    session.add(row)
    session.flush()
    return row, True


def current_publication(session: Session) -> PolicyPublication | None:
    """The newest publication (its version is the policy in force), None if none ever was."""
    return session.scalars(
        select(PolicyPublication).order_by(PolicyPublication.id.desc()).limit(1)
    ).first()


def etag(publication: PolicyPublication) -> str:
    """The ETag of the policy in force: changes with every publication."""
    return f'"pub-{publication.id}"'


def _check_if_match(if_match: str | None, current: PolicyPublication | None) -> None:
    if if_match is None:
        return
    wanted = {tag.strip().removeprefix("W/") for tag in if_match.split(",")}
    if "*" in wanted and current is not None:
        return
    if current is None or etag(current) not in wanted:
        now = etag(current) if current is not None else "none (nothing published)"
        raise ProblemError(
            412,
            f"If-Match {if_match} is stale: the published policy's ETag is {now}; "
            "GET /api/v1/policies/published and decide again",
            slug="stale",
        )


@dataclass(frozen=True, slots=True)
class Published:
    """The outcome of a publish or rollback: `changed` False when it was already in force."""

    publication: PolicyPublication
    version: PolicyVersion
    changed: bool
    seq: int | None = None


def publish(
    session: Session,
    version_id: int,
    kind: Literal["publish", "rollback"],
    by: str,
    now: datetime,
    if_match: str | None = None,
) -> Published:
    """Put `version_id` in force and append the ``policy`` change, in the caller's transaction.

    A rollback must name a version published before (409 otherwise). The version already in
    force is a no-op (no publication, no change). `if_match`: 412 unless it is the ETag of the
    publication in force.
    """
    # Lock the change log's head first: publications are then serialized with each other (and
    # with every change), so the If-Match check and the new row cannot interleave with another.
    session.execute(select(ChangeHead).where(ChangeHead.id == 1).with_for_update()).one()
    version = get_version(session, version_id)
    current = current_publication(session)
    _check_if_match(if_match, current)
    if current is not None and current.version_id == version_id:
        return Published(current, version, changed=False)
    if kind == "rollback":
        before = session.scalar(
            select(func.count())
            .select_from(PolicyPublication)
            .where(PolicyPublication.version_id == version_id)
        )
        if not before:
            raise ProblemError(
                409,
                f"v{version_id} was never published, so there is nothing to roll back to; "
                "publish it instead",
                slug="conflict",
            )
    publication = PolicyPublication(
        version_id=version_id, kind=kind, published_at=now, published_by=by
    )
    session.add(publication)
    session.flush()
    seq = changelog.append(
        session,
        "policy",
        {"version_id": version.id, "digest": version.digest, "yaml": version.yaml, "kind": kind},
    )
    return Published(publication, version, changed=True, seq=seq)


def _rule_order_moves(before: Sequence[str], after: Sequence[str]) -> list[str]:
    """Rules kept in both whose place among the kept ones changed: those outside the longest
    common subsequence, so swapping two rules moves one, not every rule after them."""
    kept = set(before) & set(after)
    a = [r for r in before if r in kept]
    b = [r for r in after if r in kept]
    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    stayed = {
        r for block in matcher.get_matching_blocks() for r in a[block.a : block.a + block.size]
    }
    return [r for r in b if r not in stayed]


def diff_versions(a: PolicyVersion, b: PolicyVersion) -> dict[str, Any]:
    """The unified diff of two versions' YAML and their rules compared by id."""
    old, _ = compiled_version(a)
    new, _ = compiled_version(b)
    old_rules = {r.id: r.model_dump(mode="json", by_alias=True) for r in old.rules}
    new_rules = {r.id: r.model_dump(mode="json", by_alias=True) for r in new.rules}
    unified = "".join(
        difflib.unified_diff(
            a.yaml.splitlines(keepends=True),
            b.yaml.splitlines(keepends=True),
            fromfile=f"v{a.id}",
            tofile=f"v{b.id}",
        )
    )
    return {
        "from": a.id,
        "to": b.id,
        "unified": unified,
        "rules": {
            "added": [r for r in new_rules if r not in old_rules],
            "removed": [r for r in old_rules if r not in new_rules],
            "changed": [r for r in new_rules if r in old_rules and old_rules[r] != new_rules[r]],
            "moved": _rule_order_moves(list(old_rules), list(new_rules)),
        },
        "default": {"from": old.default, "to": new.default},
    }


def client_groups(session: Session, clients: Iterable[str]) -> dict[str, list[str]]:
    """The groups of each registered client among `clients` (unregistered ones are absent)."""
    wanted = sorted(set(clients))
    found: dict[str, list[str]] = {}
    for start in range(0, len(wanted), 500):  # bounded IN lists
        chunk = wanted[start : start + 500]
        for client_id, groups in session.execute(
            select(Client.id, Client.groups).where(Client.id.in_(chunk))
        ):
            found[client_id] = [str(g) for g in groups or ()]
    return found


def recorded_flows(
    session: Session, since: datetime, until: datetime, client: str | None = None
) -> list[FlowGroup]:
    """The window's flow decisions, aggregated by the database: one row per client, flow key,
    recorded verdict and rule.

    The JSON ``record`` column is not read: it would double the time of this scan (measured
    with bench/control_impact.py on both databases), and flow records carry no groups anyway.
    """
    key = (
        AuditRecord.client,
        AuditRecord.proto,
        AuditRecord.dst,
        AuditRecord.dport,
        AuditRecord.fqdn,
        AuditRecord.verdict,
        AuditRecord.rule,
    )
    query = (
        select(*key, func.count(), func.max(AuditRecord.ts))
        .where(
            AuditRecord.event.in_(_FLOW_EVENTS),
            AuditRecord.ts >= since,
            AuditRecord.ts < until,
            AuditRecord.client.is_not(None),
            AuditRecord.verdict.is_not(None),
            AuditRecord.proto.is_not(None),
        )
        .group_by(*key)
    )
    if client is not None:
        query = query.where(AuditRecord.client == bare_client_id(client))
    return [
        FlowGroup(
            client=str(row_client),
            proto=str(proto),
            dst=dst,
            dport=dport,
            fqdn=fqdn,
            verdict=str(verdict),
            rule=rule,
            flows=int(count),
            last_seen=last_seen,
        )
        for row_client, proto, dst, dport, fqdn, verdict, rule, count, last_seen in (
            session.execute(query)
        )
    ]
