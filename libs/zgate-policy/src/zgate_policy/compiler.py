"""Compile a validated Policy into a CompiledPolicy: resolve references, intersect ports, index."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict

from .errors import FieldPath, PolicyInvalid
from .matcher import CompiledPolicy, CompiledRule, Decision, Target
from .model import ANY, Destination, Policy, Rule, find_problems, raise_problems, resolve_reference
from .ports import PortSet, intersect, port_set

__all__ = [
    "GEOIP_REQUIRED",
    "compile_policy",
    "entry_targets",
    "policy_version",
    "rule_targets",
]

GEOIP_REQUIRED = "GeoIP rules need a GeoIP database (--geoip FILE)"


def policy_version(policy: Policy) -> str:
    """sha256 of the canonical form (comments, layout and key order do not count), 12 hex."""
    canonical = json.dumps(
        policy.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _target(entry: Destination, ports: PortSet, resource: str | None) -> Target:
    """The Target for `entry`, labelled as the operator wrote it (under its resource name)."""
    prefix = f"{resource}: " if resource is not None else ""
    if entry.cidr is not None:
        return Target("cidr", ports, network=entry.cidr, label=prefix + str(entry.cidr))
    if entry.country is not None:
        countries = frozenset(entry.country)
        label = prefix + "country:" + ",".join(entry.country)
        return Target("country", ports, countries=countries, label=label)
    name = entry.fqdn if entry.fqdn is not None else str(entry.resource)
    if name == ANY:
        return Target("any", ports, label=prefix + ANY)
    fqdn = name.lower().removesuffix(".")  # a bare name in `to` was validated as an FQDN
    return Target("fqdn", ports, fqdn=fqdn, label=prefix + fqdn)


def entry_targets(policy: Policy, entry: Destination, rule_ports: PortSet) -> list[Target]:
    """One `to` entry's targets, resources expanded, each with rule ∩ entry ∩ resource ports."""
    ports = intersect(rule_ports, port_set(entry.ports))
    name = entry.resource
    if name is not None and resolve_reference(policy, name, in_resources=False) == "resource":
        return [
            _target(sub, intersect(ports, port_set(sub.ports)), name)
            for sub in policy.resources[name]
        ]
    return [_target(entry, ports, None)]


def rule_targets(policy: Policy, rule: Rule) -> tuple[Target, ...]:
    """All the rule's targets, in the order written."""
    rule_ports = port_set(rule.ports)
    return tuple(t for entry in rule.to for t in entry_targets(policy, entry, rule_ports))


def _principals(rule: Rule) -> frozenset[str] | None:
    return None if ANY in rule.from_ else frozenset(rule.from_)


def _parents(policy: Policy) -> dict[str, tuple[str, ...]]:
    parents: defaultdict[str, list[str]] = defaultdict(list)
    for group, members in policy.groups.items():
        for member in members:
            parents[member].append(group)
    return {member: tuple(groups) for member, groups in parents.items()}


def _geoip_path(policy: Policy) -> FieldPath:
    """Where the first country destination is used, for the "needs a database" message."""
    for i, rule in enumerate(policy.rules):
        for k, entry in enumerate(rule.to):
            if any(t.kind == "country" for t in entry_targets(policy, entry, None)):
                return ("rules", i, "to", k)
    return ("rules",)


def compile_policy(policy: Policy, *, geoip_available: bool) -> CompiledPolicy:
    """Compile `policy`; PolicyInvalid if it is inconsistent or needs GeoIP that is missing."""
    raise_problems(policy, find_problems(policy))
    rules = tuple(
        CompiledRule(
            index=i,
            id=rule.id,
            decision=Decision(rule.action, rule.id),
            principals=_principals(rule),
            targets=rule_targets(policy, rule),
            expires=rule.expires,
        )
        for i, rule in enumerate(policy.rules)
    )
    uses_geoip = any(t.kind == "country" for rule in rules for t in rule.targets)
    if uses_geoip and not geoip_available:
        raise PolicyInvalid([policy.source.problem(_geoip_path(policy), GEOIP_REQUIRED)])
    return CompiledPolicy(
        version=policy_version(policy),
        default=policy.default,
        rules=rules,
        group_parents=_parents(policy),
    )
