"""Warnings about rules that can never match.

A rule is shadowed when one earlier rule without expiry covers it: every principal it names is
always among the earlier rule's, and each of its targets lies within one of the earlier rule's
targets (destination and ports). The compiled index narrows the earlier rules to those matching
one representative flow per target, so linting stays fast on large policies.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .compiler import compile_policy
from .errors import FieldPath
from .matcher import CompiledPolicy, CompiledRule, Target
from .model import Policy
from .names import fqdn_matches
from .ports import covers

__all__ = ["LintWarning", "lint"]


@dataclass(frozen=True, slots=True)
class LintWarning:
    """Something in the policy that is legal but almost certainly not what was meant."""

    rule_id: str
    message: str
    path: FieldPath

    def __str__(self) -> str:
        return f"rule {self.rule_id}: {self.message}"


def _closure(compiled: CompiledPolicy, token: str) -> frozenset[str]:
    """Every token a principal always carries: a client's groups, a group's enclosing groups."""
    if token.startswith("group:"):
        return frozenset("group:" + g for g in compiled.groups_of("", (token[6:],)))
    return compiled.principals(token, ())


def _target_covers(a: Target, b: Target) -> bool:
    if not covers(a.ports, b.ports):
        return False
    if a.kind == "any":
        return True
    if a.kind != b.kind:
        return False
    if a.network is not None and b.network is not None:
        return a.network.version == b.network.version and b.network.subnet_of(a.network)  # type: ignore[arg-type]
    if a.kind == "fqdn":
        if not b.fqdn.startswith("*."):
            return fqdn_matches(a.fqdn, b.fqdn)
        return a.fqdn.startswith("*.") and (a.fqdn == b.fqdn or b.fqdn.endswith(a.fqdn[1:]))
    return b.countries <= a.countries


def _rule_covers(compiled: CompiledPolicy, a: CompiledRule, b: CompiledRule) -> bool:
    if a.expires is not None:
        return False
    if a.principals is not None:
        if b.principals is None:
            return False
        if not all(_closure(compiled, t) & a.principals for t in b.principals):
            return False
    return all(any(_target_covers(ta, tb) for ta in a.targets) for tb in b.targets)


def _candidates(compiled: CompiledPolicy, rule: CompiledRule) -> int:
    """Earlier rules that could cover `rule` (a superset, from the index)."""
    index = compiled.index
    if rule.principals is None:
        mask = index.principal(())
    else:
        mask = -1
        for token in rule.principals:
            mask &= index.principal(_closure(compiled, token))
    mask &= index.before(rule.index)
    for t in rule.targets:
        if t.kind == "any":
            mask &= index.destination(None, (), None)
        elif t.kind == "cidr" and t.network is not None:
            mask &= index.destination(t.network.network_address, (), None)
        elif t.kind == "fqdn":
            mask &= index.destination(None, (t.fqdn,), None)
        else:
            mask &= index.destination(None, (), min(t.countries))
        if t.ports is None:
            mask &= index.ports(-1, None)
        elif t.ports:
            mask &= index.ports(t.ports[0].proto, t.ports[0].low)
    return mask


def lint(policy: Policy, *, now: datetime | None = None) -> list[LintWarning]:
    """Rules that can never match: shadowed, with no usable destination, or (at `now`) expired."""
    compiled = compile_policy(policy, geoip_available=True)
    warnings: list[LintWarning] = []
    for rule in compiled.rules:
        path: FieldPath = ("rules", rule.index)

        def warn(message: str, rule: CompiledRule = rule, path: FieldPath = path) -> None:
            warnings.append(LintWarning(rule.id, message, path))

        if now is not None and rule.expires is not None and now >= rule.expires:
            warn(f"expired at {rule.expires.isoformat()}: it never matches any more")
            continue
        if not any(t.ports != () for t in rule.targets):
            warn(
                "can never match: no destination is left once its ports are intersected"
                " (or its resource is empty)"
            )
            continue
        candidates = _candidates(compiled, rule)
        while candidates:
            earlier = compiled.rules[compiled.index.first(candidates)]
            if _rule_covers(compiled, earlier, rule):
                same = earlier.decision.verdict == rule.decision.verdict
                warn(
                    f'can never match: rule "{earlier.id}" (rules[{earlier.index}]) matches all'
                    f" of its flows first{' (same action: redundant)' if same else ''}"
                )
                break
            candidates ^= compiled.index.bit(earlier.index)
    return warnings
