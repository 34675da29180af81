"""Verifying a peer's certificate chain against the CA and its CRL (from a file or pushed)."""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509 import verification

from ._errors import CertificateRefused, PkiError
from ._files import read_file
from ._identity import Identity, identity_from_certificate
from ._names import validate_ident
from ._x509 import LAZY_PARSE_ERRORS, ca_trust_domain, load_certificate, load_crl

__all__ = ["ChainVerifier"]

_IssuerKey = (
    ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)
# (mtime, size, inode) per file: a cheap way to notice an edited or replaced file.
_Stamp = tuple[tuple[int, int, int] | None, ...]


@dataclass(frozen=True, slots=True)
class _Trust:
    """Everything loaded from disk, swapped as one piece on reload."""

    ca: x509.Certificate
    store: verification.Store
    trust_domain: str | None
    revoked: frozenset[int]


@dataclass(frozen=True, slots=True)
class _Pushed:
    """Revocations a control plane pushed: its CRL's serials and the serials it disabled."""

    revoked: frozenset[int]
    blocked: frozenset[int]


def _stat(path: Path | None) -> tuple[int, int, int] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _issuer_key(ca: x509.Certificate, where: Path) -> _IssuerKey:
    key = ca.public_key()
    if not isinstance(key, _IssuerKey):
        raise PkiError(f"{where}: the CA key type cannot sign")
    return key


def _load_trust(ca_path: Path, crl_path: Path | None) -> _Trust:
    ca = load_certificate(read_file(ca_path, "CA certificate"), str(ca_path))
    try:
        store = verification.Store([ca])
    except ValueError as exc:
        raise PkiError(f"{ca_path}: unusable as a trust anchor ({exc})") from None
    revoked: frozenset[int] = frozenset()
    if crl_path is not None:
        crl = load_crl(read_file(crl_path, "CRL"), str(crl_path))
        # A CRL nobody can vouch for must not be able to un-revoke anything: refuse it.
        serials = _signed_crl_serials(crl, ca, ca_path, str(crl_path))
        if serials is None:
            raise PkiError(f"{crl_path} is not signed by the CA in {ca_path}")
        revoked = serials
    return _Trust(ca, store, ca_trust_domain(ca), revoked)


def _signed_crl_serials(
    crl: x509.CertificateRevocationList, ca: x509.Certificate, ca_path: Path, what: str
) -> frozenset[int] | None:
    """The serials ``crl`` revokes, or None when ``ca`` did not sign it. cryptography parses
    a CRL's issuer and entries only when read, so a corrupt one raises ValueError here: that
    is a PkiError naming ``what``."""
    try:
        if crl.issuer != ca.subject or not crl.is_signature_valid(_issuer_key(ca, ca_path)):
            return None
        return frozenset(entry.serial_number for entry in crl)
    except LAZY_PARSE_ERRORS as exc:
        raise PkiError(f"{what} cannot be parsed ({exc})") from None


def _pushed_crl_serials(crl_pem: bytes, trust: _Trust, ca_path: Path) -> frozenset[int]:
    crl = load_crl(crl_pem, "the pushed CRL")
    # Same rule as for the file: a CRL the CA did not sign must not un-revoke anything.
    serials = _signed_crl_serials(
        crl, trust.ca, ca_path, "the pushed CRL (revocations left unchanged)"
    )
    if serials is None:
        raise PkiError(
            f"the pushed CRL is not signed by the trusted CA "
            f"({trust.ca.subject.rfc4514_string()!r} in {ca_path}); revocations left unchanged"
        )
    return serials


def _blocked_serials(blocked: Collection[int]) -> frozenset[int]:
    for serial in blocked:
        if isinstance(serial, bool) or not isinstance(serial, int) or serial < 1:
            raise PkiError(
                f"a blocked serial must be a positive integer, got {serial!r}; "
                "revocations left unchanged"
            )
    return frozenset(blocked)


def _directly_issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _name_text(cert: x509.Certificate, which: str) -> str:
    """The certificate's subject or issuer as RFC 4514 text. cryptography parses names only
    when asked, so a peer's corrupt name raises one of LAZY_PARSE_ERRORS here: describe it."""
    try:
        return (cert.subject if which == "subject" else cert.issuer).rfc4514_string()
    except LAZY_PARSE_ERRORS:
        return f"<unparseable {which}>"


def _within_validity(cert: x509.Certificate, when: datetime) -> bool:
    return cert.not_valid_before_utc <= when <= cert.not_valid_after_utc


