"""A compiled policy version: first-match decisions in near-constant time, and explanations."""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from .index import IndexedTarget, RuleIndex
from .model import Verdict
from .names import IPAddress, fqdn_matches
from .ports import PROTOCOLS, allows, describe

__all__ = [
    "CompiledPolicy",
    "CompiledRule",
    "Decision",
    "Explanation",
    "RuleTrace",
    "Target",
    "describe_flow",
]

#: Caches keyed by caller-supplied identities are cleared when they reach this size.
_CACHE_LIMIT: Final = 16384
_PROTO_NAMES: Final = {num: name for name, nums in PROTOCOLS.items() for num in nums}
_MAX_LABELS: Final = 4


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict for a flow and the id of the rule that decided it ("default": none did)."""

    verdict: Verdict
    rule_id: str


@dataclass(frozen=True, slots=True)
class Target(IndexedTarget):
    """One destination of a rule, with the ports it allows there and how the operator wrote it."""

    label: str = ""

    def matches_destination(
        self, dst: IPAddress | None, fqdns: Iterable[str], country: str | None
    ) -> bool:
        """Whether the destination (IP, names it resolved from, country) is this target."""
        if self.kind == "any":
            return True
        if self.kind == "cidr":
            net = self.network
            # `in` across IP versions compares raw integers: check the version first.
            return dst is not None and net is not None and dst.version == net.version and dst in net
        if self.kind == "fqdn":
            return any(fqdn_matches(self.fqdn, name) for name in fqdns)
        return country is not None and country in self.countries


@dataclass(frozen=True, slots=True)
class RuleTrace:
    """Whether one rule matched a flow, and why (or why not)."""

    rule_id: str
    action: Verdict
    matched: bool
    reason: str


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule ready for matching."""

    index: int
    id: str
    decision: Decision
    #: Tokens: client ids and "group:<name>"; None for everyone.
    principals: frozenset[str] | None
    targets: tuple[Target, ...]
    expires: datetime | None

    def matches_flow(
        self,
        proto: int,
        dst: IPAddress | None,
        dport: int | None,
        fqdns: Sequence[str],
        country: str | None,
        now: datetime,
    ) -> bool:
        """Destination, ports and expiry (the principal is the index's job)."""
        if self.expires is not None and now >= self.expires:
            return False
        return any(
            allows(t.ports, proto, dport) and t.matches_destination(dst, fqdns, country)
            for t in self.targets
        )

    def trace(self, tokens: frozenset[str], flow: _Flow) -> RuleTrace:
        """Check every condition in order and say which one failed first."""
        action = self.decision.verdict

        def no(reason: str) -> RuleTrace:
            return RuleTrace(self.id, action, False, reason)

        if self.principals is not None and not tokens & self.principals:
            return no(f"principal: not one of {_join(sorted(self.principals))}")
        places = [
            t for t in self.targets if t.matches_destination(flow.dst, flow.fqdns, flow.country)
        ]
        if not places:
            return no(f"destination: {flow.where} is not in {_join(_labels(self.targets))}")
        ported = [t for t in places if allows(t.ports, flow.proto, flow.dport)]
        if not ported:
            allowed = "; ".join(f"{t.label}: {describe(t.ports)}" for t in places[:_MAX_LABELS])
            return no(f"port: {flow.what} is not allowed ({allowed})")
        if self.expires is not None and flow.now >= self.expires:
            return no(f"expired at {self.expires.isoformat()}")
        who = "everyone" if self.principals is None else _join(sorted(tokens & self.principals))
        return RuleTrace(
            self.id,
            action,
            True,
            f"from {who}, to {ported[0].label}, ports {describe(ported[0].ports)}",
        )


@dataclass(frozen=True, slots=True)
class _Flow:
    proto: int
    dst: IPAddress | None
    dport: int | None
    fqdns: tuple[str, ...]
    country: str | None
    now: datetime

    @property
    def what(self) -> str:
        name = _PROTO_NAMES.get(self.proto, f"proto {self.proto}")
        return f"{name}/{self.dport}" if self.dport is not None else name

    @property
    def where(self) -> str:
        parts = [str(self.dst)] if self.dst is not None else []
        parts += self.fqdns
        if self.country is not None:
            parts.append(f"country {self.country}")
        return " / ".join(parts) or "(no destination)"


def describe_flow(proto: int, dst: IPAddress | None, dport: int | None) -> str:
    """``tcp 10.1.2.3:443``, for messages."""
    name = _PROTO_NAMES.get(proto, f"proto {proto}")
    host = f"[{dst}]" if dst is not None and dst.version == 6 else str(dst)
    return f"{name} {host}" + (f":{dport}" if dport is not None else "")


def _labels(targets: Sequence[Target]) -> list[str]:
    labels = list(dict.fromkeys(t.label for t in targets))
    if len(labels) > _MAX_LABELS:
        return [*labels[:_MAX_LABELS], f"{len(labels) - _MAX_LABELS} more"]
    return labels


def _join(items: Sequence[str]) -> str:
    return "[" + ", ".join(items) + "]"


