"""Who a certificate names: ``spiffe://<trust-domain>/<kind>/<id>``, falling back to the CN."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.x509.oid import NameOID

from ._errors import PkiError
from ._names import KINDS
from ._x509 import LAZY_PARSE_ERRORS

__all__ = ["Identity", "identity_from_certificate"]

_SPIFFE_PREFIX: Final = "spiffe://"


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated peer: ``kind`` is "client", "connector" or "unknown"."""

    kind: str
    ident: str
    trust_domain: str | None
    groups: tuple[str, ...]
    serial: int

    def __str__(self) -> str:
        return f"{self.kind}/{self.ident}"


def _parse_spiffe(uri: str) -> tuple[str, str, str] | None:
    """Split ``spiffe://td/kind/id`` into its parts; None if `uri` has another shape."""
    if not uri.lower().startswith(_SPIFFE_PREFIX):
        return None
    trust_domain, _, path = uri[len(_SPIFFE_PREFIX) :].partition("/")
    segments = path.split("/")
    if not trust_domain or len(segments) != 2 or not all(segments):
        return None
    kind, ident = segments
    return trust_domain.lower(), kind if kind in KINDS else "unknown", ident


def _attributes(name: x509.Name, oid: x509.ObjectIdentifier) -> list[str]:
    values = (a.value for a in name.get_attributes_for_oid(oid))
    return [v if isinstance(v, str) else v.decode("utf-8", "replace") for v in values]


def identity_from_certificate(cert: x509.Certificate) -> Identity:
    """The identity a certificate names (URI SAN first, else CN as a client); PkiError if none."""
    try:
        subject = cert.subject  # parsed lazily: a corrupt name shows up here
    except LAZY_PARSE_ERRORS as exc:
        raise PkiError(f"certificate subject cannot be parsed ({exc})") from None
    groups = tuple(dict.fromkeys(_attributes(subject, NameOID.ORGANIZATIONAL_UNIT_NAME)))
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    except LAZY_PARSE_ERRORS as exc:  # parsed lazily: a corrupt extension shows up here
        raise PkiError(f"certificate extensions cannot be parsed ({exc})") from None
    for uri in uris:
        parsed = _parse_spiffe(uri)
        if parsed is not None:
            trust_domain, kind, ident = parsed
            return Identity(kind, ident, trust_domain, groups, cert.serial_number)
    common_names = _attributes(subject, NameOID.COMMON_NAME)
    if not common_names or not common_names[0]:
        raise PkiError("certificate names no identity (no SPIFFE URI SAN and no CN)")
    return Identity("client", common_names[0], None, groups, cert.serial_number)
