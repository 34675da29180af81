"""What to apply from a change-log response (sans-IO): the response parsed and checked,
then reduced to the steps that bring the relay from its state to the control plane's.

Every payload of the change log carries the whole state of its kind (the policy in force,
the whole CRL and block list, every connector), so within one response only the newest
change of each kind needs applying: a policy version that this relay cannot use is then
passed over when a newer one follows it, instead of blocking everything behind it. What
was applied is acknowledged up to the first change that could not be (:func:`settle`), so
the control plane never shows a relay as running what it refused.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace

from cryptography import x509

from zgate_relay.control.state import (
    ControlState,
    PublishedPolicy,
    StateFormatError,
    connector_map,
    serials,
)

__all__ = [
    "EndSession",
    "InstallConnectors",
    "InstallPolicy",
    "InstallRevocations",
    "Plan",
    "Step",
    "plan_changes",
    "settle",
]

#: The change kinds that carry state: the newest of each kind in a response is enough.
KINDS = ("policy", "revocation", "connectors")
#: The event kind: an operator asks one relay to end one live session now.
SESSION_END = "session.end"


@dataclass(frozen=True, slots=True)
class InstallPolicy:
    """Enforce this published policy (None: none is published; deny everything)."""

    seq: int
    policy: PublishedPolicy | None
    kind = "policy"


@dataclass(frozen=True, slots=True)
class InstallRevocations:
    """Refuse (and end the sessions of) the CRL's serials and the blocked ones."""

    seq: int
    crl_pem: str
    blocked: tuple[str, ...]
    kind = "revocation"


@dataclass(frozen=True, slots=True)
class InstallConnectors:
    """Let each connector id serve exactly these prefixes (the whole set)."""

    seq: int
    connectors: Mapping[str, tuple[str, ...]]
    kind = "connectors"


@dataclass(frozen=True, slots=True)
class EndSession:
    """End this live session now (an operator asked; the agent may connect again)."""

    seq: int
    session: str
    kind = SESSION_END


Step = InstallPolicy | InstallRevocations | InstallConnectors | EndSession


@dataclass(frozen=True, slots=True)
class Plan:
    """The steps one response calls for, in change-log order.

    ``through`` is the position reached once every step is applied; ``head_seq`` the
    control plane's newest; ``ignored`` the (seq, kind) of changes of unknown kinds.
    """

    steps: tuple[Step, ...]
    through: int
    head_seq: int
    snapshot: bool = False
    ca_pem: str | None = None
    ignored: tuple[tuple[int, str], ...] = ()


def plan_changes(
    state: ControlState,
    response: object,
    *,
    in_force: bool | None = None,
    relay: str | None = None,
) -> Plan:
    """The plan for a GET .../changes response; raises StateFormatError on a bad one.

    ``in_force`` says whether the relay enforces ``state`` now, so that parts equal to it
    need no step (default: once it holds a position, ``state.seq > 0``); when it does not
    (nothing applied yet, or a cache it could not use) every part is a step. ``relay`` is
    this relay's id: ``session.end`` changes for another relay are no step (None: none is).
    """
    known = state.seq > 0 if in_force is None else in_force
    if not isinstance(response, Mapping):
        raise StateFormatError("the changes response is not a JSON object")
    head = response.get("head_seq")
    if isinstance(head, bool) or not isinstance(head, int):
        raise StateFormatError(f"head_seq: expected an integer, got {head!r}")
    kind = response.get("type")
    if kind == "snapshot":
        return _plan_snapshot(state, ControlState.from_dict(response.get("snapshot")), head, known)
    if kind == "changes":
        return _plan_changes(state, response.get("changes"), head, known, relay)
    raise StateFormatError(f"type: expected 'changes' or 'snapshot', got {kind!r}")


def _plan_snapshot(state: ControlState, snapshot: ControlState, head: int, known: bool) -> Plan:
    seq = snapshot.seq
    wanted: list[Step] = [
        InstallPolicy(seq, snapshot.policy),
        InstallRevocations(seq, snapshot.crl_pem, snapshot.blocked),
        InstallConnectors(seq, snapshot.connectors),
    ]
    steps = tuple(step for step in wanted if not (known and _in_force(state, step)))
    return Plan(steps, seq, head, snapshot=True, ca_pem=snapshot.ca_pem)


