"""Validation of the names an operator types: identities, groups, trust domains, relay names."""

from __future__ import annotations

import ipaddress
import re
from typing import Final, Literal, TypeGuard

from ._errors import PkiError

__all__ = [
    "KINDS",
    "Kind",
    "is_kind",
    "validate_dns_name",
    "validate_group",
    "validate_ident",
    "validate_ip",
    "validate_kind",
    "validate_trust_domain",
]

Kind = Literal["client", "connector"]
KINDS: Final[tuple[Kind, ...]] = ("client", "connector")

# Identities become file names, URI path segments and log fields: keep them boring.
_IDENT_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
_LABEL_RE: Final = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def is_kind(value: str) -> TypeGuard[Kind]:
    """True if `value` is a certificate kind ("client" or "connector")."""
    return value in KINDS


def validate_kind(value: str) -> Kind:
    """Return `value` as a `Kind`, or raise PkiError."""
    if not is_kind(value):
        raise PkiError(f"invalid kind {value!r}: expected one of {', '.join(KINDS)}")
    return value


def _validate_token(what: str, value: str) -> str:
    if _IDENT_RE.fullmatch(value) is None or value in {".", ".."}:
        raise PkiError(f"invalid {what} {value!r}: use 1 to 64 letters, digits, '.', '_' or '-'")
    return value


def validate_ident(value: str) -> str:
    """Return `value` if it is a valid client/connector id, else raise PkiError."""
    return _validate_token("id", value)


def validate_group(value: str) -> str:
    """Return `value` if it is a valid group name, else raise PkiError."""
    return _validate_token("group", value)


def validate_dns_name(value: str, *, what: str = "DNS name") -> str:
    """Return `value` lower-cased if it is an ASCII DNS name, else raise PkiError."""
    name = value.lower().rstrip(".")
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL_RE.fullmatch(label) for label in labels):
        raise PkiError(f"invalid {what} {value!r}: expected ASCII labels like 'relay.example.com'")
    return name


def validate_trust_domain(value: str) -> str:
    """Return `value` if it is a valid SPIFFE trust domain name, else raise PkiError."""
    return validate_dns_name(value, what="trust domain")


def validate_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Parse an IPv4/IPv6 address, raising PkiError with the bad value."""
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise PkiError(f"invalid IP address {value!r}") from None
