"""What the relay holds from the control plane (sans-IO): the policy, the revocations and
the connectors' prefixes as of one change-log position, and its JSON form for the cache."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ControlState", "PublishedPolicy", "StateFormatError"]


class StateFormatError(ValueError):
    """A control-plane document (a response or the cache) does not have the expected shape."""


@dataclass(frozen=True, slots=True)
class PublishedPolicy:
    """A policy version as the control plane published it."""

    version_id: int
    digest: str
    yaml: str

    @property
    def name(self) -> str:
        """How logs and audit records name it: the version number the console shows."""
        return f"control v{self.version_id}"

    def as_dict(self) -> dict[str, object]:
        """The JSON form (the snapshot's and the cache's)."""
        return {"version_id": self.version_id, "digest": self.digest, "yaml": self.yaml}

    @classmethod
    def from_dict(cls, value: object) -> PublishedPolicy:
        """From the JSON form; raises StateFormatError."""
        data = _mapping(value, "policy")
        return cls(
            version_id=_int(data.get("version_id"), "policy.version_id"),
            digest=_str(data.get("digest", ""), "policy.digest"),
            yaml=_str(data.get("yaml"), "policy.yaml"),
        )


@dataclass(frozen=True, slots=True)
class ControlState:
    """Everything applied from the control plane, through change ``seq``.

    ``blocked`` holds serials (lower-case hex) of disabled clients; ``connectors`` maps a
    connector id to its prefixes as CIDR text, in the control plane's order.
    """

    seq: int = 0
    policy: PublishedPolicy | None = None
    crl_pem: str = ""
    blocked: tuple[str, ...] = ()
    connectors: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    ca_pem: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (the cache's, without its time stamp)."""
        return {
            "seq": self.seq,
            "policy": self.policy.as_dict() if self.policy is not None else None,
            "crl_pem": self.crl_pem,
            "blocked": list(self.blocked),
            "connectors": {ident: list(nets) for ident, nets in self.connectors.items()},
            "ca_pem": self.ca_pem,
        }

    @classmethod
    def from_dict(cls, value: object) -> ControlState:
        """From a snapshot's or the cache's JSON form; raises StateFormatError."""
        data = _mapping(value, "snapshot")
        policy = data.get("policy")
        return cls(
            seq=_int(data.get("seq"), "seq"),
            policy=PublishedPolicy.from_dict(policy) if policy is not None else None,
            crl_pem=_str(data.get("crl_pem") or "", "crl_pem"),
            blocked=serials(data.get("blocked", [])),
            connectors=connector_map(data.get("connectors", {})),
            ca_pem=_str(data.get("ca_pem") or "", "ca_pem"),
        )


def serials(value: object) -> tuple[str, ...]:
    """A list of serials as lower-case hex text, checked; raises StateFormatError."""
    if not isinstance(value, list):
        raise StateFormatError(f"blocked: expected a list of serials, got {value!r}")
    out = []
    for item in value:
        text = _str(item, "blocked[]").strip().lower()
        try:
            int(text, 16)
        except ValueError:
            raise StateFormatError(f"blocked: {item!r} is not a hex serial") from None
        out.append(text)
    return tuple(out)


def connector_map(value: object) -> dict[str, tuple[str, ...]]:
    """``{id: [cidr, ...]}``, checked for shape (the prefixes are parsed when applied)."""
    data = _mapping(value, "connectors")
    out: dict[str, tuple[str, ...]] = {}
    for ident, prefixes in data.items():
        if not isinstance(prefixes, list):
            raise StateFormatError(f"connectors.{ident}: expected a list of prefixes")
        out[str(ident)] = tuple(_str(p, f"connectors.{ident}[]") for p in prefixes)
    return out


def _mapping(value: object, what: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise StateFormatError(f"{what}: expected an object, got {type(value).__name__}")
    return value


def _int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise StateFormatError(f"{what}: expected a non-negative integer, got {value!r}")
    return value


def _str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise StateFormatError(f"{what}: expected text, got {value!r}")
    return value