@dataclass(frozen=True, slots=True)
class Explanation:
    """A decision and, for each rule up to the deciding one, why it matched or not."""

    decision: Decision
    #: The requester as the policy sees it: client id and "group:<name>" tokens.
    principals: frozenset[str]
    steps: tuple[RuleTrace, ...]

    def lines(self) -> list[str]:
        """Human-readable: the verdict first, then one line per rule examined."""
        by = (
            "the default" if self.decision.rule_id == "default" else f"rule {self.decision.rule_id}"
        )
        out = [f"verdict: {self.decision.verdict} ({by})"]
        out.append(f"principal: {_join(sorted(self.principals))}")
        for step in self.steps:
            mark = "MATCH" if step.matched else "no match"
            out.append(f"  {step.rule_id} ({step.action}): {mark}: {step.reason}")
        if self.decision.rule_id == "default":
            out.append(f"  default ({self.decision.verdict}): no rule matched")
        return out


def _groups_key(groups: Collection[str]) -> Hashable:
    return groups if isinstance(groups, tuple | frozenset) else tuple(groups)


class CompiledPolicy:
    """One policy version, compiled. Immutable apart from its caches; safe to share."""

    def __init__(
        self,
        *,
        version: str,
        default: Verdict,
        rules: Sequence[CompiledRule],
        group_parents: Mapping[str, tuple[str, ...]],
    ) -> None:
        """Built by `compile_policy`; `group_parents` maps a member token to its groups."""
        self.version = version
        self.rules: tuple[CompiledRule, ...] = tuple(rules)
        self.rule_ids: tuple[str, ...] = (*(r.id for r in self.rules), "default")
        self.default = Decision(default, "default")
        targets = [t for r in self.rules for t in r.targets]
        self.uses_fqdn = any(t.kind == "fqdn" for t in targets)
        self.uses_geoip = any(t.kind == "country" for t in targets)
        self._has_expiry = any(r.expires is not None for r in self.rules)
        self._parents = dict(group_parents)
        # Public for lint and tools: the candidate-rule masks by principal, destination, port.
        self.index = RuleIndex([r.principals for r in self.rules], [r.targets for r in self.rules])
        self._groups_cache: dict[tuple[str, Hashable], frozenset[str]] = {}
        self._principal_cache: dict[tuple[str, Hashable], int] = {}

    def groups_of(self, client: str, cert_groups: Collection[str]) -> frozenset[str]:
        """The client's groups: its certificate's, the policy's, and every group nesting them."""
        key = (client, _groups_key(cert_groups))
        found = self._groups_cache.get(key)
        if found is None:
            groups: set[str] = set()
            todo = [*self._parents.get(client, ()), *cert_groups]
            while todo:
                group = todo.pop()
                if group not in groups:
                    groups.add(group)
                    todo.extend(self._parents.get("group:" + group, ()))
            found = frozenset(groups)
            if len(self._groups_cache) >= _CACHE_LIMIT:
                self._groups_cache.clear()
            self._groups_cache[key] = found
        return found

    def principals(self, client: str, cert_groups: Collection[str]) -> frozenset[str]:
        """The tokens rules name the client by: its id and ``group:<name>`` for each group."""
        return frozenset([client, *("group:" + g for g in self.groups_of(client, cert_groups))])

    def _principal_mask(self, client: str, cert_groups: Collection[str]) -> int:
        key = (client, _groups_key(cert_groups))
        mask = self._principal_cache.get(key)
        if mask is None:
            mask = self.index.principal(self.principals(client, cert_groups))
            if len(self._principal_cache) >= _CACHE_LIMIT:
                self._principal_cache.clear()
            self._principal_cache[key] = mask
        return mask

    def decide(
        self,
        client: str,
        groups: Collection[str],
        proto: int,
        dst: IPAddress | None,
        dport: int | None,
        *,
        fqdns: Collection[str] = (),
        country: str | None = None,
        now: datetime,
    ) -> Decision:
        """The first rule matching the flow, else the default.

        `groups` are the certificate's groups; `fqdns` the names `dst` was resolved from for
        this client (None `dst`: only the names are known); `country` its GeoIP country.
        """
        names = tuple(n.lower().removesuffix(".") for n in fqdns) if fqdns else ()
        if country is not None:
            country = country.upper()
        if self._has_expiry and now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        index = self.index
        key = (client, groups if isinstance(groups, tuple | frozenset) else tuple(groups))
        principal = self._principal_cache.get(key)
        if principal is None:
            principal = self._principal_mask(client, groups)
        candidates = principal & index.ports(proto, dport) & index.destination(dst, names, country)
        rules, size = self.rules, len(self.rules)
        while candidates:
            top = candidates.bit_length()
            rule = rules[size - top]  # the highest bit is the first rule
            if rule.matches_flow(proto, dst, dport, names, country, now):
                return rule.decision
            candidates ^= 1 << (top - 1)
        return self.default

    def explain(
        self,
        client: str,
        groups: Collection[str],
        proto: int,
        dst: IPAddress | None,
        dport: int | None,
        *,
        fqdns: Collection[str] = (),
        country: str | None = None,
        now: datetime,
    ) -> Explanation:
        """The decision, checked rule by rule without the index, with the reasons."""
        flow = _Flow(
            proto,
            dst,
            dport,
            tuple(n.lower().removesuffix(".") for n in fqdns),
            country.upper() if country is not None else None,
            now if now.tzinfo is not None else now.replace(tzinfo=UTC),
        )
        tokens = self.principals(client, groups)
        steps: list[RuleTrace] = []
        for rule in self.rules:
            step = rule.trace(tokens, flow)
            steps.append(step)
            if step.matched:
                return Explanation(rule.decision, tokens, tuple(steps))
        return Explanation(self.default, tokens, tuple(steps))

    def __repr__(self) -> str:
        rules, default = len(self.rules), self.default.verdict
        return f"<CompiledPolicy {self.version} rules={rules} default={default}>"
