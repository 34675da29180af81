"""``index.json``: what the CA issued and revoked (serial, kind, id, groups, expiry)."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final

from ._errors import PkiError
from ._names import Kind, validate_group, validate_ident, validate_kind, validate_trust_domain

__all__ = ["IndexRecord", "PkiIndex", "dump_index", "parse_index"]

_FORMAT_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class IndexRecord:
    """One issued client/connector certificate."""

    kind: Kind
    ident: str
    serial: int
    groups: tuple[str, ...]
    not_after: datetime
    revoked_at: datetime | None = None
    reason: str | None = None

    @property
    def revoked(self) -> bool:
        """True once the certificate has been revoked."""
        return self.revoked_at is not None


@dataclass(frozen=True, slots=True)
class PkiIndex:
    """The whole index: trust domain, last CRL number and every issued certificate."""

    trust_domain: str
    crl_number: int = 0
    records: tuple[IndexRecord, ...] = ()

    def with_record(self, record: IndexRecord) -> PkiIndex:
        """A copy with `record` appended."""
        return replace(self, records=(*self.records, record))

    def with_revoked(self, serial: int, when: datetime, reason: str | None) -> PkiIndex:
        """A copy where the record of `serial` is marked revoked and the CRL number bumped."""
        records = tuple(
            replace(r, revoked_at=when, reason=reason) if r.serial == serial else r
            for r in self.records
        )
        return replace(self, records=records, crl_number=self.crl_number + 1)


def dump_index(index: PkiIndex) -> bytes:
    """Serialise `index` as pretty JSON (serials as hex strings: JSON tools lose big ints)."""
    doc = {
        "version": _FORMAT_VERSION,
        "trust_domain": index.trust_domain,
        "crl_number": index.crl_number,
        "certificates": [
            {
                "kind": r.kind,
                "id": r.ident,
                "serial": f"{r.serial:x}",
                "groups": list(r.groups),
                "not_after": r.not_after.isoformat(),
                "revoked": r.revoked,
                "revoked_at": r.revoked_at.isoformat() if r.revoked_at else None,
                "reason": r.reason,
            }
            for r in index.records
        ],
    }
    return (json.dumps(doc, indent=2) + "\n").encode()


def _field(obj: dict[str, Any], key: str, kind: type) -> Any:
    value = obj.get(key)
    # bool is a subclass of int, but a JSON true is never a valid number here.
    if isinstance(value, bool) or not isinstance(value, kind):
        raise PkiError(f"index: field {key!r} is missing or has the wrong type")
    return value


def _timestamp(value: str, key: str) -> datetime:
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise PkiError(f"index: field {key!r} is not an ISO 8601 time: {value!r}") from None
    if when.tzinfo is None:
        raise PkiError(f"index: field {key!r} has no time zone: {value!r}")
    return when


def _parse_record(obj: Any) -> IndexRecord:
    if not isinstance(obj, dict):
        raise PkiError("index: a certificate entry is not an object")
    serial_text = _field(obj, "serial", str)
    try:
        serial = int(serial_text, 16)
    except ValueError:
        raise PkiError(f"index: bad serial {serial_text!r}") from None
    groups = _field(obj, "groups", list)
    if not all(isinstance(g, str) for g in groups):
        raise PkiError("index: field 'groups' must be a list of strings")
    revoked_at = obj.get("revoked_at")
    if revoked_at is not None and not isinstance(revoked_at, str):
        raise PkiError("index: field 'revoked_at' has the wrong type")
    reason = obj.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise PkiError("index: field 'reason' has the wrong type")
    return IndexRecord(
        kind=validate_kind(_field(obj, "kind", str)),
        ident=validate_ident(_field(obj, "id", str)),
        serial=serial,
        groups=tuple(validate_group(g) for g in groups),
        not_after=_timestamp(_field(obj, "not_after", str), "not_after"),
        revoked_at=_timestamp(revoked_at, "revoked_at") if revoked_at else None,
        reason=reason,
    )


def parse_index(data: bytes) -> PkiIndex:
    """Parse ``index.json``; any malformed content raises PkiError."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise PkiError(f"index: not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise PkiError("index: top level is not an object")
    if doc.get("version") != _FORMAT_VERSION:
        raise PkiError(f"index: unsupported version {doc.get('version')!r}")
    crl_number = _field(doc, "crl_number", int)
    if crl_number < 0:
        raise PkiError("index: negative crl_number")
    return PkiIndex(
        trust_domain=validate_trust_domain(_field(doc, "trust_domain", str)),
        crl_number=crl_number,
        records=tuple(_parse_record(r) for r in _field(doc, "certificates", list)),
    )
