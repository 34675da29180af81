"""The policy document as pydantic models, and the cross-reference checks pydantic cannot do.

Shapes and values (ports, CIDRs, names) are checked by the models; references between parts of
the document (groups, resources, rule ids, group cycles) by `find_problems`, which returns field
paths so the loader can point at lines.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from datetime import UTC, date, datetime
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    model_validator,
)

from .errors import FieldPath, PolicyInvalid, SourceMap
from .names import (
    IPNetwork,
    TestTarget,
    looks_like_ip,
    parse_network,
    validate_country,
    validate_fqdn,
    validate_token,
)
from .ports import PortSpec

__all__ = [
    "ANY",
    "Destination",
    "Policy",
    "PolicyTest",
    "Rule",
    "Verdict",
    "find_problems",
    "group_member",
    "raise_problems",
    "resolve_reference",
]

Verdict = Literal["allow", "deny"]
#: The `from`/`to` wildcard.
ANY: Final = "*"
_GROUP: Final = "group:"


def _to_utc(value: object) -> object:
    """YAML gives dates and naive datetimes too: both mean UTC."""
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return value


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _principal(value: str) -> str:
    """``*``, ``group:<name>`` or a client id."""
    if value == ANY:
        return value
    if value.startswith(_GROUP):
        validate_token(value[len(_GROUP) :], "group name")
        return value
    return validate_token(value, "client id")


def _rule_id(value: str) -> str:
    validate_token(value, "rule id")
    if value == "default":
        raise ValueError("the rule id 'default' is reserved for the default verdict")
    return value


def _one_or_many(value: object) -> object:
    return [value] if isinstance(value, str) else value


Token = Annotated[str, AfterValidator(validate_token)]
ClientId = Annotated[str, AfterValidator(lambda v: validate_token(v, "client id"))]
Principal = Annotated[str, AfterValidator(_principal)]
Network = Annotated[IPNetwork, PlainValidator(parse_network), PlainSerializer(str)]
Fqdn = Annotated[str, AfterValidator(validate_fqdn)]
Country = Annotated[str, AfterValidator(validate_country)]
Port = Annotated[PortSpec, PlainValidator(PortSpec.parse), PlainSerializer(str)]
Ports = tuple[Port, ...]
Target = Annotated[TestTarget, PlainValidator(TestTarget.parse), PlainSerializer(str)]
Timestamp = Annotated[datetime, BeforeValidator(_to_utc), AfterValidator(_aware)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Destination(_Model):
    """One destination: exactly one of a CIDR, an FQDN pattern, countries or a reference.

    Written as a string (``10.0.0.0/8``, ``*.corp.example``, ``country:DE``, a resource name or
    ``*``) or a mapping with ``ports`` limiting it to protocols/ports.
    """

    cidr: Network | None = None
    fqdn: Fqdn | None = None
    country: Annotated[tuple[Country, ...], BeforeValidator(_one_or_many)] | None = None
    #: A resource name, a bare FQDN or "*": which one is decided against the policy's resources.
    resource: str | None = None
    ports: Ports | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        if not isinstance(data, str):
            return data
        text = data.strip()
        if text.lower().startswith("country:"):
            return {"country": [c for c in text[len("country:") :].split(",")]}
        if text != ANY and looks_like_ip(text):
            return {"cidr": text}
        return {"resource": text}

    @model_validator(mode="after")
    def _exactly_one(self) -> Destination:
        kinds = [self.cidr, self.fqdn, self.country, self.resource]
        if sum(k is not None for k in kinds) != 1:
            raise ValueError("give exactly one of cidr, fqdn, country (or a resource name)")
        if self.country is not None and not self.country:
            raise ValueError("country needs at least one code")
        return self

    def __str__(self) -> str:
        if self.cidr is not None:
            text = str(self.cidr)
        elif self.fqdn is not None:
            text = self.fqdn
        elif self.country is not None:
            text = "country:" + ",".join(self.country)
        else:
            text = str(self.resource)
        if self.ports is not None:
            text += " (" + ", ".join(str(p) for p in self.ports) + ")"
        return text


class Rule(_Model):
    """An ordered rule: `action` for flows `from` these principals `to` these destinations."""

    id: Annotated[str, AfterValidator(_rule_id)]
    action: Verdict
    from_: tuple[Principal, ...] = Field(alias="from", min_length=1)
    to: tuple[Destination, ...] = Field(min_length=1)
    ports: Ports | None = None
    expires: Timestamp | None = None
    description: str | None = None


class PolicyTest(_Model):
    """An inline test: a flow from a client to a target and the verdict it must get."""

    __test__ = False  # not a pytest test class

    from_: ClientId = Field(alias="from")
    #: The certificate's groups (OUs) the client presents.
    groups: tuple[Token, ...] = ()
    to: Target
    expect: Verdict
    #: When set, the deciding rule id must be this too ("default" for the default verdict).
    rule: str | None = None
    #: Names the relay's DNS resolved the target IP from (FQDN rules apply to them).
    fqdn: Fqdn | None = None
    #: The destination's GeoIP country.
    country: Country | None = None
    #: The time the flow happens (default: the time of the load).
    at: Timestamp | None = None
    name: str | None = None


class Policy(_Model):
    """A whole policy document."""

    default: Verdict = "deny"
    groups: dict[Token, tuple[Annotated[str, AfterValidator(_principal)], ...]] = {}
    resources: dict[Token, tuple[Destination, ...]] = {}
    rules: tuple[Rule, ...] = ()
    tests: tuple[PolicyTest, ...] = ()
    _source: SourceMap = PrivateAttr(default_factory=SourceMap)

    @property
    def source(self) -> SourceMap:
        """Where the policy came from (file name and field positions), if it was loaded."""
        return self._source

    def with_source(self, source: SourceMap) -> Policy:
        """This policy, remembering `source` for the messages about it."""
        self._source = source
        return self


def group_member(member: str) -> str | None:
    """The group name of a ``group:<name>`` member, else None."""
    return member[len(_GROUP) :] if member.startswith(_GROUP) else None


def resolve_reference(
    policy: Policy, name: str, *, in_resources: bool
) -> Literal["any", "resource", "fqdn"] | None:
    """What a bare string destination means: ``*``, a resource name, an FQDN; None if unknown.

    Resource names win over FQDNs; an FQDN needs a dot so that a misspelt name is an error.
    """
    if name == ANY:
        return "any"
    if not in_resources and name in policy.resources:
        return "resource"
    if "." in name:
        try:
            validate_fqdn(name)
        except ValueError:
            return None
        return "fqdn"
    return None


def _unknown(what: str, name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f'unknown {what} "{name}"' + (f' (did you mean "{close[0]}"?)' if close else "")


def find_problems(policy: Policy) -> list[tuple[FieldPath, str]]:
    """Unknown groups/resources/rule ids, duplicate rule ids and group cycles, with their paths."""
    found: list[tuple[FieldPath, str]] = []
    for name, members in policy.groups.items():
        for k, member in enumerate(members):
            group = group_member(member)
            if group is not None and group not in policy.groups:
                found.append((("groups", name, k), _unknown("group", group, policy.groups)))
            if member == ANY:
                found.append((("groups", name, k), "a group cannot contain everyone ('*')"))
    found.extend(_cycles(policy))
    for name, entries in policy.resources.items():
        for k, entry in enumerate(entries):
            if (
                entry.resource is not None
                and resolve_reference(policy, entry.resource, in_resources=True) is None
            ):
                found.append(
                    (
                        ("resources", name, k),
                        f'"{entry.resource}" is not a CIDR, IP, FQDN or country'
                        " (resources cannot refer to other resources)",
                    )
                )
    first_use: dict[str, int] = {}
    for i, rule in enumerate(policy.rules):
        if rule.id in first_use:
            found.append(
                (
                    ("rules", i, "id"),
                    f'duplicate rule id "{rule.id}" (also rules[{first_use[rule.id]}])',
                )
            )
        first_use.setdefault(rule.id, i)
        for k, principal in enumerate(rule.from_):
            group = group_member(principal)
            if group is not None and group not in policy.groups:
                found.append((("rules", i, "from", k), _unknown("group", group, policy.groups)))
        for k, entry in enumerate(rule.to):
            if (
                entry.resource is not None
                and resolve_reference(policy, entry.resource, in_resources=False) is None
            ):
                found.append(
                    (("rules", i, "to", k), _unknown("resource", entry.resource, policy.resources))
                )
    for i, test in enumerate(policy.tests):
        if test.rule is not None and test.rule != "default" and test.rule not in first_use:
            found.append((("tests", i, "rule"), _unknown("rule id", test.rule, first_use)))
    return found


def _cycles(policy: Policy) -> list[tuple[FieldPath, str]]:
    """Group nesting cycles, each reported once at the member that closes it.

    Iterative depth-first search: nesting may be deep, and that must not exhaust the stack.
    """
    found: list[tuple[FieldPath, str]] = []
    on_path, done = 1, 2
    state: dict[str, int] = {}
    for root in policy.groups:
        if root in state:
            continue
        trail, state[root] = [root], on_path
        stack = [iter(enumerate(policy.groups[root]))]
        while stack:
            step = next(stack[-1], None)
            if step is None:
                stack.pop()
                state[trail.pop()] = done
                continue
            k, member = step
            child = group_member(member)
            if child is None or child not in policy.groups or state.get(child) == done:
                continue
            if state.get(child) == on_path:
                cycle = " -> ".join([*trail[trail.index(child) :], child])
                found.append((("groups", trail[-1], k), f"group cycle: {cycle}"))
                continue
            state[child] = on_path
            trail.append(child)
            stack.append(iter(enumerate(policy.groups[child])))
    return found


def raise_problems(policy: Policy, found: list[tuple[FieldPath, str]]) -> None:
    """Raise PolicyInvalid for `found` (if any), located in the policy's source."""
    if found:
        raise PolicyInvalid(policy.source.problem(path, message) for path, message in found)