def _plan_changes(
    state: ControlState, changes: object, head: int, known: bool, relay: str | None
) -> Plan:
    if not isinstance(changes, list):
        raise StateFormatError("changes: expected a list")
    newest: dict[str, Step] = {}
    events: list[Step] = []  # every session.end counts, not only the newest
    ignored: list[tuple[int, str]] = []
    through = state.seq
    seen: set[int] = set()
    for change in changes:
        if not isinstance(change, Mapping):
            raise StateFormatError("changes[]: expected an object")
        seq, kind = change.get("seq"), change.get("kind")
        if isinstance(seq, bool) or not isinstance(seq, int) or not isinstance(kind, str):
            raise StateFormatError(f"changes[]: seq and kind missing in {dict(change)!r}")
        if seq in seen:
            raise StateFormatError(f"changes[]: seq {seq} appears twice")
        seen.add(seq)
        if seq <= state.seq:  # applied already (payloads are idempotent; skip the work)
            continue
        through = max(through, seq)
        if kind == SESSION_END:
            end = _end_session(seq, change.get("payload"), relay)
            if end is not None:
                events.append(end)
            continue
        if kind not in KINDS:
            ignored.append((seq, kind))
            continue
        step = _step(seq, kind, change.get("payload"))
        current = newest.get(kind)
        if current is None or current.seq < seq:
            newest[kind] = step
    fresh = (s for s in newest.values() if not (known and _in_force(state, s)))
    steps = sorted([*fresh, *events], key=lambda s: s.seq)
    return Plan(tuple(steps), through, head, ignored=tuple(sorted(ignored)))


def _end_session(seq: int, payload: object, relay: str | None) -> EndSession | None:
    """The step of a ``session.end`` change, None when it names another relay."""
    if not isinstance(payload, Mapping):
        raise StateFormatError(f"change {seq} ({SESSION_END}): the payload is not an object")
    target, session = payload.get("relay"), payload.get("session")
    if not isinstance(target, str) or not isinstance(session, str) or not session:
        raise StateFormatError(
            f"change {seq} ({SESSION_END}): expected text relay and session, got {dict(payload)!r}"
        )
    return EndSession(seq, session) if relay is not None and target == relay else None


def _step(seq: int, kind: str, payload: object) -> Step:
    if not isinstance(payload, Mapping):
        raise StateFormatError(f"change {seq} ({kind}): the payload is not an object")
    try:
        if kind == "policy":
            return InstallPolicy(seq, PublishedPolicy.from_dict(payload))
        if kind == "revocation":
            crl = payload.get("crl_pem") or ""
            if not isinstance(crl, str):
                raise StateFormatError("crl_pem: expected text")
            return InstallRevocations(seq, crl, serials(payload.get("blocked", [])))
        return InstallConnectors(seq, connector_map(payload.get("connectors")))
    except StateFormatError as exc:
        raise StateFormatError(f"change {seq} ({kind}): {exc}") from None


def _in_force(state: ControlState, step: Step) -> bool:
    """Whether the state holds what the step would install already."""
    if isinstance(step, EndSession):
        return False  # an event, not state
    if isinstance(step, InstallPolicy):
        return state.policy == step.policy
    if isinstance(step, InstallRevocations):
        return set(state.blocked) == set(step.blocked) and _same_crl(state.crl_pem, step.crl_pem)
    return dict(state.connectors) == dict(step.connectors)


def _same_crl(a: str, b: str) -> bool:
    """Whether two CRLs revoke the same serials. The control plane may sign its CRL anew
    for every snapshot (a new date, a new signature): the text alone would differ."""
    if a == b:
        return True
    serials_a, serials_b = _crl_serials(a), _crl_serials(b)
    return serials_a is not None and serials_a == serials_b


def _crl_serials(pem: str) -> frozenset[int] | None:
    if not pem.strip():
        return frozenset()
    try:
        crl = x509.load_pem_x509_crl(pem.encode())
        # Entries are parsed as they are read, so a corrupt one raises here too.
        return frozenset(entry.serial_number for entry in crl)
    except (ValueError, x509.InvalidVersion):  # InvalidVersion is no ValueError
        return None  # not comparable: installing it decides (and refuses it)


def settle(state: ControlState, plan: Plan, failed: Collection[Step]) -> ControlState:
    """The state after applying ``plan`` when the steps in ``failed`` could not be.

    What was applied is kept; the position advances to ``plan.through`` only if nothing
    failed, else to just before the first failed change (after a failed snapshot, it
    stays), so the next poll brings the failed change again.
    """
    new = state
    for step in plan.steps:
        if step in failed:
            continue
        if isinstance(step, InstallPolicy):
            new = replace(new, policy=step.policy)
        elif isinstance(step, InstallRevocations):
            new = replace(new, crl_pem=step.crl_pem, blocked=step.blocked)
        elif isinstance(step, InstallConnectors):
            new = replace(new, connectors=dict(step.connectors))
    if plan.ca_pem is not None:
        new = replace(new, ca_pem=plan.ca_pem)
    if not failed:
        return replace(new, seq=plan.through)
    if plan.snapshot:
        return replace(new, seq=state.seq)
    return replace(new, seq=max(state.seq, min(step.seq for step in failed) - 1))