class ChainVerifier:
    """Verifies client certificates against a CA file and a CRL (a file or one pushed in memory).

    Path building and the X.509 profile checks are cryptography's ``x509.verification`` client
    verifier; revocation is checked against the CRL, whose signature must verify with the CA.
    `reload_if_changed` re-reads both files when they change; a broken new file raises PkiError
    and leaves the previous trust in force. A CRL past its ``next_update`` is still applied:
    refusing every client because nobody re-signed the CRL would turn a stale file into an
    outage (``zgate pki revoke`` re-signs it; it is announced fresh for a year).

    A relay that follows a control plane calls `set_revocations` with the CRL it was sent;
    from then on the CRL file is no longer read (the CA file still is).
    """

    def __init__(self, ca_path: Path, crl_path: Path | None = None) -> None:
        self._ca_path = ca_path
        self._crl_path = crl_path
        self._stamp: _Stamp = (_stat(ca_path), _stat(crl_path))
        self._trust = _load_trust(ca_path, crl_path)
        self._pushed: _Pushed | None = None

    @property
    def ca_certificate(self) -> x509.Certificate:
        """The CA certificate currently trusted."""
        return self._trust.ca

    @property
    def trust_domain(self) -> str | None:
        """The CA's SPIFFE trust domain (from its URI SAN), if it names one."""
        return self._trust.trust_domain

    def revoked_serials(self) -> frozenset[int]:
        """Serials refused as revoked (to end live sessions of revoked peers).

        Those in the current CRL, plus the blocked ones once `set_revocations` was called.
        """
        pushed = self._pushed
        if pushed is None:
            return self._trust.revoked
        return pushed.revoked | pushed.blocked

    def set_revocations(self, crl_pem: bytes | None, blocked: Collection[int] = ()) -> None:
        """Use the CRL `crl_pem` (None: an empty one) and refuse the `blocked` serials too.

        For a relay that follows a control plane: the CRL comes over HTTP instead of from the
        CRL file, which is no longer read from now on. `blocked` lists serials the control
        plane disabled without revoking them; they are refused as "revoked" as well. The CRL
        must be signed by the trusted CA, else PkiError and the previous revocations stay.
        A later CA file reload keeps these revocations until the next call.
        """
        trust = self._trust
        revoked = (
            frozenset() if crl_pem is None else _pushed_crl_serials(crl_pem, trust, self._ca_path)
        )
        self._pushed = _Pushed(revoked, _blocked_serials(blocked))
        # Forget the CRL file's stamp: reload_if_changed now watches the CA file alone.
        self._stamp = (self._stamp[0], None)

    def reload_if_changed(self) -> bool:
        """Re-read the CA and CRL if either file changed since the last load; True if reloaded.

        Cheap enough to call on every handshake (two ``stat`` calls). A new file that does not
        load raises PkiError once and the previous trust stays in force. After
        `set_revocations` only the CA file is watched and the pushed revocations stay.
        """
        crl_path = None if self._pushed is not None else self._crl_path
        stamp = (_stat(self._ca_path), _stat(crl_path))
        if stamp == self._stamp:
            return False
        self._stamp = stamp  # remembered even on failure: report a bad file once, not per call
        self._trust = _load_trust(self._ca_path, crl_path)
        return True

    def verify(
        self,
        leaf: x509.Certificate | None,
        intermediates: Sequence[x509.Certificate],
        now: datetime,
    ) -> Identity:
        """Verify `leaf` (with `intermediates`) at wall-clock time `now` and return its identity.

        Raises CertificateRefused whose ``reason`` says why.
        """
        if leaf is None:
            raise CertificateRefused("no_certificate", "the peer sent no certificate")
        trust, pushed = self._trust, self._pushed
        when = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
        verifier = (
            verification.PolicyBuilder().store(trust.store).time(when).build_client_verifier()
        )
        # cryptography parses the leaf's names and extensions while verifying: a corrupt one
        # raises one of LAZY_PARSE_ERRORS instead of a VerificationError.
        try:
            verified = verifier.verify(leaf, list(intermediates))
        except (verification.VerificationError, *LAZY_PARSE_ERRORS) as exc:
            raise self._classify(trust, [leaf, *intermediates], when, str(exc)) from None
        revoked = trust.revoked if pushed is None else pushed.revoked
        blocked = frozenset[int]() if pushed is None else pushed.blocked
        for cert in verified.chain:
            if cert == trust.ca:
                continue
            if cert.serial_number in revoked:
                raise CertificateRefused(
                    "revoked", f"certificate serial {cert.serial_number:x} is revoked"
                )
            if cert.serial_number in blocked:
                raise CertificateRefused(
                    "revoked",
                    f"certificate serial {cert.serial_number:x} is disabled by the control plane",
                )
        return self._identity(trust, leaf)

    @staticmethod
    def _classify(
        trust: _Trust, chain: list[x509.Certificate], when: datetime, detail: str
    ) -> CertificateRefused:
        """Name the failure after the fact: cryptography reports only a message."""
        if not any(_directly_issued_by(cert, trust.ca) for cert in chain):
            issuer = _name_text(chain[0], "issuer")
            return CertificateRefused("unknown_ca", f"issuer {issuer!r} is not the trusted CA")
        for cert in [*chain, trust.ca]:
            if not _within_validity(cert, when):
                return CertificateRefused(
                    "expired",
                    f"{_name_text(cert, 'subject')!r} is valid from "
                    f"{cert.not_valid_before_utc.isoformat()} to "
                    f"{cert.not_valid_after_utc.isoformat()}",
                )
        return CertificateRefused("bad_certificate", detail)

    @staticmethod
    def _identity(trust: _Trust, leaf: x509.Certificate) -> Identity:
        try:
            identity = identity_from_certificate(leaf)
            validate_ident(identity.ident)
        except PkiError as exc:
            raise CertificateRefused("bad_certificate", str(exc)) from None
        if trust.trust_domain is not None and identity.trust_domain not in (
            None,
            trust.trust_domain,
        ):
            raise CertificateRefused(
                "bad_certificate",
                f"trust domain {identity.trust_domain!r} is not {trust.trust_domain!r}",
            )
        return identity
