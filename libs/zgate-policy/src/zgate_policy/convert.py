"""Convert the Go original's per-client ACL plan into our policy format.

Go: ``default_action`` and ``clients: {<CN>: {rules: [{action, destination}]}}``, first match per
client. Ours: one rule per entry, id ``go-<client>-<n>``, ``from: [<client>]``, in file order.
"""

from __future__ import annotations

import json
from ipaddress import ip_network
from typing import Annotated, Final

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from .compiler import compile_policy
from .errors import PolicyInvalid
from .loader import load_policy_text, parse_yaml, validation_problems
from .model import Verdict
from .names import validate_fqdn, validate_token

__all__ = ["convert_go_policy"]

_MAX_ID: Final = 64


def _destination(value: str) -> str:
    """A Go destination (IP, CIDR, host name, any) as one of our `to` entries."""
    text = value.strip()
    if text.lower() in ("*", "any"):
        return "*"
    try:
        return str(ip_network(text, strict=False))  # Go's ParseCIDR accepts host bits
    except ValueError:
        pass
    try:
        name = validate_fqdn(text)
    except ValueError:
        raise ValueError(
            f"invalid destination {value!r}: expected an IP, a CIDR or a name"
        ) from None
    if "." not in name:
        raise ValueError(f"invalid destination {value!r}: expected an IP, a CIDR or a name")
    return name


class _GoModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _GoRule(_GoModel):
    action: Verdict
    destination: Annotated[str, AfterValidator(_destination)]


class _GoClient(_GoModel):
    rules: tuple[_GoRule, ...] = ()


class _GoPolicy(_GoModel):
    default_action: Verdict = "deny"
    clients: dict[
        Annotated[str, AfterValidator(lambda v: validate_token(v, "client id"))], _GoClient
    ] = {}


def _rule_id(client: str, n: int, used: set[str]) -> str:
    suffix = f"-{n}"
    rule_id = f"go-{client}"[: _MAX_ID - len(suffix)] + suffix
    extra = 1
    while rule_id in used:  # only after truncating long client names
        tail = f"-{n}.{extra}"
        rule_id = f"go-{client}"[: _MAX_ID - len(tail)] + tail
        extra += 1
    used.add(rule_id)
    return rule_id


def convert_go_policy(text: str, name: str = "<go-policy>") -> str:
    """The Go policy `text` as YAML in our format; PolicyInvalid (with lines) if it is wrong.

    The result is checked: it loads and compiles.
    """
    data, source = parse_yaml(text, name)
    if not isinstance(data, dict):
        raise PolicyInvalid([source.problem((), "the policy must be a mapping")])
    try:
        go = _GoPolicy.model_validate(data)
    except ValidationError as exc:
        raise PolicyInvalid(validation_problems(exc, source)) from None
    lines = [
        f"# Converted from the Go policy {name} by `zgate policy convert-go`.",
        "# One rule per Go entry, in order; each client's first matching entry still wins.",
        f"default: {go.default_action}",
        "rules:" if go.clients else "rules: []",
    ]
    used: set[str] = set()
    for client, entry in go.clients.items():
        for n, rule in enumerate(entry.rules, start=1):
            lines += [
                f"  - id: {json.dumps(_rule_id(client, n, used))}",
                f"    action: {rule.action}",
                f"    from: [{json.dumps(client)}]",
                f"    to: [{json.dumps(rule.destination)}]",
            ]
    out = "\n".join(lines) + "\n"
    compile_policy(load_policy_text(out, f"{name} (converted)"), geoip_available=False)
    return out
